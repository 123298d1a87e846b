"""The anchor of benches/query.rs: "trades of the last hour" in DuckDB over the
same Parquet files as the Iceberg snapshot K2 queried (history only).

    python benches/query_duckdb.py FILES.json N

FILES.json is a JSON list of Parquet paths. Prints one JSON object: latency
percentiles in ms over N runs (after one warm-up run), and the rows counted.
"""

import json
import math
import sys
import time

import duckdb

SQL = """
SELECT symbol, count(*) AS trades,
       sum(CAST(price AS DOUBLE) * CAST(quantity AS DOUBLE)) / sum(CAST(quantity AS DOUBLE)) AS vwap
FROM read_parquet($files)
WHERE event_time >= now() - INTERVAL 1 HOUR
GROUP BY symbol
"""


def pct(values, p):
    v = sorted(values)
    return v[max(1, math.ceil(p / 100 * len(v))) - 1]


def main():
    files = json.load(open(sys.argv[1]))
    n = int(sys.argv[2])
    con = duckdb.connect()
    rows = con.execute(SQL, {"files": files}).fetchall()  # warm-up
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        rows = con.execute(SQL, {"files": files}).fetchall()
        lat.append((time.perf_counter() - t) * 1000)
    print(json.dumps({
        "n": n,
        "p50_ms": round(pct(lat, 50), 1),
        "p99_ms": round(pct(lat, 99), 1),
        "max_ms": round(max(lat), 1),
        "trades": sum(r[1] for r in rows),
        "duckdb": duckdb.__version__,
        "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
    }))


if __name__ == "__main__":
    main()
