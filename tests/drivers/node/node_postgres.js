// node-postgres (pg) through a pgbay transaction pool. Run by tests/test_drivers.py.
// pg prepares a query given a `name` (kept for the connection's life: no cache to evict) and
// has no cancel of its own; COPY goes through pg-copy-streams.
'use strict';
const { Client, Pool } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');
const { pipeline } = require('stream/promises');
const { Readable, Writable } = require('stream');
const { conf, V, checkTypes, step, run, assert } = require('./common');

const T = conf.table;
const opts = {
  host: conf.host, port: conf.port, user: conf.user, password: conf.password,
  database: conf.database, ssl: { ca: conf.ca, rejectUnauthorized: true },
  connectionTimeoutMillis: 10000,
};
const TYPES = 'SELECT $1::int, $2::text, $3::numeric, $4::bool, $5::timestamptz, $6::bytea, '
  + '$7::json, $8::int[]';

async function main() {
  const c = new Client(opts);
  await step('connect over TLS verify-full', async () => {
    await c.connect();
    await c.query(`CREATE TABLE IF NOT EXISTS ${T} (id int, note text, worker int)`);
    await c.query(`TRUNCATE ${T}`);
  });
  const args = [V.int, V.text, V.numeric, V.bool, V.ts, V.bytea, JSON.stringify(V.json), V.array];
  await step('parameters of common types (unnamed statement)', async () => {
    const r = await c.query({ text: TYPES, values: args, rowMode: 'array' });
    checkTypes(r.rows[0]);
  });
  await step('named prepared statements, many of them', async () => {
    for (let round = 0; round < 3; round++) {
      const r = await c.query({ name: 'types', text: TYPES, values: args, rowMode: 'array' });
      checkTypes(r.rows[0]);
      for (let q = 0; q < 10; q++) {
        const s = await c.query({ name: `q${q}`, text: `SELECT $1::int + ${q} AS v`, values: [round] });
        assert.strictEqual(s.rows[0].v, round + q);
      }
    }
  });
  await step('transaction with a savepoint rolled back', async () => {
    await c.query('BEGIN');
    await c.query(`INSERT INTO ${T} (id, note) VALUES (1, 'kept')`);
    await c.query('SAVEPOINT s1');
    await c.query(`INSERT INTO ${T} (id, note) VALUES (2, 'gone')`);
    await assert.rejects(c.query('SELECT 1/0'), (e) => e.code === '22012');
    await c.query('ROLLBACK TO SAVEPOINT s1');
    await c.query('COMMIT');
    const r = await c.query(`SELECT array_agg(id ORDER BY id) AS ids FROM ${T}`);
    assert.deepStrictEqual(r.rows[0].ids, [1]);
  });
  await step('COPY in and out', async () => {
    const data = Array.from({ length: 100 }, (_, i) => `${100 + i}\trow ${100 + i}\n`).join('');
    await pipeline(Readable.from([data]), c.query(copyFrom(`COPY ${T} (id, note) FROM STDIN`)));
    const chunks = [];
    await pipeline(
      c.query(copyTo(`COPY (SELECT id, note FROM ${T} WHERE id >= 100 ORDER BY id) TO STDOUT`)),
      new Writable({ write(chunk, _e, cb) { chunks.push(chunk); cb(); } }),
    );
    assert.strictEqual(Buffer.concat(chunks).toString(), data);
  });
  await step('LISTEN/NOTIFY', async () => {
    const listener = new Client(opts);
    await listener.connect();
    const got = new Promise((resolve, reject) => {
      listener.on('notification', (n) => resolve(n.payload));
      setTimeout(() => reject(new Error('no notification within 10 s')), 10000);
    });
    await listener.query('LISTEN drivers_node');
    await c.query("NOTIFY drivers_node, 'hello from pg'");
    assert.strictEqual(await got, 'hello from pg');
    await listener.end();
  });
  await c.end();
  await step(`${conf.clients} concurrent clients (pg.Pool)`, async () => {
    const pool = new Pool({ ...opts, max: conf.clients });
    await Promise.all(Array.from({ length: conf.clients }, async (_, w) => {
      const pc = await pool.connect();
      try {
        for (let i = 0; i < 12; i++) {
          await pc.query('BEGIN');
          await pc.query({ name: 'ins', text: `INSERT INTO ${T} (id, note, worker) VALUES ($1, 'w', $2)`, values: [1000 + i, w] });
          const r = await pc.query({ name: 'inc', text: 'SELECT $1::int + 1 AS v', values: [i] });
          assert.strictEqual(r.rows[0].v, i + 1);
          await pc.query('COMMIT');
        }
      } finally {
        pc.release();
      }
    }));
    const r = await pool.query(`SELECT count(*)::int AS n FROM ${T} WHERE note = 'w'`);
    assert.strictEqual(r.rows[0].n, conf.clients * 12);
    await pool.end();
  });
}

run(main);
