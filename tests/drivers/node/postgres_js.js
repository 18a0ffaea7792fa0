// postgres.js (postgres) through a pgbay transaction pool. Run by tests/test_drivers.py.
// postgres.js prepares every parameterised query by default (named statements, kept for the
// connection's life: no cache to evict); prepare: false is its unnamed path.
'use strict';
const postgres = require('postgres');
const { Readable, Writable } = require('stream');
const { pipeline } = require('stream/promises');
const { conf, V, checkTypes, step, waitFor, run, assert } = require('./common');

const T = conf.table;
// postgres.js reads a NULL array element back as NaN (client side): no NULL in its array.
const ARRAY = [1, 2, 3, 5];
const opts = {
  host: conf.host, port: conf.port, username: conf.user, password: conf.password,
  database: conf.database, ssl: { ca: conf.ca, rejectUnauthorized: true },
  connect_timeout: 10, max: conf.clients, onnotice: () => {},
};

async function main() {
  const sql = postgres(opts);
  await step('connect over TLS verify-full', async () => {
    await sql`CREATE TABLE IF NOT EXISTS ${sql(T)} (id int, note text, worker int)`;
    await sql`TRUNCATE ${sql(T)}`;
  });
  const types = (s) => s`SELECT ${V.int}::int, ${V.text}::text, ${V.numeric}::numeric,
    ${V.bool}::bool, ${V.ts}::timestamptz, ${V.bytea}::bytea, ${s.json(V.json)}::json,
    ${s.array(ARRAY)}::int[]`.values();
  await step('parameters of common types (prepared, then unprepared)', async () => {
    for (let i = 0; i < 3; i++) checkTypes((await types(sql))[0], ARRAY);
    const unprepared = postgres({ ...opts, prepare: false, max: 1 });
    const [u] = await unprepared`SELECT ${V.int}::int + 1 AS i, ${V.text}::text AS t,
      ${V.bytea}::bytea AS b, ${V.ts}::timestamptz AS ts`;
    assert.strictEqual(u.i, V.int + 1);
    assert.strictEqual(u.t, V.text);
    assert.ok(u.b.equals(V.bytea));
    assert.strictEqual(u.ts.getTime(), V.ts.getTime());
    await unprepared.end();
  });
  await step('many prepared statements', async () => {
    for (let round = 0; round < 3; round++) {
      for (let q = 0; q < 10; q++) {
        const [r] = await sql.unsafe(`SELECT $1::int + ${q} AS v`, [round], { prepare: true });
        assert.strictEqual(r.v, round + q);
      }
    }
  });
  await step('transaction with a savepoint rolled back', async () => {
    await sql.begin(async (tx) => {
      await tx`INSERT INTO ${tx(T)} (id, note) VALUES (1, 'kept')`;
      await assert.rejects(tx.savepoint(async (sp) => {
        await sp`INSERT INTO ${sp(T)} (id, note) VALUES (2, 'gone')`;
        await sp`SELECT 1/0`;
      }), (e) => e.code === '22012');
    });
    const [r] = await sql`SELECT array_agg(id ORDER BY id) AS ids FROM ${sql(T)}`;
    assert.deepStrictEqual(r.ids, [1]);
  });
  await step('COPY in and out', async () => {
    const data = Array.from({ length: 100 }, (_, i) => `${100 + i}\trow ${100 + i}\n`).join('');
    await sql.begin(async (tx) => {
      await pipeline(Readable.from([data]),
        await tx`COPY ${tx(T)} (id, note) FROM STDIN`.writable());
      const chunks = [];
      await pipeline(
        await tx`COPY (SELECT id, note FROM ${tx(T)} WHERE id >= 100 ORDER BY id) TO STDOUT`.readable(),
        new Writable({ write(chunk, _e, cb) { chunks.push(chunk); cb(); } }),
      );
      assert.strictEqual(Buffer.concat(chunks).toString(), data);
    });
  });
  await step('cancel a pg_sleep', async () => {
    const q = sql`SELECT pg_sleep(60) /* drivers-cancel */`;
    const done = q.then(() => { throw new Error('pg_sleep(60) was not cancelled'); },
      (e) => assert.strictEqual(e.code, '57014', String(e)));
    q.execute();
    await waitFor(async () => (await sql`SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE state = 'active' AND query LIKE '%drivers-cancel%' AND pid <> pg_backend_pid()`)[0].n === 1,
      'the pg_sleep to run');
    await q.cancel();
    await done;
  });
  await step(`${conf.clients} concurrent clients`, async () => {
    await Promise.all(Array.from({ length: conf.clients }, async (_, w) => {
      for (let i = 0; i < 12; i++) {
        await sql.begin(async (tx) => {
          await tx`INSERT INTO ${tx(T)} (id, note, worker) VALUES (${1000 + i}, 'w', ${w})`;
          const [r] = await tx`SELECT ${i}::int + 1 AS v`;
          assert.strictEqual(r.v, i + 1);
        });
      }
    }));
    const [r] = await sql`SELECT count(*)::int AS n FROM ${sql(T)} WHERE note = 'w'`;
    assert.strictEqual(r.n, conf.clients * 12);
  });
  // Last: its LISTEN goes through the extended protocol (issue 20's report).
  await step('LISTEN/NOTIFY', async () => {
    let resolve;
    const got = new Promise((r) => { resolve = r; });
    const { unlisten } = await sql.listen('drivers_pjs', (payload) => resolve(payload));
    await sql.notify('drivers_pjs', 'hello from postgres.js');
    const timeout = new Promise((_, reject) => setTimeout(
      () => reject(new Error('no notification within 10 s')), 10000));
    assert.strictEqual(await Promise.race([got, timeout]), 'hello from postgres.js');
    await unlisten();
  });
  await sql.end({ timeout: 5 });
}

run(main);
