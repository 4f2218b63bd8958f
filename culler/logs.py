"""Structured log lines: ``event key=value ...`` as text, or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_FIELDS = "culler_fields"


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one action with its fields; the text form is ``name k=v k2="v 2"``."""
    logger.log(level, name, extra={_FIELDS: fields})


def _text_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(ch in text for ch in ' ="'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS, None)
        if fields:
            pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items() if value is not None)
            record.message = f"{record.message} {pairs}"
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        line.update(getattr(record, _FIELDS, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class RedactFilter(logging.Filter):
    """Defence in depth: whatever path a secret takes into a record, it leaves as ``[secret]``."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 6]

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            for secret in self.secrets:
                record.exc_text = record.exc_text.replace(secret, "[secret]")
            record.exc_info = None  # formatters print exc_text instead
        message = record.getMessage()
        fields = getattr(record, _FIELDS, None)
        for secret in self.secrets:
            if secret in message:
                message = message.replace(secret, "[secret]")
            if fields:
                fields = {k: str(v).replace(secret, "[secret]") if secret in str(v) else v for k, v in fields.items()}
        record.msg, record.args = message, None
        if fields is not None:
            setattr(record, _FIELDS, fields)
        return True


def setup_logging(fmt: str = "text", level: str = "INFO", secrets: list[str] | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "skipped: maximum number of running instances reached" each interval a long cycle overlaps:
    # expected (cycles never overlap by design), and each cycle logs its own duration.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
