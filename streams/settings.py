"""The one settings object of `streams`, read from `STREAMS_*` variables and a `.env` file.

Built once at start (`load_settings`) and passed down; nothing reads the environment after that.
A bad value raises `SettingsError` whose message is one line naming the variable, so the CLI can
print it and exit non-zero before anything connects anywhere.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from streams.durations import format_duration, parse_duration
from streams.errors import SettingsError

ENV_PREFIX = "STREAMS_"

# Kafka's own limit for topic names is 249 characters of [a-zA-Z0-9._-]; the prefix must leave
# room for the longest topic name the topology derives from it (see streams.kafka.topics).
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{0,100}$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


def _parse_bootstrap(value: object) -> object:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return value
    servers = [part.strip() for part in value.split(",") if part.strip()]
    if not servers:
        raise ValueError("expected host:port[,host:port…]")
    for server in servers:
        match = _HOSTPORT_RE.match(server)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"expected host:port[,host:port…], got {server!r}")
    return ",".join(servers)


def _parse_tiers(value: object) -> object:
    if isinstance(value, str):
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError("expected a comma-separated list of durations such as 30s,5m,1h")
    tiers = tuple(parse_duration(item) for item in value)
    if any(later <= earlier for earlier, later in itertools.pairwise(tiers)):
        raise ValueError("tier delays must grow strictly from one tier to the next")
    names = [format_duration(t) for t in tiers]
    if len(set(names)) != len(names):
        raise ValueError("two tiers would get the same topic name")
    return tiers


def _parse_duration_field(value: object) -> object:
    return parse_duration(value) if isinstance(value, (str, int, float)) else value


Duration = Annotated[float, BeforeValidator(_parse_duration_field), Field(gt=0)]
Bootstrap = Annotated[str | None, BeforeValidator(_parse_bootstrap)]
Tiers = Annotated[tuple[float, ...], NoDecode, BeforeValidator(_parse_tiers)]


class Settings(BaseSettings):
    """Every setting of a deployment. Field `foo_bar` is read from `STREAMS_FOO_BAR`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    # --- services -------------------------------------------------------------------------
    kafka_bootstrap: Bootstrap = Field(
        None, description="Kafka bootstrap servers, host:port[,host:port]. Unset: the `streams dev` broker."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_timeout: Duration = Field(10.0, description="Timeout of one Kafka admin or metadata call.")

    database_url: SecretStr | None = Field(
        None, description="Postgres URL (postgresql://…). Unset: the `streams dev` Postgres."
    )
    database_pool_size: PositiveInt = 8
    database_timeout: Duration = Field(30.0, description="Connect and statement timeout.")

    target_url: str | None = Field(None, description="Base URL of the bulk-plan-apply target.")
    target_token: SecretStr | None = Field(None, description="Static bearer token for the target; never logged.")
    target_token_url: str | None = Field(
        None, description="OAuth2 token endpoint (client credentials); with it the worker fetches and refreshes tokens."
    )
    target_client_id: str | None = Field(None, description="OAuth2 client id for STREAMS_TARGET_TOKEN_URL.")
    target_client_secret: SecretStr | None = Field(None, description="OAuth2 client secret; never logged.")
    target_scope: str = Field("netbox:read netbox:write", description="OAuth2 scope asked for with each token.")
    target_timeout: Duration = Field(60.0, description="Timeout of one bulk-plan-apply call.")
    target_request_seconds: Duration = Field(
        4.0,
        description="Requests are sized from measured latency to take about this long (at most STREAMS_BATCH_SIZE).",
    )
    target_max_request_bytes: PositiveInt = Field(
        2_000_000, ge=10_000, description="Largest request body; NetBox refuses bodies over 2.5 MiB."
    )

    # --- topology -------------------------------------------------------------------------
    app_id: str = Field("streams", pattern=r"^[A-Za-z0-9._-]{1,100}$", description="Consumer group id.")
    topic_prefix: str = Field("", description="Prepended to every topic name.")
    partitions: PositiveInt = Field(8, le=10_000)
    replication_factor: PositiveInt = Field(1, le=32)
    retry_tiers: Tiers = Field(default=(30.0, 300.0, 3600.0), description="Delays of the retry tiers, e.g. 30s,5m,1h.")
    dlq_retention: Duration = Field(30 * 86400.0, description="How long dead letters are kept on the DLQ topic.")
    batch_size: PositiveInt = Field(500, le=1000, description="Entities per bulk-plan-apply call.")
    max_record_bytes: PositiveInt = Field(1_048_576, description="Larger ingest records are dead-lettered.")
    http_concurrency: PositiveInt = Field(4, le=256, description="In-flight target calls per worker.")
    breaker_threshold: PositiveInt = Field(5, description="Consecutive failed target requests that open the breaker.")
    breaker_cooldown: Duration = Field(10.0, description="First pause of an open breaker before it probes.")
    breaker_max_cooldown: Duration = Field(300.0, description="Longest pause between probes of a down target.")
    max_poll_interval: Duration = Field(300.0, description="Kafka max.poll.interval.ms of the retry-tier consumer.")
    session_timeout: Duration = Field(
        15.0, ge=6.0, le=300.0,
        description="How soon the group gives a silent worker's partitions to the others (Kafka's minimum is 6 s).",
    )
    startup_wait: Duration = Field(
        300.0, description="How long a starting worker waits for the Kafka cluster to answer before it gives up "
                           "(a worker started during a broker outage waits instead of crash-looping).",
    )
    instance_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9._-]{1,100}$",
        description="Static group membership (group.instance.id): a worker restarted under the same id gets its "
                    "partitions back at once, without a rebalance. One per worker, stable across restarts.",
    )
    sweep_interval: Duration = Field(60.0, description="How often the leader looks for stuck rows (±20% jitter).")
    sweep_after: Duration = Field(
        600.0, description="A row QUEUED, APPLYING or FAILED this long (PENDING_RETRY: this long past due) is stuck."
    )
    sweep_batch: PositiveInt = Field(1000, le=100_000, description="Most rows the sweep takes over per state and pass.")

    # --- worker process -------------------------------------------------------------------
    worker_port: int = Field(6066, ge=0, le=65535, description="Metrics and health endpoint port (0: none).")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines: `text` (readable, coloured) or `json`; `auto`: text on a terminal.")
    status_interval: Duration = Field(5.0, description="How often a worker publishes its state for `streams status`.")
    metrics_interval: Duration = Field(15.0, gt=0, description="How often the leader reads the backlog for `/metrics`.")
    stall_after: Duration = Field(600.0, description="`streams runs` flags a run with no progress for this long.")

    # --- local services (`streams dev`) ---------------------------------------------------
    dev_home: Path | None = Field(None, description="Where `streams dev` keeps data; default .cache/dev.")
    kafka_version: str = Field("4.2.1", pattern=r"^4\.\d+\.\d+$", description="Kafka release `streams dev` runs.")
    maven_repo: Path | None = Field(None, description="Maven local repository for the Kafka jars; default ~/.m2.")
    kafka_heap: str = Field("512m", pattern=r"^\d+[mMgG]$", description="Broker heap for `streams dev`.")

    # --- local NetBox (`streams dev netbox`) ----------------------------------------------
    netbox_python: Path | None = Field(
        None, description="Python >= 3.12 for the NetBox virtualenv; default: the first one found on this machine."
    )
    netbox_cache: Path | None = Field(
        None,
        description="Per-user cache of the NetBox virtualenv and migrated template; default ~/.cache/streams/netbox.",
    )

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not _PREFIX_RE.match(value):
            raise ValueError("only letters, digits, '.', '_' and '-' (at most 100)")
        return value

    @field_validator("target_url")
    @classmethod
    def _check_target_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("expected an http:// or https:// URL")
        return value.rstrip("/")

    @property
    def tier_names(self) -> tuple[str, ...]:
        return tuple(format_duration(delay) for delay in self.retry_tiers)


def to_env(settings: Settings) -> dict[str, str]:
    """The settings as STREAMS_* variables, for starting another process with the same ones."""
    env = {}
    for name, value in settings:
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif name == "retry_tiers":
            value = ",".join(settings.tier_names)
        env[env_name(name)] = str(value)
    return env


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(**overrides: object) -> Settings:
    """Build the settings once; raise SettingsError with one line naming the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        message = first["msg"].removeprefix("Value error, ")
        raw = first.get("input")
        shown = "" if field in _SECRET_FIELDS or isinstance(raw, dict) else f" (got {raw!r})"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SettingsError(f"{env_name(field)}: {message}{shown}{more}") from None
    except SourceError as exc:
        # Raised by pydantic-settings before validation, e.g. for a .env file it cannot parse.
        match = re.search(r'field "(\w+)"', str(exc))
        name = env_name(match.group(1)) if match else "settings"
        raise SettingsError(f"{name}: {exc}") from None


_SECRET_FIELDS = {"database_url", "target_token", "target_client_secret", "kafka_sasl_password"}
