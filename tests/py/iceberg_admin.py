#!/usr/bin/env python3
"""Change K2's tables as another tool would (pyiceberg), for the schema-evolution tests.

  iceberg_admin.py <catalog args> add-column NS.TABLE NAME TYPE [--required]
  iceberg_admin.py <catalog args> rename-column NS.TABLE OLD NEW
  iceberg_admin.py <catalog args> set-type NS.TABLE COLUMN TYPE
  iceberg_admin.py <catalog args> drop-column NS.TABLE COLUMN
  iceberg_admin.py <catalog args> schema NS.TABLE
  iceberg_admin.py <catalog args> drop-namespace NS

The catalog arguments are read_iceberg.py's (--catalog, --catalog-uri, --warehouse, --s3-endpoint, ...).
TYPE is one of string, int, long, float, double, boolean, date, timestamptz.
A change pyiceberg calls incompatible (a required column, a type it does not promote to) is
made anyway: that is what the tests want K2 to meet. `schema` prints the current schema as one
JSON line: {"schema_id", "fields": [{"id", "name", "type", "required"}, ...]}.
`drop-namespace` purges every table in it (data files too), then drops it; a missing namespace is fine.
Errors exit 1 with the message on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from read_iceberg import add_catalog_args, open_catalog_from


def iceberg_type(name: str):
    from pyiceberg import types as t

    types = {
        "string": t.StringType(),
        "int": t.IntegerType(),
        "long": t.LongType(),
        "float": t.FloatType(),
        "double": t.DoubleType(),
        "boolean": t.BooleanType(),
        "date": t.DateType(),
        "timestamptz": t.TimestamptzType(),
    }
    if name not in types:
        raise ValueError(f"unknown type {name!r}; one of {', '.join(types)}")
    return types[name]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_catalog_args(p)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add-column")
    a.add_argument("table")
    a.add_argument("name")
    a.add_argument("type")
    a.add_argument("--required", action="store_true")
    r = sub.add_parser("rename-column")
    r.add_argument("table")
    r.add_argument("old")
    r.add_argument("new")
    s = sub.add_parser("set-type")
    s.add_argument("table")
    s.add_argument("column")
    s.add_argument("type")
    d = sub.add_parser("drop-column")
    d.add_argument("table")
    d.add_argument("column")
    sc = sub.add_parser("schema")
    sc.add_argument("table")
    n = sub.add_parser("drop-namespace")
    n.add_argument("namespace")
    return p.parse_args(argv)


def describe(table) -> dict:
    schema = table.schema()
    return {
        "schema_id": schema.schema_id,
        "fields": [
            {"id": f.field_id, "name": f.name, "type": str(f.field_type), "required": f.required}
            for f in schema.fields
        ],
    }


def drop_namespace(catalog, namespace: str) -> None:
    from pyiceberg.exceptions import NoSuchNamespaceError

    try:
        tables = catalog.list_tables(namespace)
    except NoSuchNamespaceError:
        return
    for ident in tables:
        catalog.purge_table(ident)
    catalog.drop_namespace(namespace)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        catalog = open_catalog_from(args)
        if args.command == "drop-namespace":
            drop_namespace(catalog, args.namespace)
            return 0
        table = catalog.load_table(args.table)
        if args.command == "schema":
            print(json.dumps(describe(table)), flush=True)
            return 0
        with table.update_schema(allow_incompatible_changes=True) as update:
            if args.command == "add-column":
                update.add_column(args.name, iceberg_type(args.type), required=args.required)
            elif args.command == "rename-column":
                update.rename_column(args.old, args.new)
            elif args.command == "set-type":
                update.update_column(args.column, field_type=iceberg_type(args.type))
            elif args.command == "drop-column":
                update.delete_column(args.column)
    except Exception as e:  # noqa: BLE001 - a CLI: report any failure on stderr
        print(f"iceberg_admin: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
