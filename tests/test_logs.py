"""Log lines: one structured line per event, JSON on request, secrets redacted whatever the path."""

from __future__ import annotations

import json
import logging

import pytest

from culler.logs import JsonFormatter, RedactFilter, TextFormatter, event

TOKEN = "tok-0123456789abcdef"


def _record(logger_name: str, *fields: dict[str, object], message: str = "server stopped") -> logging.LogRecord:
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            captured.append(record)

    logger = logging.getLogger(logger_name)
    handler = Keep()
    handler.addFilter(RedactFilter([TOKEN]))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        event(logger, logging.INFO, message, **(fields[0] if fields else {}))
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_text_line_has_fields_quoted_when_needed() -> None:
    record = _record("t.text", {"user": "alice", "server": "", "reason": "no activity for 8d", "skip": None})
    line = TextFormatter().format(record)
    assert line.endswith('server stopped user=alice server="" reason="no activity for 8d"')


def test_json_line_is_one_object_with_fields() -> None:
    record = _record("t.json", {"user": "bob", "rule": "gpu"})
    data = json.loads(JsonFormatter().format(record))
    assert data["event"] == "server stopped" and data["user"] == "bob" and data["rule"] == "gpu"
    assert data["level"] == "info"


@pytest.mark.parametrize("where", ["message", "field"])
def test_token_is_redacted(where: str) -> None:
    if where == "message":
        record = _record("t.redact1", message=f"failed with Authorization: token {TOKEN}")
    else:
        record = _record("t.redact2", {"error": f"bad header token {TOKEN}"})
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(record)
        assert TOKEN not in line
        assert "[secret]" in line


def test_token_in_a_traceback_is_redacted() -> None:
    logger = logging.getLogger("t.redact.exc")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep()
    handler.addFilter(RedactFilter([TOKEN]))
    logger.addHandler(handler)
    try:
        for formatter in (TextFormatter(), JsonFormatter()):
            handler.setFormatter(formatter)
            try:
                raise RuntimeError(f"header was token {TOKEN}")
            except RuntimeError:
                logger.exception("cycle crashed")
    finally:
        logger.removeHandler(handler)
    assert len(lines) == 2
    for line in lines:
        assert "RuntimeError" in line and "[secret]" in line and TOKEN not in line
