"""A worker started while the Kafka cluster does not answer (a broker restart, an outage) waits
for it instead of exiting, and gives up with a message naming the setting after
STREAMS_STARTUP_WAIT. faust alone exits at once ("Unable to bootstrap"), and a supervisor's
back-off then keeps the worker down long after the broker is back. Real broker, reached through
a TCP forwarder that starts listening only after the worker did."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from streams.dev.processes import free_port
from streams.runs.completions import wait_for_completion
from streams.settings import Settings
from tests.helpers import send_run, wait_for
from tests.integration.conftest import Workers

pytestmark = pytest.mark.integration


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            end.close()


class Forwarder:
    """Listens on `port` and relays every connection to `upstream`."""

    def __init__(self, port: int, upstream: tuple[str, int]) -> None:
        self.server = socket.create_server(("127.0.0.1", port))
        self.upstream = upstream
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def unreachable(pipeline: Settings) -> Iterator[tuple[Settings, int]]:
    port = free_port()
    yield pipeline.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{port}"}), port


def test_a_worker_started_without_a_broker_waits_for_it(
        pipeline: Settings, workers: Workers, unreachable: tuple[Settings, int]) -> None:
    settings, port = unreachable
    process = workers.start(settings)
    wait_for(lambda: "waiting for the Kafka cluster" in workers.logs(), timeout=30, what="the worker waiting")
    time.sleep(2)
    assert process.poll() is None, workers.logs()
    assert pipeline.kafka_bootstrap is not None
    host, real_port = pipeline.kafka_bootstrap.rsplit(":", 1)
    forwarder = Forwarder(port, (host, int(real_port)))
    try:
        send_run(pipeline, "late-broker", [{"object_type": "dcim.site", "entity": {"site": {"name": f"lb-{n}"}}}
                                           for n in range(20)], batch_size=10)
        completed = wait_for_completion(pipeline, "late-broker", timeout=120)
        assert (completed.status, completed.entities.applied) == ("succeeded", 20)
    finally:
        forwarder.close()


def test_a_worker_gives_up_waiting_with_the_setting_named(
        workers: Workers, unreachable: tuple[Settings, int]) -> None:
    settings, _ = unreachable
    process = workers.start(settings.model_copy(update={"startup_wait": 2.0}))
    assert process.wait(60) == 1
    assert "STREAMS_STARTUP_WAIT" in workers.logs()
