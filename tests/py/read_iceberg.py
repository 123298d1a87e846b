#!/usr/bin/env python3
"""Read K2's Iceberg tables as an outside reader (pyiceberg, SQL or REST catalog).

Prints one JSON object per --table on its own line:

  {"table", "metadata_location", "partition_spec", "current_snapshot_id",
   "snapshots": [{"snapshot_id", "parent_id", "timestamp_ms", "sequence_number", "summary"}, ...],  # oldest first
   "row_count", "rows": [{column: value, ...}, ...]}                             # rows unless --summary-only

Values: decimals as strings, timestamps as integer microseconds since the Unix epoch,
times as microseconds since midnight, dates as ISO strings, binary as hex, UUIDs as strings.
Rows come in scan order (not sorted).

Catalogs: --catalog sql (default; SQLite, warehouse local or s3://) or --catalog rest
(--catalog-uri http://host:port, an Iceberg REST catalog). Tables or warehouses in S3 are
read with --s3-endpoint (path-style access) and the keys in AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (never given on the command line).

A table that is not in the catalog prints {"table": ..., "missing": true}; exit status 0.
Any other error exits 1 with the message on stderr.
Run with the venv made by scripts/pyenv.sh.
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import json
import os
import re
import sys
import uuid
from typing import Any

EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
EPOCH_NAIVE = dt.datetime(1970, 1, 1)
MICROS = dt.timedelta(microseconds=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_catalog_args(p)
    p.add_argument("--table", action="append", required=True, help="namespace.table (repeatable)")
    p.add_argument("--columns", help="comma separated column names (default: all)")
    p.add_argument("--summary-only", action="store_true", help="skip rows; row_count still given")
    p.add_argument(
        "--per-snapshot",
        action="store_true",
        help="also give each snapshot's own rows (time travel), for consistent-cut checks",
    )
    return p.parse_args(argv)


def add_catalog_args(p: argparse.ArgumentParser) -> None:
    """The arguments that say which catalog to open (shared with iceberg_admin.py)."""
    p.add_argument("--catalog", choices=("sql", "rest"), default="sql", help="catalog kind (default: sql)")
    p.add_argument(
        "--catalog-uri",
        required=True,
        help="sql: SQLAlchemy URI, e.g. sqlite:////abs/catalog.db (sqlx's sqlite:/abs/catalog.db?mode=rwc is "
        "also accepted); rest: the REST catalog's base URI, e.g. http://127.0.0.1:8182",
    )
    p.add_argument(
        "--warehouse",
        help="sql (required): file:///abs/path, /abs/path or s3://bucket/prefix; rest: the warehouse to ask for",
    )
    p.add_argument("--catalog-name", default="k2", help="must equal the writer's catalog name (default: k2)")
    p.add_argument("--s3-endpoint", help="S3 endpoint of s3:// tables, e.g. http://127.0.0.1:8333 (path-style)")
    p.add_argument("--s3-region", default="us-east-1", help="S3 region (default: us-east-1)")


def s3_props(endpoint: str | None, region: str) -> dict[str, str]:
    """pyiceberg's FileIO settings for an S3-compatible store; keys from the environment."""
    if not endpoint:
        return {}
    props = {"s3.endpoint": endpoint, "s3.path-style-access": "true", "s3.region": region}
    for env, key in (("AWS_ACCESS_KEY_ID", "s3.access-key-id"), ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key")):
        if os.environ.get(env):
            props[key] = os.environ[env]
    return props


def open_catalog_from(args: argparse.Namespace):
    """The catalog `args` (see add_catalog_args) name."""
    props = s3_props(args.s3_endpoint, args.s3_region)
    if args.catalog == "rest":
        from pyiceberg.catalog.rest import RestCatalog

        if args.warehouse:
            props["warehouse"] = args.warehouse
        return RestCatalog(args.catalog_name, uri=args.catalog_uri, **props)
    if not args.warehouse:
        raise ValueError("--warehouse is required with --catalog sql")
    return open_catalog(args.catalog_uri, args.warehouse, args.catalog_name, props)


def sqlalchemy_uri(uri: str) -> str:
    """Map sqlx's `sqlite:/abs/path[?mode=rwc]` (K2's default form, unparsable by SQLAlchemy) to `sqlite:////abs/path`."""
    m = re.fullmatch(r"sqlite:(/[^/][^?]*)(\?.*)?", uri)
    return f"sqlite:///{m.group(1)}" if m else uri


def open_catalog(uri: str, warehouse: str, name: str, props: dict[str, str] | None = None):
    from pyiceberg.catalog.sql import SqlCatalog
    from sqlalchemy.engine import make_url

    uri = sqlalchemy_uri(uri)
    url = make_url(uri)
    # SQLite would silently create an empty database for a wrong path: refuse instead.
    sqlite_file = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if sqlite_file and "uri" not in url.query:
        if not os.path.exists(url.database):
            raise FileNotFoundError(f"catalog database not found: {url.database}")
    if warehouse.startswith("/"):
        warehouse = "file://" + warehouse
    # init_catalog_tables=false: an outside reader never creates the catalog's tables.
    return SqlCatalog(name, uri=uri, warehouse=warehouse, init_catalog_tables="false", **(props or {}))


def jsonable(v: Any) -> Any:
    if isinstance(v, decimal.Decimal):
        return format(v, "f")  # fixed point with the column's scale: never "1E-18"
    if isinstance(v, dt.datetime):
        return (v - (EPOCH_UTC if v.tzinfo else EPOCH_NAIVE)) // MICROS
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, dt.time):
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).hex()
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        # pyarrow gives maps as lists of (key, value) tuples
        return [jsonable(x) for x in v]
    return v


