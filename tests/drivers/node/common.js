// What the node driver programs share: the connection settings from the environment (the
// password never in argv), the expected values of the type round trip, and the step labels.
'use strict';
const fs = require('fs');
const assert = require('assert');

const env = process.env;
const conf = {
  host: env.PGB_HOST,
  port: Number(env.PGB_PORT),
  user: env.PGB_USER,
  password: env.PGB_PASSWORD,
  database: env.PGB_DB,
  // verify-full: the chain against pgbay's CA, and the host name (node checks it by default).
  ca: fs.readFileSync(env.PGB_CA, 'utf8'),
  table: env.PGB_TABLE,
  clients: Number(env.PGB_CLIENTS || 10),
};

// One value of each common type. JavaScript dates carry milliseconds only.
const V = {
  int: 42,
  text: "héllo, 'pool' \\ \"x\"",
  numeric: '12345.678901',
  bool: true,
  ts: new Date(Date.UTC(2026, 11, 3, 7, 45, 1, 123)),
  bytea: Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
  json: { a: [1, 2, { b: null }], c: 'd' },
  array: [1, 2, 3, null, 5],
};

function checkTypes(row, array = V.array) {
  const got = Array.isArray(row) ? row : Object.values(row);
  assert.strictEqual(got[0], V.int, 'int');
  assert.strictEqual(got[1], V.text, 'text');
  assert.strictEqual(String(got[2]), V.numeric, 'numeric');
  assert.strictEqual(got[3], V.bool, 'bool');
  assert.strictEqual(got[4].getTime(), V.ts.getTime(), 'timestamptz');
  assert.ok(Buffer.from(got[5]).equals(V.bytea), 'bytea');
  assert.deepStrictEqual(typeof got[6] === 'string' ? JSON.parse(got[6]) : got[6], V.json, 'json');
  assert.deepStrictEqual(Array.from(got[7], (x) => (x === undefined ? null : x)), array, `int[]: got ${require('util').inspect(got[7])}`);
}

let current = 'start';
async function step(name, fn) {
  current = name;
  return fn();
}

async function waitFor(pred, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function run(main) {
  const guard = setTimeout(() => {
    console.error(`FAIL in step '${current}': no end after 150 s`);
    process.exit(1);
  }, 150000);
  main().then(() => {
    clearTimeout(guard);
    console.log('OK');
    process.exit(0);
  }, (e) => {
    console.error(`FAIL in step '${current}': ${e && e.stack ? e.stack : e} (SQLSTATE ${e && e.code})`);
    process.exit(1);
  });
}

module.exports = { conf, V, checkTypes, step, waitFor, run, assert };
