// node-postgres through the pgshift proxy: simple and extended protocol, named
// prepared statements, transactions, errors, LISTEN/NOTIFY and the version the
// proxy routed the session to.
//   node node_smoke.js CONNECTION_STRING EXPECTED_VERSION   ("-" when none)
const { Client } = require("pg");
const assert = require("assert");

async function main() {
  const [conn, expected] = process.argv.slice(2);
  const c = new Client({ connectionString: conn });
  await c.connect();
  const v = await c.query("SELECT current_setting('pgshift.version', true) AS v");
  assert.strictEqual(v.rows[0].v || "-", expected);

  await c.query("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)");
  for (let i = 1; i <= 5; i++) {
    await c.query({ name: "ins", text: "INSERT INTO t VALUES ($1, $2)", values: [i, "v" + i] });
  }
  const r = await c.query("SELECT count(*)::int AS n, max(v) AS m FROM t WHERE id > $1", [0]);
  assert.deepStrictEqual(r.rows[0], { n: 5, m: "v5" });

  await c.query("BEGIN");
  await c.query("DELETE FROM t WHERE id = 1");
  await c.query("ROLLBACK");
  assert.strictEqual((await c.query("SELECT count(*)::int AS n FROM t")).rows[0].n, 5);

  await assert.rejects(c.query("SELECT 1/0"), /division by zero/);

  const got = new Promise((resolve) => c.on("notification", (m) => resolve(m.payload)));
  await c.query("LISTEN smoke");
  const other = new Client({ connectionString: conn });
  await other.connect();
  await other.query("NOTIFY smoke, 'hello'");
  await other.end();
  assert.strictEqual(await got, "hello");

  const big = await c.query("SELECT repeat('x', 5000000) AS s");
  assert.strictEqual(big.rows[0].s.length, 5000000);
  await c.end();
  console.log("node-postgres ok");
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