def describe_spec(table) -> str:
    schema = table.schema()
    fields = [f"{f.name}: {f.transform}({schema.find_column_name(f.source_id)})" for f in table.spec().fields]
    return "[" + ", ".join(fields) + "]"


def describe_snapshots(table) -> list[dict[str, Any]]:
    snaps = sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0))
    return [
        {
            "snapshot_id": s.snapshot_id,
            "parent_id": s.parent_snapshot_id,
            "timestamp_ms": s.timestamp_ms,
            "sequence_number": s.sequence_number,
            "summary": s.summary.model_dump() if s.summary is not None else {},
        }
        for s in snaps
    ]


def read_table(
    catalog, ident: str, columns: list[str] | None, summary_only: bool, per_snapshot: bool = False
) -> dict[str, Any]:
    from pyiceberg.exceptions import NoSuchTableError
    from sqlalchemy.exc import OperationalError

    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        return {"table": ident, "missing": True}
    except OperationalError as e:  # catalog database exists but the writer has not created its tables yet
        if "no such table" in str(e):
            return {"table": ident, "missing": True}
        raise

    current = table.current_snapshot()
    out: dict[str, Any] = {
        "table": ident,
        "metadata_location": table.metadata_location,
        "partition_spec": describe_spec(table),
        "current_snapshot_id": current.snapshot_id if current else None,
        "snapshots": describe_snapshots(table),
    }
    scan = table.scan(selected_fields=tuple(columns) if columns else ("*",))
    if summary_only:
        out["row_count"] = scan.count()
    else:
        rows = [jsonable(r) for r in scan.to_arrow().to_pylist()]
        out["row_count"] = len(rows)
        out["rows"] = rows
    if per_snapshot:
        fields = tuple(columns) if columns else ("*",)
        for snap in out["snapshots"]:
            at = table.scan(selected_fields=fields, snapshot_id=snap["snapshot_id"])
            snap["rows"] = [jsonable(r) for r in at.to_arrow().to_pylist()]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    try:
        catalog = open_catalog_from(args)
        for ident in args.table:
            print(json.dumps(read_table(catalog, ident, columns, args.summary_only, args.per_snapshot)), flush=True)
    except Exception as e:  # noqa: BLE001 - a CLI: report any failure on stderr
        print(f"read_iceberg: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
