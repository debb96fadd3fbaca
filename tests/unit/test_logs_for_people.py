"""Logs for people: the text format, the choice between text and JSON, and librdkafka's lines
kept off the terminal."""

from __future__ import annotations

import gc
import io
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator

import orjson
import pytest
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient

from streams import logs
from streams.errors import SettingsError
from streams.kafka.config import confluent_config
from streams.logs import JsonFormatter, TextFormatter, terminal_logs_to
from streams.settings import Settings, load_settings

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _logging_restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # configure() replaces the root handlers and quiets some libraries; the other tests keep
    # pytest's handlers and every logger's level.
    monkeypatch.delenv("NO_COLOR", raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: found.level for name, found in root.manager.loggerDict.items()
              if isinstance(found, logging.Logger)}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, found in root.manager.loggerDict.items():
        if isinstance(found, logging.Logger):
            found.setLevel(levels.get(name, logging.NOTSET))


@pytest.fixture
def streams_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for key in list(os.environ):
        if key.startswith("STREAMS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env file


def record(msg: str = "batch applied", *, level: int = logging.INFO, name: str = "streams.agents.plan_apply",
           exc_info: object = None, **extra: object) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, (), exc_info, extra=extra)  # type: ignore[arg-type]


def logged(stream: io.StringIO, emit: Callable[[logging.Logger], None]) -> str:
    emit(logging.getLogger("streams.agents.plan_apply"))
    return stream.getvalue()


# --- the text format --------------------------------------------------------------------------

def test_text_line_is_time_level_module_message_then_fields() -> None:
    line = TextFormatter().format(record(run="r1", partition=3, entities=500))
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO  plan-apply  batch applied  run=r1 partition=3 entities=500", line)


def test_text_line_without_fields_ends_with_the_message() -> None:
    assert TextFormatter().format(record("worker started")).endswith(" INFO  plan-apply  worker started")


@pytest.mark.parametrize(("level", "shown"), [(logging.DEBUG, "DEBUG "), (logging.WARNING, "WARN  "),
                                               (logging.ERROR, "ERROR "), (logging.CRITICAL, "CRIT  ")])
def test_level_names_line_up(level: int, shown: str) -> None:
    assert f" {shown}plan-apply  " in TextFormatter().format(record(level=level))


@pytest.mark.parametrize(("name", "short"), [("streams.kafka.checkpoint", "checkpoint"),
                                             ("streams.backoff", "backoff"),
                                             ("aiokafka.consumer.group_coordinator", "aiokafka"),
                                             ("root", "root")])
def test_logger_name_is_short(name: str, short: str) -> None:
    assert f"  {short}  batch applied" in TextFormatter().format(record(name=name))


def test_text_redacts_like_json_and_keeps_counts_as_numbers() -> None:
    fields = dict(token="s3cret", password="hunter2", authorization="Bearer x", database_url="postgresql://u:p@h/db",
                  entity={"site": {"name": "a"}}, entities=[{"site": {}}])
    line = TextFormatter().format(record(**fields))
    for key in fields:
        assert f"{key}=[redacted]" in line
    for secret in ("s3cret", "hunter2", "Bearer", "u:p@h", "site"):
        assert secret not in line
    counted = TextFormatter().format(record(entities=500, entity=1, duration=1.5, ok=True, missing=None))
    assert counted.endswith("entities=500 entity=1 duration=1.5 ok=True missing=None")


def test_json_redacts_the_same_fields() -> None:
    payload = orjson.loads(JsonFormatter().format(record(token="s3cret", entities=500, run="r1")))
    assert payload["token"] == "[redacted]"
    assert payload["entities"] == 500
    assert payload["run"] == "r1"
    assert (payload["level"], payload["logger"], payload["msg"]) == ("info", "streams.agents.plan_apply",
                                                                     "batch applied")


def test_values_with_spaces_are_quoted_long_ones_shortened_and_lists_compact() -> None:
    line = TextFormatter().format(record(error="connection refused", detail="x" * 500, partitions=[0, 1, 2],
                                         url='a="b"'))
    assert 'error="connection refused"' in line
    assert re.search(r" detail=x{79}… ", line)
    assert "partitions=[0,1,2]" in line
    assert r'url="a=\"b\""' in line
    assert "\n" not in line


def test_a_value_with_a_newline_stays_on_one_line() -> None:
    assert 'error="first\\nsecond"' in TextFormatter().format(record(error="first\nsecond"))


def test_exception_is_printed_below_the_line() -> None:
    try:
        raise ValueError("bad batch")
    except ValueError:
        line = TextFormatter().format(record("apply failed", level=logging.ERROR, exc_info=sys.exc_info(), run="r1"))
    first, *rest = line.splitlines()
    assert first.endswith("apply failed  run=r1")
    assert rest[0] == "Traceback (most recent call last):"
    assert rest[-1] == "ValueError: bad batch"


# --- colours ----------------------------------------------------------------------------------

def test_colours_only_when_asked() -> None:
    plain = TextFormatter().format(record(level=logging.ERROR))
    coloured = TextFormatter(colour=True).format(record(level=logging.ERROR))
    assert not ANSI.search(plain)
    assert "\x1b[31mERROR\x1b[0m" in coloured
    assert ANSI.sub("", coloured) == plain


def test_a_terminal_gets_colours() -> None:
    stream = Terminal()
    logs.configure("INFO", stream)
    assert "\x1b[33mWARN\x1b[0m" in logged(stream, lambda log: log.warning("slow target", extra={"run": "r1"}))


