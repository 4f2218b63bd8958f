"""``history export``: the database's stop history back as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from factories import stop_lines

from culler.adapters.database import Database
from culler.cli import main


def test_export_writes_the_stored_stops_as_json_lines(tmp_path: Path, capsys) -> None:
    path = tmp_path / "culler.sqlite"
    database = Database(path)
    stops = stop_lines()
    for stop in stops:
        database.add_stop(stop)
    database.close()
    out = tmp_path / "stops.jsonl"
    assert main(["history", "export", "--database", str(path), "-o", str(out)]) == 0
    assert [json.loads(line) for line in out.read_text().splitlines()] == stops
    assert "exported 2 stops" in capsys.readouterr().err
    assert main(["history", "export", "--database", str(tmp_path / "missing.sqlite")]) == 1
