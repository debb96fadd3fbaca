"""A single-node Apache Kafka 4.x broker (KRaft, broker + controller) run from Maven jars.

Maven resolves `org.apache.kafka:kafka_2.13` and its runtime dependencies from Maven Central
(`kafka-pom.xml`) into `<cache>/kafka/<version>/libs`; a stamp file records the pom's hash, so a
warm start does not run Maven at all. The storage is formatted once with
`kafka.tools.StorageTool` and reused, so a broker that is killed and started again keeps its
topics and offsets. Ports are kept across restarts when they are still free.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.dev import paths
from streams.dev.processes import (
    ServiceState,
    free_port,
    is_running,
    read_state,
    spawn,
    wait_until,
    write_state,
)
from streams.errors import DevServiceError

log = logging.getLogger(__name__)

_MAVEN_TIMEOUT = 600.0
_START_TIMEOUT = 90.0


def jars_dir(version: str) -> Path:
    return paths.cache_root() / "kafka" / version / "libs"


def ensure_jars(version: str, maven_repo: Path | None = None) -> Path:
    """Resolve the broker's jars with Maven unless a matching copy is already cached."""
    libs = jars_dir(version)
    pom = paths.kafka_pom()
    stamp = libs.parent / "resolved.sha256"
    wanted = hashlib.sha256(pom.read_bytes() + version.encode()).hexdigest()
    if stamp.exists() and stamp.read_text().strip() == wanted and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevServiceError("Maven (`mvn`) is not on PATH; it fetches the Kafka jars from Maven Central")
    staging = libs.parent / "libs.partial"
    shutil.rmtree(staging, ignore_errors=True)
    argv = [
        mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
        f"-Dkafka.version={version}", f"-DoutputDirectory={staging}",
    ]
    if maven_repo is not None:
        argv.append(f"-Dmaven.repo.local={maven_repo}")
    log.info("resolving Kafka %s jars with Maven", version)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DevServiceError(f"Maven did not resolve the Kafka jars within {_MAVEN_TIMEOUT:.0f}s") from exc
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-15:]
        raise DevServiceError("Maven failed to resolve the Kafka jars:\n" + "\n".join(tail))
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    stamp.write_text(wanted)
    return libs


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise DevServiceError("`java` is not on PATH; the Kafka broker needs Java 17 or newer")
    return java


def _cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64 without padding. Like Kafka's
    # own generator, avoid a leading '-', which a command line would read as an option.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not text.startswith("-"):
            return text


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "offsets.topic.num.partitions=8",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "transaction.state.log.num.partitions=4",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # One node: no reason to wait for more members before the first rebalance.
        "group.initial.rebalance.delay.ms=0",
        # Every topic is created from streams.kafka.topics (or by faust for its own); a typo in a
        # topic name must fail loudly instead of creating a one-partition topic.
        "auto.create.topics.enable=false",
        "log.segment.bytes=67108864",
        "",
    ])


_LOG4J = """\
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.org.name = org.apache.kafka
logger.org.level = WARN
"""


def broker_answers(bootstrap: str, timeout: float = 2.0, cluster_id: str | None = None) -> bool:
    """True when a broker answers a metadata request (ours, when `cluster_id` is given)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout * 1000), "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException:
        return False
    return bool(metadata.brokers) and (cluster_id is None or metadata.cluster_id == cluster_id)


def _cluster_id_of(data_dir: Path) -> str | None:
    try:
        for line in (data_dir / "meta.properties").read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
    except FileNotFoundError:
        return None
    return None


def start(home: Path, *, version: str, heap: str, maven_repo: Path | None = None) -> tuple[ServiceState, bool]:
    """Start the broker under `home` unless it runs already. Returns (state, started_now)."""
    kafka_home = home / "kafka"
    state_file = kafka_home / "state.json"
    current = read_state(state_file)
    if is_running(current):
        assert current is not None
        return current, False

    libs = ensure_jars(version, maven_repo)
    data_dir = kafka_home / "data"
    kafka_home.mkdir(parents=True, exist_ok=True)
    port = free_port(preferred=current.port if current else None)
    previous_controller = _read_controller_port(kafka_home)
    controller_port = free_port(preferred=previous_controller)
    if controller_port == port:
        controller_port = free_port()
    properties = kafka_home / "server.properties"
    properties.write_text(_server_properties(data_dir, port, controller_port))
    log_file = kafka_home / "broker.log"
    (kafka_home / "log4j2.properties").write_text(_LOG4J.format(log=log_file))
    classpath = f"{libs}/*"
    java = _java()

    if not (data_dir / "meta.properties").exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fmt = subprocess.run(
            [java, "-Xmx256m", "-cp", classpath, "kafka.tools.StorageTool", "format",
             f"--cluster-id={_cluster_id()}", "-c", str(properties), "--ignore-formatted"],
            capture_output=True, text=True, timeout=120, check=False,
        )
        if fmt.returncode != 0:
            raise DevServiceError("kafka.tools.StorageTool format failed:\n" + fmt.stderr[-2000:])

    argv = [
        java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={kafka_home / 'log4j2.properties'}",
        # The marker that proves a pid is this broker (see processes.is_running).
        f"-Dstreams.dev.home={kafka_home}",
        "-cp", classpath, "kafka.Kafka", str(properties),
    ]
    pid = spawn(argv, kafka_home / "stdout.log")
    bootstrap = f"127.0.0.1:{port}"
    state = ServiceState(
        name="kafka", pid=pid, port=port, marker=f"-Dstreams.dev.home={kafka_home}",
        version=version, url=bootstrap, log=str(log_file), started_at=time.time(),
    )
    write_state(state_file, state)
    (kafka_home / "controller.port").write_text(str(controller_port))
    ours = _cluster_id_of(data_dir)
    wait_until(lambda: broker_answers(bootstrap, cluster_id=ours), timeout=_START_TIMEOUT,
               what="Kafka broker", alive=lambda: is_running(state))
    log.info("Kafka %s up at %s (pid %d)", version, bootstrap, pid)
    return state, True


def _read_controller_port(kafka_home: Path) -> int | None:
    try:
        return int((kafka_home / "controller.port").read_text())
    except (FileNotFoundError, ValueError):
        return None


def state(home: Path) -> ServiceState | None:
    return read_state(home / "kafka" / "state.json")
