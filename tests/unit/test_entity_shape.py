"""The diode entity shape: flat entities are wrapped, both key spellings are one entity."""

from __future__ import annotations

import pytest

from streams.models import EntityIn
from streams.pipeline.entity_shape import EntityShapeError, entity_data, is_wrapped, to_diode_shape
from streams.pipeline.hashing import entity_hash
from streams.pipeline.netbox_types import ENTITY_KEYS, lower_camel


def test_a_flat_entity_is_wrapped_under_its_types_key() -> None:
    assert to_diode_shape("dcim.site", {"name": "dc1", "slug": "dc1"}) == {"site": {"name": "dc1", "slug": "dc1"}}
    assert to_diode_shape("ipam.ipaddress", {"address": "10.0.0.1/8"}) == {"ip_address": {"address": "10.0.0.1/8"}}


def test_a_wrapped_entity_is_kept_and_a_lower_camel_key_becomes_snake_case() -> None:
    wrapped = {"device": {"name": "leaf-01"}}
    assert to_diode_shape("dcim.device", wrapped) is wrapped
    assert to_diode_shape("ipam.ipaddress", {"ipAddress": {"address": "a"}}) == {"ip_address": {"address": "a"}}
    assert to_diode_shape("dcim.devicerole", {"deviceRole": {"name": "r"}}) == {"device_role": {"name": "r"}}


def test_an_unknown_type_is_accepted_wrapped_and_refused_flat() -> None:
    assert to_diode_shape("acme.widget", {"widget": {"name": "w"}}) == {"widget": {"name": "w"}}
    with pytest.raises(EntityShapeError, match=r"acme\.widget"):
        to_diode_shape("acme.widget", {"name": "w"})


@pytest.mark.parametrize(("entity", "wrapped"), [
    ({"site": {"name": "dc1"}}, True),
    ({"site": {}}, True),
    ({"name": "dc1"}, False),  # one key, but not an object under it
    ({"site": {"name": "dc1"}, "slug": "dc1"}, False),
    ({}, False),
])
def test_what_counts_as_the_diode_shape(entity: dict[str, object], wrapped: bool) -> None:
    assert is_wrapped(entity) is wrapped


def test_a_flat_entity_and_its_wrapped_twin_hash_alike() -> None:
    flat = EntityIn(object_type="dcim.site", entity={"name": "dc1", "slug": "dc1"})
    wrapped = EntityIn(object_type="dcim.site", entity={"site": {"slug": "dc1", "name": "dc1"}})
    camel = EntityIn(object_type="ipam.ipaddress", entity={"ipAddress": {"address": "10.0.0.1/8"}})
    snake = EntityIn(object_type="ipam.ipaddress", entity={"address": "10.0.0.1/8"})
    assert flat.entity == wrapped.entity
    assert entity_hash(flat.object_type, flat.entity) == entity_hash(wrapped.object_type, wrapped.entity)
    assert entity_hash(camel.object_type, camel.entity) == entity_hash(snake.object_type, snake.entity)


def test_entity_data_reads_either_spelling_as_the_plugin_does() -> None:
    assert entity_data("ipam.ipaddress", {"ipAddress": {"address": "a"}}) == {"address": "a"}
    assert entity_data("ipam.ipaddress", {"ip_address": {"address": "a"}}) == {"address": "a"}
    assert entity_data("dcim.site", {"device": {"name": "x"}}) is None
    assert entity_data("dcim.site", {"site": {}}) is None
    assert entity_data("acme.widget", {"widget": {"name": "w"}}) == {"name": "w"}


def test_lower_camel_matches_the_plugins_spelling() -> None:
    assert lower_camel("ip_address") == "ipAddress"
    assert lower_camel("ip_sec_policy") == "ipSecPolicy"
    assert lower_camel("site") == "site"
    assert lower_camel("l2vpn_termination") == "l2vpnTermination"


def test_every_known_type_has_a_snake_case_key() -> None:
    assert len(ENTITY_KEYS) > 100
    for object_type, key in ENTITY_KEYS.items():
        assert key == key.lower() and " " not in key, object_type
