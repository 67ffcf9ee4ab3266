"""Structured logging: one JSON object per line, with the fields an event carries."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Route every logger through one JSON handler (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_c3_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._c3_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class EventLogger:
    """``log.info("job.claimed", job_id=..., attempt=...)`` -> one JSON line."""

    def __init__(self, name: str, **bound: Any):
        self._logger = logging.getLogger(name)
        self._bound = bound

    @property
    def fields(self) -> dict[str, Any]:
        """The fields bound to every line (job id, worker, ...)."""
        return dict(self._bound)

    def bind(self, **fields: Any) -> "EventLogger":
        return EventLogger(self._logger.name, **{**self._bound, **fields})

    def _log(self, level: int, event: str, exc_info: bool = False, **fields: Any) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(
                level, event, exc_info=exc_info, extra={"fields": {**self._bound, **fields}}
            )

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, **fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info=exc_info, **fields)


def get_logger(name: str, **bound: Any) -> EventLogger:
    return EventLogger(name, **bound)


def elapsed_since(start: float) -> float:
    return round(time.time() - start, 3)
