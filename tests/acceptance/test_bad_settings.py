"""A bad setting stops start-up with one line naming it, before anything connects."""

from __future__ import annotations

import pytest

from tests.acceptance.conftest import Run

pytestmark = pytest.mark.acceptance


@pytest.mark.parametrize(
    ("variable", "value"),
    [("STREAMS_KAFKA_BOOTSTRAP", "nonsense"), ("STREAMS_PARTITIONS", "-3"), ("STREAMS_RETRY_TIERS", "1h,5m")],
)
@pytest.mark.parametrize("command", [("migrate",), ("topics", "create"), ("dev", "up")])
def test_bad_setting_exits_with_one_line(streams_cli: Run, variable: str, value: str, command: tuple[str, ...]) -> None:
    result = streams_cli(*command, env={variable: value}, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.stderr


def test_command_line_option_is_validated_the_same_way(streams_cli: Run) -> None:
    result = streams_cli("--partitions", "0", "migrate", timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: STREAMS_PARTITIONS:")


def test_missing_database_is_named(streams_cli: Run, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = streams_cli("migrate", env={"STREAMS_DEV_HOME": str(tmp_path / "none")}, timeout=60)
    assert result.returncode == 2
    assert "STREAMS_DATABASE_URL" in result.stderr