def test_no_color_turns_colours_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    stream = Terminal()
    logs.configure("INFO", stream)
    line = logged(stream, lambda log: log.warning("slow target"))
    assert " WARN  plan-apply  slow target" in line
    assert not ANSI.search(line)


def test_text_forced_on_a_file_has_no_colours() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream, fmt="text")
    line = logged(stream, lambda log: log.error("apply failed", extra={"run": "r1"}))
    assert line.endswith(" ERROR plan-apply  apply failed  run=r1\n")
    assert not ANSI.search(line)


# --- text or JSON -----------------------------------------------------------------------------

def test_auto_writes_json_when_the_stream_is_not_a_terminal() -> None:
    stream = io.StringIO()
    logs.configure("INFO", stream)
    payload = orjson.loads(logged(stream, lambda log: log.info("batch applied", extra={"entities": 500})))
    assert (payload["msg"], payload["entities"]) == ("batch applied", 500)


def test_auto_writes_json_into_a_real_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # What a worker started by the CLI sees: its stderr is the worker.log file.
    with open(tmp_path / "worker.log", "w+") as stream:
        logs.configure("INFO", stream)
        logging.getLogger("streams.sweep").info("sweep done", extra={"rows": 3})
        stream.seek(0)
        assert orjson.loads(stream.read())["rows"] == 3


def test_auto_writes_text_on_a_terminal() -> None:
    stream = Terminal()
    logs.configure("INFO", stream)
    line = ANSI.sub("", logged(stream, lambda log: log.info("batch applied", extra={"entities": 500})))
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO  plan-apply  batch applied  entities=500\n", line)


def test_json_forced_on_a_terminal() -> None:
    stream = Terminal()
    logs.configure("INFO", stream, fmt="json")
    assert orjson.loads(logged(stream, lambda log: log.info("batch applied")))["level"] == "info"


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="expected auto, json or text"):
        logs.configure("INFO", io.StringIO(), fmt="pretty")  # type: ignore[arg-type]


def test_streams_log_format_from_the_environment(monkeypatch: pytest.MonkeyPatch, streams_env: None) -> None:
    assert Settings().log_format == "auto"
    monkeypatch.setenv("STREAMS_LOG_FORMAT", "json")
    settings = Settings()
    assert settings.log_format == "json"
    stream = Terminal()
    logs.configure(settings.log_level, stream, fmt=settings.log_format)
    assert orjson.loads(logged(stream, lambda log: log.info("batch applied")))["msg"] == "batch applied"


def test_a_bad_streams_log_format_is_refused(monkeypatch: pytest.MonkeyPatch, streams_env: None) -> None:
    monkeypatch.setenv("STREAMS_LOG_FORMAT", "pretty")
    with pytest.raises(SettingsError, match=r"^STREAMS_LOG_FORMAT: "):
        load_settings()


# --- beside a live display --------------------------------------------------------------------

def test_terminal_lines_go_to_the_live_display_meanwhile_and_files_stay() -> None:
    terminal, file, proxy = Terminal(), io.StringIO(), io.StringIO()
    logs.configure("INFO", terminal)
    logging.getLogger().addHandler(logging.StreamHandler(file))
    with terminal_logs_to(proxy):
        logging.getLogger("streams.sweep").warning("during the bars")
    logging.getLogger("streams.sweep").warning("after the bars")
    assert "during the bars" in proxy.getvalue()
    assert "during the bars" not in terminal.getvalue()
    assert "after the bars" in terminal.getvalue()
    assert "during the bars" in file.getvalue() and "after the bars" in file.getvalue()


# --- librdkafka -------------------------------------------------------------------------------

def _until(condition: Callable[[], bool], serve: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        serve()


def _refused(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "Connect to ipv4#127.0.0.1:1 failed" in r.getMessage()]


def _produce_and_close(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    producer = Producer(confluent_config(settings, **{"message.timeout.ms": 1000}))
    producer.produce("t", b"v")
    _until(lambda: bool(_refused(caplog)), lambda: producer.poll(0.1))
    producer.flush(0.5)
    producer.close()


def _consume_and_close(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    before = len(_refused(caplog))
    consumer = Consumer(confluent_config(settings, **{"group.id": "g"}))
    consumer.subscribe(["t"])
    _until(lambda: len(_refused(caplog)) > before, lambda: consumer.poll(0.1))
    consumer.close()


def test_librdkafka_writes_nothing_to_stderr_and_logs_at_debug(
        streams_env: None, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    # Port 1 refuses every connection: librdkafka logs a FAIL line per attempt, at its error level,
    # the same lines it logs when a broker goes away under a running client or at shutdown.
    settings = Settings(kafka_bootstrap="127.0.0.1:1", _env_file=None)  # type: ignore[call-arg]
    caplog.set_level(logging.DEBUG, logger="streams.kafka.librdkafka")
    _produce_and_close(settings, caplog)
    from_producer = len(_refused(caplog))
    _consume_and_close(settings, caplog)
    # An admin client is never polled: its lines are dropped with it, not printed.
    with pytest.raises(KafkaException, match=r"transport failure|timed out"):
        AdminClient(confluent_config(settings)).list_topics(timeout=0.5)
    gc.collect()  # librdkafka's last lines come when the handles are destroyed

    assert capfd.readouterr().err == ""
    refused = _refused(caplog)
    assert from_producer and len(refused) > from_producer  # served by poll(), from both clients
    assert {(r.levelno, r.librdkafka_level) for r in refused} == {(logging.DEBUG, "error")}  # type: ignore[attr-defined]
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "streams.kafka.librdkafka")
