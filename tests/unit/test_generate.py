"""The entity generator is deterministic, realistic enough, and keeps natural keys apart."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.client.generate import generate_entities, read_jsonl
from streams.models import EntityIn


def _data(item: dict[str, Any]) -> dict[str, Any]:
    """The object under the entity key (the items are in the diode shape)."""
    [data] = item["entity"].values()
    return data  # type: ignore[no-any-return]


def _natural_key(item: dict[str, Any]) -> tuple[str, ...]:
    """What a target identifies an object by (the generator's module docstring)."""
    kind, entity = item["object_type"], _data(item)
    if kind == "dcim.site":
        return kind, entity["name"]
    if kind == "dcim.device":
        return kind, entity["site"]["name"], entity["name"]
    if kind == "dcim.interface":
        return kind, entity["device"]["site"]["name"], entity["device"]["name"], entity["name"]
    assert kind == "ipam.ipaddress", kind
    return kind, entity["address"]


def _content(item: dict[str, Any]) -> bytes:
    """The item as the dedup hash sees it: `metadata` removed (the generator puts it in the data)."""
    (key, data), = item["entity"].items()
    data = {name: value for name, value in data.items() if name != "metadata"}
    return orjson.dumps({"object_type": item["object_type"], "entity": {key: data}}, option=orjson.OPT_SORT_KEYS)


def test_same_seed_same_items_and_another_seed_other_items() -> None:
    first = list(generate_entities(2000, seed=7))
    assert first == list(generate_entities(2000, seed=7))
    assert first != list(generate_entities(2000, seed=8))


@pytest.mark.parametrize("count", [0, 1, 2, 999, 5000])
def test_yields_the_requested_count(count: int) -> None:
    assert sum(1 for _ in generate_entities(count)) == count


def test_every_item_is_a_valid_entity_with_its_natural_key() -> None:
    items = list(generate_entities(5000, seed=3))
    for item in items:
        # Already in the diode shape: the model (which wraps flat entities) keeps it as it is.
        assert EntityIn.model_validate(item).entity == item["entity"]
        assert all(_natural_key(item)), item
    kinds = Counter(item["object_type"] for item in items)
    assert set(kinds) == {"dcim.site", "dcim.device", "dcim.interface", "ipam.ipaddress"}
    # About 10 devices a site, 4 interfaces a device, an IP address for most interfaces.
    assert 6 <= kinds["dcim.device"] / kinds["dcim.site"] <= 14
    assert 3 <= kinds["dcim.interface"] / kinds["dcim.device"] <= 5
    assert 0.7 <= kinds["ipam.ipaddress"] / kinds["dcim.interface"] <= 1.1
    assert all(_data(item)["address"].startswith("10.") for item in items
               if item["object_type"] == "ipam.ipaddress")


def test_references_carry_what_creating_the_referenced_object_needs() -> None:
    for item in generate_entities(3000, seed=4):
        data = _data(item)
        if item["object_type"] == "dcim.interface":
            device = data["device"]
        elif item["object_type"] == "ipam.ipaddress" and "assigned_object_interface" in data:
            assert data["assigned_object_interface"]["type"]
            device = data["assigned_object_interface"]["device"]
        else:
            continue
        assert device["site"]["name"] and device["role"]["name"]
        assert device["device_type"]["model"] and device["device_type"]["manufacturer"]["name"]


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.35])
def test_duplicates_are_the_requested_share(ratio: float) -> None:
    count = 4000
    seen: set[bytes] = set()
    repeats = 0
    for item in generate_entities(count, seed=11, duplicate_ratio=ratio):
        content = _content(item)
        repeats += content in seen
        seen.add(content)
    assert repeats == round(count * ratio)


def test_distinct_objects_have_distinct_natural_keys() -> None:
    by_key: dict[tuple[str, ...], bytes] = {}
    for item in generate_entities(20_000, seed=5, duplicate_ratio=0.2):
        content = by_key.setdefault(_natural_key(item), _content(item))
        assert content == _content(item), f"two objects share the key {_natural_key(item)}"


def test_some_items_carry_metadata_that_varies_between_repeats() -> None:
    items = list(generate_entities(5000, seed=2, duplicate_ratio=0.3))
    with_metadata = [item for item in items if "metadata" in _data(item)]
    assert 0.1 <= len(with_metadata) / len(items) <= 0.3
    stamps: dict[bytes, set[str]] = {}
    for item in with_metadata:
        stamps.setdefault(_content(item), set()).add(_data(item)["metadata"]["collected_at"])
    assert any(len(times) > 1 for times in stamps.values()), "no repeat with a different timestamp"


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate_ratio"):
        next(generate_entities(10, duplicate_ratio=1.0))
    with pytest.raises(ValueError, match="count"):
        next(generate_entities(-1))


def test_read_jsonl_reads_items_and_skips_blank_lines(tmp_path: Path) -> None:
    items = list(generate_entities(50, seed=1))
    path = tmp_path / "entities.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(item) for item in items[:25]) + b"\n\n"
                     + b"\n".join(orjson.dumps(item) for item in items[25:]) + b"\n")
    assert list(read_jsonl(path)) == items


@pytest.mark.parametrize("bad_line, problem", [
    (b'{"object_type": "dcim.site", "entity": ', "not valid JSON"),
    (b'["dcim.site", {}]', "valid dictionary"),
    (b'{"object_type": "Site", "entity": {}}', "object_type"),
    (b'{"object_type": "dcim.site", "entity": {}, "extra": 1}', "extra"),
    (b'{"object_type": "dcim.site"}', "entity"),
])
def test_read_jsonl_names_the_file_and_line_of_a_bad_line(
        tmp_path: Path, bad_line: bytes, problem: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = b'{"object_type": "dcim.site", "entity": {"name": "a", "slug": "a"}}'
    path.write_bytes(good + b"\n" + good + b"\n" + bad_line + b"\n" + good + b"\n")
    reader = read_jsonl(path)
    assert len([next(reader), next(reader)]) == 2
    with pytest.raises(ValueError, match=f"bad.jsonl, line 3: .*{problem}") as caught:
        next(reader)
    assert "line 3" in str(caught.value)


def test_namespaces_and_host_ranges_give_disjoint_objects() -> None:
    first = {_natural_key(item) for item in generate_entities(3000, seed=1, duplicate_ratio=0)}
    second = {_natural_key(item) for item in generate_entities(3000, seed=1, duplicate_ratio=0, namespace="b2",
                                                                first_host=100_000)}
    assert first.isdisjoint(second)
    site = next(generate_entities(1, namespace="b2"))
    assert _data(site)["slug"].startswith("b2-") and _data(site)["name"].startswith("B2 ")
    with pytest.raises(ValueError, match="namespace"):
        next(generate_entities(1, namespace="Not OK"))
