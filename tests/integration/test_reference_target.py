"""The reference target as a client sees it: a real server process, a real socket, real Postgres."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from streams.models import BulkResponse
from streams.pipeline.netbox_types import ENTITY_KEYS
from streams.target.faults import Faults
from streams.target.launch import TargetProcess, start_target

pytestmark = pytest.mark.integration

Start = Callable[..., TargetProcess]


@pytest.fixture
def start(database_url: str, tmp_path: Path) -> Iterator[Start]:
    """Start a target on the test's database; every target started is stopped at the end."""
    started: list[TargetProcess] = []

    def run(faults: Faults | None = None, token: str | None = None) -> TargetProcess:
        target = start_target(database_url, faults=faults, token=token, log_path=tmp_path / "target.log")
        started.append(target)
        return target

    yield run
    for target in started:
        target.stop()


def entity(object_type: str = "dcim.site", entity_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A bulk entry in the diode shape: the fields under the object type's entity key."""
    body = fields or {"name": "DC 1", "slug": "dc1"}
    return {"id": entity_id or str(uuid.uuid4()), "object_type": object_type,
            "entity": {ENTITY_KEYS[object_type]: body}}


def post(target: TargetProcess, entities: list[dict[str, Any]], **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{target.url}/bulk-plan-apply/", json={"entities": entities}, timeout=30, **kwargs)


def changes(response: httpx.Response) -> list[dict[str, Any]]:
    """The one change of each result, in request order (after checking the body's shape)."""
    BulkResponse.model_validate_json(response.content)
    return [result["change_set"]["changes"][0] for result in response.json()["results"]]


def count(database_url: str, table: str) -> int:
    with psycopg.connect(database_url) as conn:
        # `table` is one of two fixed names from this file, never input.
        row = conn.execute(f"SELECT count(*) FROM streams_target.{table}").fetchone()  # noqa: S608
    assert row is not None
    return int(row[0])


def test_create_then_noop_then_update(start: Start, database_url: str) -> None:
    target = start()
    created = post(target, [entity(name="DC 1", slug="dc1")])
    assert created.status_code == 200
    [change] = changes(created)
    assert change["change_type"] == "create" and change["object_type"] == "dcim.site"
    assert isinstance(change["object_id"], int) and change["before"] is None
    assert change["data"] == {"name": "DC 1", "slug": "dc1"}
    assert created.json()["results"][0]["errors"] is None

    again = post(target, [entity(name="DC 1", slug="dc1")])  # same entity, new id
    assert again.status_code == 200
    [noop] = changes(again)
    assert noop["change_type"] == "noop" and noop["object_id"] == change["object_id"]

    renamed = post(target, [entity(name="DC 1", slug="dc-one")])
    assert renamed.status_code == 200
    [update] = changes(renamed)
    assert update["change_type"] == "update" and update["object_id"] == change["object_id"]
    assert update["before"] == {"name": "DC 1", "slug": "dc1"}
    assert update["data"] == {"name": "DC 1", "slug": "dc-one"}
    assert count(database_url, "objects") == 1 and count(database_url, "results") == 3


def test_same_id_twice_answers_the_stored_change_set_and_applies_once(start: Start,
                                                                       database_url: str) -> None:
    target = start()
    sent = entity(name="DC 1", slug="dc1")
    first = post(target, [sent])
    second = post(target, [sent])
    assert first.status_code == second.status_code == 200
    assert second.json()["results"][0]["change_set"] == first.json()["results"][0]["change_set"]
    assert changes(second)[0]["change_type"] == "create"  # the first answer, not a noop
    stats = target.stats()
    assert stats["received"] == 2 and stats["receipts_by_id_max"] == 2
    assert stats["applied"] == 1 and stats["duplicate_applies"] == 0
    assert stats["requests"] == {"200": 2}
    assert count(database_url, "results") == 1


def test_same_id_sent_concurrently_is_applied_once(start: Start, database_url: str) -> None:
    target = start()
    sent = entity(name="DC 1", slug="dc1")
    responses: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def send() -> None:
        barrier.wait()
        responses.append(post(target, [sent]))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [response.status_code for response in responses] == [200] * 6
    change_set_ids = {response.json()["results"][0]["change_set"]["id"] for response in responses}
    assert len(change_set_ids) == 1
    stats = target.stats()
    assert stats["applied"] == 1 and stats["duplicate_applies"] == 0 and stats["receipts_by_id_max"] == 6
    assert count(database_url, "objects") == 1


def test_one_natural_key_twice_in_a_request_applies_in_order(start: Start) -> None:
    target = start()
    sent = [entity(name="dc1", slug="a"), entity(name="dc1", slug="b"), entity(name="dc1", slug="b")]
    response = post(target, sent)
    assert response.status_code == 200
    create, update, noop = changes(response)
    assert (create["change_type"], update["change_type"], noop["change_type"]) == ("create", "update", "noop")
    assert update["before"] == {"name": "dc1", "slug": "a"}
    assert create["object_id"] == update["object_id"] == noop["object_id"] is not None


def test_both_spellings_of_the_entity_key_are_read(start: Start) -> None:
    target = start()
    snake = {"id": str(uuid.uuid4()), "object_type": "ipam.ipaddress", "entity": {"ip_address": {"address": "10.0.0.1/24"}}}
    camel = {"id": str(uuid.uuid4()), "object_type": "ipam.ipaddress", "entity": {"ipAddress": {"address": "10.0.0.1/24"}}}
    response = post(target, [snake, camel])
    assert response.status_code == 200
    assert [c["change_type"] for c in changes(response)] == ["create", "noop"]


def test_entities_the_plugin_cannot_read_get_its_plan_errors(start: Start) -> None:
    target = start()
    flat = {"id": str(uuid.uuid4()), "object_type": "dcim.site", "entity": {"name": "DC 1", "slug": "dc1"}}
    unknown = {"id": str(uuid.uuid4()), "object_type": "acme.widget", "entity": {"widget": {"name": "w"}}}
    response = post(target, [flat, unknown, entity(name="DC 2")])
    assert response.status_code == 207
    flat_result, unknown_result, good = response.json()["results"]
    assert flat_result["change_set"] is None
    assert flat_result["errors"]["plan"] == {"entity": {"site": ["No data found in expected entity key, got: ['name', 'slug']"]}}
    assert unknown_result["errors"]["plan"] == {"request": {"object_type": ["acme.widget is not supported in this version."]}}
    assert good["errors"] is None


def test_a_missing_natural_key_is_a_plan_error(start: Start) -> None:
    target = start()
    response = post(target, [entity("dcim.device", name="leaf-01"), entity(name="DC 1", slug="dc1")])
    assert response.status_code == 207
    bad, good = response.json()["results"]
    assert bad["change_set"] is None
    assert bad["errors"] == {"plan": {"dcim.device": {"site.name": ["missing natural key field site.name"]}},
                             "apply": None}
    assert good["errors"] is None and good["change_set"]["changes"][0]["change_type"] == "create"


def test_permanent_rate_one_gives_plan_errors_and_writes_nothing(start: Start, database_url: str) -> None:
    target = start(Faults(permanent_rate=1.0))
    response = post(target, [entity(name=f"site {n}", slug=f"s{n}") for n in range(5)])
    assert response.status_code == 207
    body = BulkResponse.model_validate_json(response.content)
    for result in body.results:
        assert result.change_set is None
        assert result.errors and result.errors.plan
        assert result.errors.plan.model_dump(exclude_none=True) == {"dcim.site": {"__all__": ["injected permanent failure"]}}
    assert count(database_url, "objects") == 0 and target.stats()["applied"] == 0


def test_fail_first_two_fails_twice_with_the_plugins_contention_error_then_succeeds(start: Start) -> None:
    target = start(Faults(fail_first=2))
    sent = entity(name="DC 1", slug="dc1")
    for _ in range(2):
        failed = post(target, [sent])
        assert failed.status_code == 207
        result = failed.json()["results"][0]
        assert result["errors"] == {"plan": None, "apply": {"__all__": ["db_deadlock_after_retries"]}}
        assert result["change_set"]["changes"][0]["change_type"] == "create"  # what was planned
        assert target.stats()["applied"] == 0
    succeeded = post(target, [sent])
    assert succeeded.status_code == 200 and changes(succeeded)[0]["change_type"] == "create"
    stats = target.stats()
    assert stats["applied"] == 1 and stats["receipts_by_id_max"] == 3
    assert stats["requests"] == {"200": 1, "207": 2}


def test_a_poison_entity_breaks_the_request_after_the_entities_before_it(start: Start, database_url: str) -> None:
    target = start(Faults(poison_pattern="poison"))
    response = post(target, [entity(name="DC 1", slug="dc1"), entity(name="poison pill", slug="p"),
                             entity(name="DC 3", slug="dc3")])
    assert response.status_code == 500
    assert response.json() == {"errors": {"request": {"__all__": ["internal error"]}}}
    assert count(database_url, "objects") == 1  # as NetBox: the entries before it are committed
    assert post(target, [entity(name="DC 3", slug="dc3")]).status_code == 200


def test_a_poison_with_a_4xx_status_refuses_the_request_and_writes_nothing(start: Start, database_url: str) -> None:
    target = start(Faults(poison_pattern="poison", poison_status=422))
    response = post(target, [entity(name="DC 1", slug="dc1"), entity(name="poison pill", slug="p")])
    assert response.status_code == 422 and "poison" in response.json()["message"]
    assert count(database_url, "objects") == 0 and count(database_url, "results") == 0


def test_db_down_answers_internal_errors_for_every_entity(start: Start, database_url: str) -> None:
    target = start(Faults(db_down=True))
    response = post(target, [entity(name="DC 1"), entity(name="DC 2")])
    assert response.status_code == 207
    assert [r["errors"] for r in response.json()["results"]] == [
        {"plan": {"request": {"__all__": ["internal error"]}}, "apply": None}] * 2
    assert count(database_url, "objects") == 0


def test_outage_answers_503_until_the_faults_are_fixed(start: Start, database_url: str) -> None:
    target = start(Faults(outage=True))
    assert post(target, [entity()]).status_code == 503
    assert count(database_url, "objects") == 0
    assert target.set_faults(Faults()) == Faults()
    assert post(target, [entity()]).status_code == 200
    assert target.stats()["requests"] == {"200": 1, "503": 1}


def test_injected_429_carries_retry_after(start: Start) -> None:
    target = start(Faults(status_rate=1.0, status_code=429, retry_after=7))
    response = post(target, [entity()])
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert target.faults().status_code == 429


def test_over_capacity_answers_503_with_retry_after(start: Start) -> None:
    target = start(Faults(capacity=1, latency_ms=3000))
    held = threading.Thread(target=post, args=(target, [entity()]))
    held.start()
    try:
        # Wait on the condition, not a fixed sleep: the first request holds the only slot.
        for _ in range(200):
            if target.stats()["in_flight"] == 1:
                break
            threading.Event().wait(0.01)
        response = post(target, [entity()])
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
    finally:
        held.join()


def test_bearer_token_is_enforced_and_never_logged(start: Start, tmp_path: Path) -> None:
    token = "s3cret-" + uuid.uuid4().hex
    target = start(token=token)
    # As the plugin: 403 for every credential problem, never 401.
    assert post(target, [entity()]).status_code == 403
    assert post(target, [entity()], headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert post(target, [entity()], headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(f"{target.url}/_admin/stats").status_code == 403
    assert target.stats()["requests"] == {"200": 1, "403": 2}  # the helper sends the token
    assert token not in (tmp_path / "target.log").read_text()


@pytest.mark.parametrize(("content", "reason"), [
    (b"not json", "json"),
    (b"{}", "entities"),
    (b'{"entities": []}', "entities"),
    (b'{"entities": [{"id": "x", "object_type": "dcim.site", "entity": {}}]}', "not a UUID"),
    (b'{"entities": [{"object_type": "dcim.site", "entity": {}}]}', "id"),
    (b'{"entities": [{"id": "0b6f3c52-7d1e-4f0a-9c3b-5a2e8d41f7a0", "object_type": "dcim.site",'
     b' "entity": 1}]}', "entity"),
    (b'{"entities": [], "extra": 1}', "extra"),
])
def test_a_bad_envelope_is_400(start: Start, content: bytes, reason: str) -> None:
    target = start()
    response = httpx.post(f"{target.url}/bulk-plan-apply/", content=content, timeout=30)
    assert response.status_code == 400
    assert reason.lower() in response.json()["message"].lower()


def test_duplicate_ids_in_one_request_are_400(start: Start, database_url: str) -> None:
    target = start()
    entity_id = str(uuid.uuid4())
    same_id_in_capitals = entity(entity_id=entity_id.upper(), name="x", slug="y")
    response = post(target, [entity(entity_id=entity_id), same_id_in_capitals])
    assert response.status_code == 400 and "more than once" in response.json()["message"]
    assert count(database_url, "objects") == 0


def test_a_thousand_entities_in_one_request(start: Start, database_url: str) -> None:
    target = start()
    devices = [{"name": f"leaf-{n}", "site": {"name": "dc1"}} for n in range(10)]
    sent = [entity("dcim.interface", name=f"eth{n}", device=devices[n % 10]) for n in range(1000)]
    response = post(target, sent)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [result["id"] for result in results] == [item["id"] for item in sent]
    assert {change["change_type"] for change in changes(response)} == {"create"}
    assert len({change["object_id"] for change in changes(response)}) == 1000
    assert count(database_url, "objects") == 1000 and target.stats()["applied"] == 1000


def test_health_and_reset(start: Start) -> None:
    target = start()
    assert httpx.get(f"{target.url}/health").json() == {"status": "ok"}
    post(target, [entity()])
    target.reset()
    stats = target.stats()
    assert stats["requests"] == {} and stats["received"] == 0 and stats["applied"] == 1  # data stays


def test_a_value_postgres_refuses_rejects_the_request(start: Start, database_url: str) -> None:
    target = start()
    response = post(target, [entity(name="nul \u0000 byte", slug="dc1"), entity(name="DC 2", slug="dc2")])
    assert response.status_code == 500  # as a plugin exception: the client isolates the entity
    assert count(database_url, "objects") == 0
