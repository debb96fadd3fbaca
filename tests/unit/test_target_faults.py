"""The reference target's pure parts: natural keys, and fault decisions (deterministic, at rate)."""

from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from streams.target.faults import (
    EntityFault,
    Faults,
    draw,
    entity_fault,
    is_poison,
    request_status,
    retry_after,
)
from streams.target.natural_keys import NaturalKeyError, key_values, natural_key

IDS = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(10_000)]

# --- natural keys -----------------------------------------------------------------------------


@pytest.mark.parametrize(("object_type", "entity", "values"), [
    ("dcim.site", {"name": "DC 1", "slug": "dc1"}, ("DC 1",)),
    ("dcim.device", {"name": "leaf-01", "site": {"slug": "dc1", "name": "DC 1"}}, ("DC 1", "leaf-01")),
    ("dcim.interface", {"name": "eth0", "device": {"name": "leaf-01", "site": {"name": "DC 1"}}},
     ("DC 1", "leaf-01", "eth0")),
    ("dcim.devicetype", {"model": "MX204", "manufacturer": {"name": "Juniper"}}, ("Juniper", "MX204")),
    ("dcim.macaddress", {"macAddress": "00:01:02:03:04:05"}, ("00:01:02:03:04:05",)),  # lowerCamel
    ("ipam.ipaddress", {"address": "10.0.0.1/24", "status": "active"}, ("10.0.0.1/24",)),
    ("dcim.rack", {"name": "r1"}, ("r1",)),
    ("ipam.vlan", {"name": 42}, (42,)),  # any scalar will do
])
def test_natural_key_values_per_type(object_type: str, entity: dict, values: tuple) -> None:
    assert key_values(object_type, entity) == values


@pytest.mark.parametrize(("object_type", "entity", "path"), [
    ("dcim.site", {"slug": "dc1"}, "name"),
    ("dcim.device", {"name": "leaf-01"}, "site.name"),
    ("dcim.device", {"name": "leaf-01", "site": "dc1"}, "site.name"),  # not an object
    ("dcim.device", {"site": {"name": "dc1"}}, "name"),
    ("dcim.interface", {"name": "eth0", "device": {"name": "leaf-01"}}, "device.site.name"),
    ("dcim.rack", {"name": None}, "name"),
    ("dcim.rack", {"name": {"first": "r"}}, "name"),
    ("dcim.rack", {"name": ["r1"]}, "name"),
])
def test_a_missing_or_non_scalar_key_field_is_named(object_type: str, entity: dict, path: str) -> None:
    with pytest.raises(NaturalKeyError) as caught:
        natural_key(object_type, entity)
    assert str(caught.value) == f"missing natural key field {path}"


def test_natural_keys_do_not_collide_on_separators() -> None:
    first = natural_key("dcim.device", {"name": "b", "site": {"name": "a/"}})
    second = natural_key("dcim.device", {"name": "/b", "site": {"name": "a"}})
    assert first != second
    assert natural_key("dcim.device", {"name": "leaf", "site": {"name": "dc1"}}) == '["dc1","leaf"]'


# --- the Faults value -------------------------------------------------------------------------


def test_default_faults_break_nothing() -> None:
    faults = Faults()
    assert all(entity_fault(faults, entity_id, 1) is None for entity_id in IDS[:1000])
    assert all(request_status(faults, number) is None for number in range(1, 1000))
    assert not is_poison(faults, '{"name": "poison"}')


@pytest.mark.parametrize("bad", [
    {"transient_rate": 1.5}, {"permanent_rate": -0.1}, {"status_code": 200}, {"capacity": 0},
    {"fail_first": -1}, {"poison_pattern": "("}, {"retry_after": -1}, {"unknown": 1},
])
def test_bad_faults_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        Faults(**bad)


def test_faults_are_frozen_and_round_trip_as_json() -> None:
    faults = Faults(transient_rate=0.1, poison_pattern="boom", seed=7)
    with pytest.raises(ValidationError):
        faults.seed = 8  # type: ignore[misc]
    assert Faults.model_validate_json(faults.model_dump_json()) == faults


# --- decisions --------------------------------------------------------------------------------


def test_draws_are_fixed_by_their_inputs() -> None:
    assert draw(1, "transient", "a", 1) == draw(1, "transient", "a", 1)
    assert draw(1, "transient", "a", 1) != draw(2, "transient", "a", 1)
    assert draw(1, "transient", "a", 1) != draw(1, "permanent", "a", 1)
    assert all(0.0 <= draw(0, "x", entity_id) < 1.0 for entity_id in IDS[:1000])


