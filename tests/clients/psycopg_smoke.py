"""psycopg 3 through the pgshift proxy: simple and extended protocol, server-side
prepared statements, pipeline mode, COPY both ways, transactions, LISTEN/NOTIFY
and the version the proxy routed the session to.

    psycopg_smoke.py CONNINFO EXPECTED_VERSION   ("-" when no version is expected)
"""
import sys

import psycopg

conninfo, expected = sys.argv[1], sys.argv[2]

with psycopg.connect(conninfo, autocommit=True) as conn:
    # The version the proxy chose for this session.
    got = conn.execute("SELECT current_setting('pgshift.version', true)").fetchone()[0]
    assert (got or "-") == expected, f"routed to {got!r}, expected {expected!r}"

    conn.execute("CREATE TEMP TABLE t (id int PRIMARY KEY, v text)")
    conn.execute("INSERT INTO t VALUES (%s, %s)", (1, "one"))  # extended protocol
    for i in range(2, 8):  # prepared server-side after a few executions
        conn.execute("INSERT INTO t VALUES (%s, %s)", (i, f"v{i}"), prepare=True)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 7

    with conn.pipeline():
        cur1 = conn.execute("SELECT v FROM t WHERE id = %s", (1,))
        cur2 = conn.execute("SELECT v FROM t WHERE id = %s", (2,))
    assert cur1.fetchone()[0] == "one" and cur2.fetchone()[0] == "v2"

    with conn.cursor() as cur:
        with cur.copy("COPY t (id, v) FROM STDIN") as copy:
            for i in range(100, 1100):
                copy.write_row((i, "x" * (i % 50)))
        out = bytearray()
        with cur.copy("COPY (SELECT id, v FROM t WHERE id >= 100 ORDER BY id) TO STDOUT") as copy:
            for chunk in copy:
                out += chunk
    assert out.count(b"\n") == 1000, out[:100]

    with conn.transaction():
        conn.execute("UPDATE t SET v = 'changed' WHERE id = 1")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert conn.execute("SELECT v FROM t WHERE id = 1").fetchone()[0] == "changed"

    try:
        conn.execute("SELECT 1/0")
        raise AssertionError("division by zero did not fail")
    except psycopg.errors.DivisionByZero:
        pass

    conn.execute("LISTEN smoke")
    with psycopg.connect(conninfo, autocommit=True) as other:
        other.execute("NOTIFY smoke, 'hello'")
    note = next(conn.notifies(timeout=10))
    assert note.payload == "hello", note

print("psycopg ok")
