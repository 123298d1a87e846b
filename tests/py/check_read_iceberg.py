#!/usr/bin/env python3
"""Self-check of read_iceberg.py, without K2: pyiceberg writes a table, read_iceberg.py reads it back.

Also reads the same table files through a catalog database laid out exactly as
iceberg-catalog-sql 0.10.1 (iceberg-rust) creates and fills it, with the warehouse
given as file:///abs, /abs and file:/abs (the forms iceberg-rust copies verbatim into
metadata and data file locations).

Run:  "$(scripts/pyenv.sh)" tests/py/check_read_iceberg.py [-v]
Ends with 'N passed, N failed'; exit status 1 if any check failed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BinaryType,
    DecimalType,
    IntegerType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

HERE = os.path.dirname(os.path.abspath(__file__))
READER = os.path.join(HERE, "read_iceberg.py")
VERBOSE = "-v" in sys.argv[1:]
UTC = dt.timezone.utc

# The DDL of iceberg-catalog-sql 0.10.1 (src/catalog.rs, SqlCatalog::new), verbatim.
RUST_DDL = [
    """CREATE TABLE IF NOT EXISTS iceberg_tables (
        catalog_name VARCHAR(255) NOT NULL,
        table_namespace VARCHAR(255) NOT NULL,
        table_name VARCHAR(255) NOT NULL,
        metadata_location VARCHAR(1000),
        previous_metadata_location VARCHAR(1000),
        iceberg_type VARCHAR(5),
        PRIMARY KEY (catalog_name, table_namespace, table_name))""",
    """CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
        catalog_name VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL,
        property_key VARCHAR(255),
        property_value VARCHAR(1000),
        PRIMARY KEY (catalog_name, namespace, property_key))""",
]

SCHEMA = Schema(
    NestedField(1, "symbol", StringType(), required=True),
    NestedField(2, "trade_id", LongType(), required=True),
    NestedField(3, "side", IntegerType(), required=False),
    NestedField(4, "price", DecimalType(38, 18), required=False),
    NestedField(5, "event_time", TimestamptzType(), required=True),
    NestedField(6, "raw", BinaryType(), required=False),
)
SPEC = PartitionSpec(PartitionField(source_id=5, field_id=1000, transform=DayTransform(), name="event_time_day"))
ARROW = pa.schema(
    [
        pa.field("symbol", pa.string(), nullable=False),
        pa.field("trade_id", pa.int64(), nullable=False),
        pa.field("side", pa.int32()),
        pa.field("price", pa.decimal128(38, 18)),
        pa.field("event_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("raw", pa.binary()),
    ]
)
T1 = dt.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
T2 = dt.datetime(2024, 1, 3, 23, 59, 59, 999999, tzinfo=UTC)
BATCHES = [
    [
        ("BTCUSDT", 1, 1, Decimal("12345678901234567890.123456789012345678"), T1, b"\x00\xffab"),
        ("ETHUSDT", 2, None, None, T1, None),
    ],
    [
        ("BTCUSDT", 3, -1, Decimal("-0.000000000000000001"), T2, b""),
        ("ETHUSDT", 4, 1, Decimal("2500.5"), T2, b"\x01"),
    ],
]
# What read_iceberg.py must print for those rows.
EXPECTED_ROWS = [
    {"symbol": "BTCUSDT", "trade_id": 1, "side": 1, "price": "12345678901234567890.123456789012345678",
     "event_time": 1704164645678901, "raw": "00ff6162"},
    {"symbol": "ETHUSDT", "trade_id": 2, "side": None, "price": None, "event_time": 1704164645678901, "raw": None},
    {"symbol": "BTCUSDT", "trade_id": 3, "side": -1, "price": "-0.000000000000000001",
     "event_time": 1704326399999999, "raw": ""},
    {"symbol": "ETHUSDT", "trade_id": 4, "side": 1, "price": "2500.500000000000000000",
     "event_time": 1704326399999999, "raw": "01"},
]

passed = failed = 0


def check(name: str, cond: bool, detail: object = "") -> None:
    global passed, failed
    if cond:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


def run(*args: str) -> tuple[int, list[dict], str]:
    t = time.monotonic()
    p = subprocess.run([sys.executable, READER, *args], capture_output=True, text=True)
    if VERBOSE:
        print(f"     [{time.monotonic() - t:.2f}s] read_iceberg {' '.join(args)}")
    lines = [json.loads(line) for line in p.stdout.splitlines() if line.strip()] if p.returncode == 0 else []
    return p.returncode, lines, p.stderr


def write_table(root: str, warehouse: str) -> tuple[str, str]:
    """pyiceberg writes market_data.trades in two appends; returns (catalog uri, metadata location)."""
    uri = f"sqlite:///{root}/pyiceberg.db"
    cat = SqlCatalog("k2", uri=uri, warehouse=warehouse)
    cat.create_namespace("market_data")
    tbl = cat.create_table("market_data.trades", schema=SCHEMA, partition_spec=SPEC)
    for epoch, rows in zip(("3", "4"), BATCHES):
        tbl.append(pa.Table.from_pylist([dict(zip(ARROW.names, r)) for r in rows], schema=ARROW),
                   snapshot_properties={"k2.epoch": epoch})
    return uri, cat.load_table("market_data.trades").metadata_location


def rust_catalog(root: str, metadata_location: str, catalog_name: str = "k2") -> str:
    """A catalog database as iceberg-catalog-sql 0.10.1 creates it, holding one table; returns K2's sqlx-style URI."""
    path = f"{root}/rust-catalog.db"
    with sqlite3.connect(path) as db:
        for ddl in RUST_DDL:
            db.execute(ddl)
        db.execute("INSERT INTO iceberg_namespace_properties VALUES (?, 'market_data', 'exists', 'true')", (catalog_name,))
        db.execute(
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, metadata_location, iceberg_type)"
            " VALUES (?, 'market_data', 'trades', ?, 'TABLE')",
            (catalog_name, metadata_location),
        )
    return f"sqlite:{path}?mode=rwc"


