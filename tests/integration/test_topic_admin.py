"""`streams topics` on a real broker: created from the definition, idempotent, mismatches reported."""

from __future__ import annotations

import pytest

from streams.errors import TopicError
from streams.kafka.admin import create_topics, describe_topics
from streams.kafka.topics import Role, topology
from streams.settings import Settings

pytestmark = pytest.mark.integration


def test_create_is_idempotent_and_describe_matches(settings: Settings) -> None:
    specs = topology(settings)
    first = create_topics(settings, specs)
    assert set(first.values()) == {"created"}
    second = create_topics(settings, specs)
    assert set(second.values()) == {"exists"}
    states = {state.name: state for state in describe_topics(settings, specs)}
    for spec in specs:
        state = states[spec.name]
        assert state.exists and state.partitions == spec.partitions == 2
        assert state.config["retention.ms"] == spec.config.get("retention.ms", state.config["retention.ms"])
    changelog = next(spec for spec in specs if spec.role is Role.CHANGELOG)
    assert states[changelog.name].config["cleanup.policy"] == "compact"


def test_partition_mismatch_is_an_error(settings: Settings) -> None:
    create_topics(settings, topology(settings))
    wider = settings.model_copy(update={"partitions": 3})
    with pytest.raises(TopicError, match="has 2 partitions, the definition says 3"):
        create_topics(wider, topology(wider))


def test_describe_reports_missing_topics(settings: Settings) -> None:
    states = describe_topics(settings, topology(settings))
    assert not any(state.exists for state in states)
