"""Settings validation: a bad value is one line that names the variable; good values parse."""

from __future__ import annotations

import pytest

from streams.durations import format_duration, parse_duration
from streams.errors import SettingsError
from streams.settings import Settings, load_settings, to_env


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    for key in list(__import__("os").environ):
        if key.startswith("STREAMS_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray .env file


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("STREAMS_KAFKA_BOOTSTRAP", "nonsense", "expected host:port"),
        ("STREAMS_KAFKA_BOOTSTRAP", "host:0", "expected host:port"),
        ("STREAMS_KAFKA_BOOTSTRAP", "host:70000", "expected host:port"),
        ("STREAMS_PARTITIONS", "-1", "greater than 0"),
        ("STREAMS_PARTITIONS", "many", "valid integer"),
        ("STREAMS_RETRY_TIERS", "5m,30s", "grow strictly"),
        ("STREAMS_RETRY_TIERS", "30x", "duration"),
        ("STREAMS_RETRY_TIERS", "", "comma-separated"),
        ("STREAMS_BATCH_SIZE", "1001", "less than or equal to 1000"),
        ("STREAMS_TOPIC_PREFIX", "bad prefix!", "letters, digits"),
        ("STREAMS_TARGET_URL", "ftp://x", "http"),
        ("STREAMS_LOG_LEVEL", "LOUD", "DEBUG"),
        ("STREAMS_KAFKA_HEAP", "lots", "pattern"),
    ],
)
def test_bad_value_names_the_variable_in_one_line(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert expected in message
    assert "\n" not in message


def test_secret_values_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMS_DATABASE_URL", "")
    monkeypatch.setenv("STREAMS_TARGET_TOKEN", "s3cret")
    monkeypatch.setenv("STREAMS_KAFKA_SASL_MECHANISM", "NOPE")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "s3cret" not in str(caught.value)
    settings = load_settings(kafka_sasl_mechanism="PLAIN")
    assert "s3cret" not in repr(settings)


def test_defaults_match_the_spec() -> None:
    settings = load_settings()
    assert settings.topic_prefix == ""
    assert settings.retry_tiers == (30.0, 300.0, 3600.0)
    assert settings.tier_names == ("30s", "5m", "1h")
    assert settings.kafka_bootstrap is None


def test_values_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMS_KAFKA_BOOTSTRAP", "a:9092, b:9093")
    monkeypatch.setenv("STREAMS_RETRY_TIERS", "2s,4s,1m")
    monkeypatch.setenv("STREAMS_PARTITIONS", "4")
    settings = load_settings()
    assert settings.kafka_bootstrap == "a:9092,b:9093"
    assert settings.retry_tiers == (2.0, 4.0, 60.0)
    assert settings.partitions == 4


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("STREAMS_PARTITIONS=3\n")
    assert load_settings().partitions == 3


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(Exception, match="frozen"):
        settings.partitions = 3  # type: ignore[misc]


def test_to_env_round_trips(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(kafka_bootstrap="k:1", database_url="postgresql://u:p@h/db", retry_tiers="500ms,2s",
                        topic_prefix="x.", target_token="tok")
    for key, value in to_env(original).items():
        monkeypatch.setenv(key, value)
    again = load_settings()
    assert again == original


@pytest.mark.parametrize(
    ("text", "seconds", "name"),
    [("30s", 30, "30s"), ("5m", 300, "5m"), ("1h", 3600, "1h"), ("500ms", 0.5, "500ms"),
     ("90s", 90, "90s"), ("120", 120, "2m"), ("2d", 172800, "2d"), ("1.5s", 1.5, "1500ms")],
)
def test_durations(text: str, seconds: float, name: str) -> None:
    assert parse_duration(text) == seconds
    assert format_duration(parse_duration(text)) == name


@pytest.mark.parametrize("bad", ["0s", "-1s", "s", "1y", "", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)  # type: ignore[arg-type]