def check_full_read(tag: str, uri: str, warehouse: str) -> None:
    rc, out, err = run("--catalog-uri", uri, "--warehouse", warehouse, "--table", "market_data.trades")
    check(f"{tag}: exit 0", rc == 0, err)
    if rc != 0:
        return
    doc = out[0]
    if VERBOSE:
        print("     " + json.dumps(doc)[:2000])
    check(f"{tag}: keys", set(doc) == {"table", "metadata_location", "partition_spec", "current_snapshot_id",
                                       "snapshots", "row_count", "rows"}, sorted(doc))
    check(f"{tag}: rows", sorted(doc["rows"], key=lambda r: r["trade_id"]) == EXPECTED_ROWS, doc["rows"])
    check(f"{tag}: row_count", doc["row_count"] == 4)
    check(f"{tag}: partition_spec", doc["partition_spec"] == "[event_time_day: day(event_time)]", doc["partition_spec"])
    snaps = doc["snapshots"]
    check(f"{tag}: two snapshots, oldest first, chained",
          len(snaps) == 2 and snaps[0]["parent_id"] is None and snaps[1]["parent_id"] == snaps[0]["snapshot_id"]
          and snaps[0]["timestamp_ms"] <= snaps[1]["timestamp_ms"] and doc["current_snapshot_id"] == snaps[1]["snapshot_id"],
          snaps)
    check(f"{tag}: snapshot properties", [s["summary"].get("k2.epoch") for s in snaps] == ["3", "4"], snaps)
    check(f"{tag}: summary has operation and totals",
          snaps[1]["summary"].get("operation") == "append" and snaps[1]["summary"].get("total-records") == "4", snaps)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="k2-pyiceberg-") as tmp:
        # 1. pyiceberg's own catalog, warehouse as file:///abs.
        root = os.path.join(tmp, "uri")
        os.makedirs(root)
        t = time.monotonic()
        uri, meta = write_table(root, f"file://{root}/warehouse")
        if VERBOSE:
            print(f"     [{time.monotonic() - t:.2f}s] pyiceberg wrote the fixture; metadata at {meta}")
            with sqlite3.connect(f"{root}/pyiceberg.db") as db:
                for (sql,) in db.execute("SELECT sql FROM sqlite_master WHERE type='table'"):
                    print("     " + " ".join(sql.split()))
                for row in db.execute("SELECT * FROM iceberg_tables"):
                    print(f"     iceberg_tables row: {row}")
        check_full_read("pyiceberg catalog", uri, f"file://{root}/warehouse")

        rc, out, err = run("--catalog-uri", uri, "--warehouse", root, "--table", "market_data.trades",
                           "--columns", "trade_id,price", "--summary-only", "--table", "market_data.nope")
        check("summary-only: no rows, count kept", rc == 0 and "rows" not in out[0] and out[0]["row_count"] == 4, (out, err))
        check("missing table", rc == 0 and out[1] == {"table": "market_data.nope", "missing": True}, out)

        rc, out, _ = run("--catalog-uri", uri, "--warehouse", root, "--table", "market_data.trades", "--columns", "trade_id, raw")
        check("--columns", rc == 0 and sorted(out[0]["rows"], key=lambda r: r["trade_id"])
              == [{"trade_id": r["trade_id"], "raw": r["raw"]} for r in EXPECTED_ROWS], out)

        rc, out, _ = run("--catalog-uri", uri, "--warehouse", root, "--catalog-name", "other", "--table", "market_data.trades")
        check("another catalog_name sees no table", rc == 0 and out[0].get("missing") is True, out)

        rc, _, err = run("--catalog-uri", uri, "--warehouse", root, "--table", "market_data.trades", "--columns", "nope")
        check("unknown column: exit 1 + stderr", rc == 1 and "nope" in err, err)

        rc, _, err = run("--catalog-uri", f"sqlite:///{tmp}/absent.db", "--warehouse", root, "--table", "market_data.trades")
        check("absent catalog db: exit 1, not created", rc == 1 and "not found" in err and not os.path.exists(f"{tmp}/absent.db"), err)

        empty = f"{tmp}/empty.db"
        sqlite3.connect(empty).close()
        rc, out, err = run("--catalog-uri", f"sqlite:///{empty}", "--warehouse", root, "--table", "market_data.trades")
        check("catalog db without catalog tables: missing", rc == 0 and out[0].get("missing") is True, (out, err))
        with sqlite3.connect(empty) as db:
            check("reader created no catalog tables", db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0)

        # 2. iceberg-rust's catalog layout, over tables written with each warehouse form.
        for form, warehouse_of in (("file:///abs", lambda r: f"file://{r}/warehouse"),
                                   ("/abs", lambda r: f"{r}/warehouse"),
                                   ("file:/abs", lambda r: f"file:{r}/warehouse")):
            root = os.path.join(tmp, "rust" + str(len(form)))
            os.makedirs(root)
            _, meta = write_table(root, warehouse_of(root))
            check(f"{form}: metadata_location keeps the form", meta.startswith(warehouse_of(root) + "/"), meta)
            if VERBOSE:
                files = SqlCatalog("k2", uri=f"sqlite:///{root}/pyiceberg.db").load_table("market_data.trades").inspect.files()
                print(f"     data file: {files['file_path'][0]}")
            check_full_read(f"rust layout, warehouse {form}", rust_catalog(root, meta), warehouse_of(root))

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