def test_decisions_are_the_same_on_every_call() -> None:
    faults = Faults(transient_rate=0.3, permanent_rate=0.2, seed=11)
    first = [entity_fault(faults, entity_id, 1) for entity_id in IDS]
    assert first == [entity_fault(faults, entity_id, 1) for entity_id in IDS]
    other_seed = [entity_fault(faults.model_copy(update={"seed": 12}), entity_id, 1) for entity_id in IDS]
    assert first != other_seed


@pytest.mark.parametrize("rate", [0.01, 0.1, 0.5])
def test_permanent_rate_is_roughly_right_and_stable_per_id(rate: float) -> None:
    faults = Faults(permanent_rate=rate, seed=3)
    failed = {entity_id for entity_id in IDS if entity_fault(faults, entity_id, 1) is not None}
    assert abs(len(failed) / len(IDS) - rate) < 0.02
    # A permanent failure stays permanent: the 5th receipt of an id fails as the 1st did.
    assert failed == {entity_id for entity_id in IDS if entity_fault(faults, entity_id, 5) is not None}
    steps = {fault.step for fault in (entity_fault(faults, entity_id, 1) for entity_id in failed) if fault}
    assert steps == {EntityFault.PLAN}


@pytest.mark.parametrize("rate", [0.05, 0.2, 0.7])
def test_transient_rate_is_roughly_right_and_redrawn_per_receipt(rate: float) -> None:
    faults = Faults(transient_rate=rate, seed=5)
    first = {entity_id for entity_id in IDS if entity_fault(faults, entity_id, 1) is not None}
    second = {entity_id for entity_id in IDS if entity_fault(faults, entity_id, 2) is not None}
    assert abs(len(first) / len(IDS) - rate) < 0.02
    # A retry gets a fresh draw: about rate² of the ids fail twice in a row, not all of them.
    assert abs(len(first & second) / len(IDS) - rate * rate) < 0.02
    steps = {fault.step for fault in (entity_fault(faults, entity_id, 1) for entity_id in first) if fault}
    assert steps == {EntityFault.APPLY}


def test_rates_of_zero_and_one_are_exact() -> None:
    assert all(entity_fault(Faults(permanent_rate=1.0), entity_id, 1) is not None for entity_id in IDS)
    assert all(entity_fault(Faults(transient_rate=1.0), entity_id, 3) is not None for entity_id in IDS)
    assert all(entity_fault(Faults(), entity_id, 1) is None for entity_id in IDS)


def test_fail_first_fails_the_first_receipts_then_succeeds() -> None:
    faults = Faults(fail_first=2)
    outcomes = [entity_fault(faults, IDS[0], receipt) for receipt in (1, 2, 3, 4)]
    assert [outcome.step if outcome else None for outcome in outcomes] == [
        EntityFault.APPLY, EntityFault.APPLY, None, None,
    ]
    assert outcomes[0] is not None and "receipt 1 of 2" in outcomes[0].message


def test_a_permanent_failure_wins_over_fail_first() -> None:
    outcome = entity_fault(Faults(permanent_rate=1.0, fail_first=3), IDS[0], 1)
    assert outcome is not None and outcome.step is EntityFault.PLAN


def test_request_status_outage_and_rate() -> None:
    assert request_status(Faults(outage=True), 1) == 503
    faults = Faults(status_rate=0.25, status_code=429, seed=9)
    answered = [request_status(faults, number) for number in range(1, 10_001)]
    assert set(answered) == {None, 429}
    assert abs(answered.count(429) / len(answered) - 0.25) < 0.02
    assert answered == [request_status(faults, number) for number in range(1, 10_001)]


def test_retry_after_only_on_429_and_503_when_set() -> None:
    assert retry_after(Faults(), 503) is None
    assert retry_after(Faults(retry_after=7), 503) == "7"
    assert retry_after(Faults(retry_after=7), 429) == "7"
    assert retry_after(Faults(retry_after=7), 500) is None


def test_poison_matches_the_entity_json() -> None:
    faults = Faults(poison_pattern=r'"name":"poison-\d+"')
    assert is_poison(faults, '{"name":"poison-12"}')
    assert not is_poison(faults, '{"name":"healthy"}')


def test_fault_args_are_the_options_of_streams_target() -> None:
    import typer
    from typer.main import get_command

    from streams.cli.target import target
    from streams.target.launch import fault_args

    app = typer.Typer()
    app.command()(target)
    faults = Faults(latency_ms=5, transient_rate=0.1, permanent_rate=0.2, fail_first=2, poison_pattern="-x|y",
                    status_rate=0.5, status_code=429, retry_after=2, outage=True, capacity=3, seed=9)
    params = get_command(app).make_context("target", fault_args(faults)).params
    assert Faults(**{name: params[name] for name in Faults.model_fields}) == faults
    assert fault_args(Faults()) == []
