#!/usr/bin/env python3
"""Compact a K2 table from outside, as another writer would: read every row and
overwrite the table with them (pyiceberg's overwrite), leaving the older
snapshots, which still reference the old files, retained.

Usage: compact.py --catalog-uri sqlite:////abs/catalog.db --warehouse /abs/wh --table ns.table
"""

from __future__ import annotations

import argparse

from read_iceberg import open_catalog


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog-uri", required=True)
    p.add_argument("--warehouse", required=True)
    p.add_argument("--catalog-name", default="k2")
    p.add_argument("--table", required=True)
    a = p.parse_args()
    catalog = open_catalog(a.catalog_uri, a.warehouse, a.catalog_name)
    table = catalog.load_table(a.table)
    rows = table.scan().to_arrow()
    table.overwrite(rows, snapshot_properties={"compacted-by": "tests/py/compact.py"})
    print(f"rewrote {a.table}: {rows.num_rows} rows")


if __name__ == "__main__":
    main()
