"""``history export``: the stop history in the database, written as JSON lines (no hub, no HTTP)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from culler.adapters.database import Database, DatabaseError
from culler.cli.flags import PROG
from culler.observers.history import export_json_lines


def history_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} history", description="The stop history in the database.")
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser("export", help="write every stored stop as one JSON line, oldest first")
    export.add_argument("--database", type=Path, required=True, help="the service's CULLER_DATABASE file")
    export.add_argument("--output", "-o", type=Path, help="a file (default: standard output)")
    args = parser.parse_args(argv)
    if not args.database.exists():
        print(f"{PROG}: error: no database at {args.database}", file=sys.stderr)
        return 1
    try:
        database = Database(args.database)
        if args.output is None:
            count = export_json_lines(database, sys.stdout)
        else:
            with args.output.open("w", encoding="utf-8") as out:
                count = export_json_lines(database, out)
    except (DatabaseError, OSError) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    print(f"exported {count} stops", file=sys.stderr)
    return 0
