"""The whole topology into a real NetBox with the diode plugin: real Kafka, Postgres, workers,
OAuth2 tokens from the dev OAuth2 server; what was applied is read back through NetBox's own
REST API, never from our tables."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from streams.client.generate import generate_entities
from streams.client.producer import IngestProducer
from streams.db.migrate import migrate
from streams.dev.netbox import NetBoxState
from streams.dev.workers import start_worker, stop_worker
from streams.models import RunCompleted
from streams.pipeline.outcomes import State
from streams.settings import Settings
from tests.conftest import TEMPLATE_DB, Services
from tests.helpers import rows, state_counts, wait_for

pytestmark = [pytest.mark.netbox, pytest.mark.timeout(900)]

HTTP = httpx.Timeout(60.0, connect=5.0)


@pytest.fixture
def to_netbox(topics: Settings, netbox: NetBoxState) -> Settings:
    """The test's topology settings, aimed at NetBox through OAuth2 client credentials."""
    return topics.model_copy(update={
        "target_url": netbox.target_url, "target_token_url": netbox.token_url,
        "target_client_id": netbox.client_id, "target_client_secret": SecretStr(netbox.client_secret),
    })


@pytest.fixture
def worker(to_netbox: Settings, tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_worker(process)


def _start(settings: Settings, started: list[subprocess.Popen[bytes]], log: Path) -> subprocess.Popen[bytes]:
    process = start_worker(settings, log_path=log)
    started.append(process)
    return process


def _netbox(netbox: NetBoxState, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every object of a NetBox REST list, following its pages."""
    found: list[dict[str, Any]] = []
    url: str | None = f"{netbox.url}{path}"
    query: dict[str, Any] | None = {"limit": 1000, **params}
    with httpx.Client(headers={"Authorization": f"Bearer {netbox.api_token}"}, timeout=HTTP) as client:
        while url:
            response = client.get(url, params=query)
            response.raise_for_status()
            body = response.json()
            found += body["results"]
            url, query = body["next"], None
    return found


def _objects(items: list[dict[str, Any]]) -> dict[str, set[Any]]:
    """What the generated items describe, by object type and natural key."""
    wanted: dict[str, set[Any]] = {"site": set(), "device": set(), "interface": set(), "ip": set()}
    for item in items:
        [data] = item["entity"].values()
        kind = item["object_type"]
        if kind == "dcim.site":
            wanted["site"].add(data["name"])
        elif kind == "dcim.device":
            wanted["device"].add((data["site"]["name"], data["name"]))
        elif kind == "dcim.interface":
            wanted["interface"].add((data["device"]["name"], data["name"]))
        else:
            wanted["ip"].add(data["address"])
    return wanted


def _in_netbox(netbox: NetBoxState, namespace: str) -> dict[str, set[Any]]:
    prefix = f"{namespace}-"
    devices = _netbox(netbox, "/api/dcim/devices/", name__isw=prefix)
    names = {d["name"] for d in devices}
    interfaces = _netbox(netbox, "/api/dcim/interfaces/", device=sorted(names)) if names else []
    addresses = _netbox(netbox, "/api/ipam/ip-addresses/", device=sorted(names)) if names else []
    return {
        "site": {s["name"] for s in _netbox(netbox, "/api/dcim/sites/", slug__isw=prefix)},
        "device": {(d["site"]["name"], d["name"]) for d in devices},
        "interface": {(i["device"]["name"], i["name"]) for i in interfaces},
        "ip": {a["address"] for a in addresses},
    }


def _send(settings: Settings, run_id: str, items: list[dict[str, Any]], batch_size: int = 40) -> None:
    with IngestProducer(settings) as producer:
        producer.send_run(run_id, items, batch_size=batch_size)


def _completed(settings: Settings, run_id: str, worker: subprocess.Popen[bytes]) -> RunCompleted:
    with IngestProducer(settings) as producer:
        wait_for(lambda: worker.poll() is None, timeout=1, what="the worker alive")
        return producer.wait_for_completion(run_id, timeout=600)


def _items(namespace: str, count: int, first_host: int) -> list[dict[str, Any]]:
    # IP addresses without an interface are left out: NetBox lists those under no device.
    return [item for item in generate_entities(count, seed=11, duplicate_ratio=0.05, namespace=namespace,
                                               first_host=first_host)
            if item["object_type"] != "ipam.ipaddress" or "assigned_object_interface" in item["entity"]["ip_address"]]


def _fresh_database(services: Services) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    base = services.database_url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE_DB)))
    url = f"{base}/{name}"
    migrate(url)
    return url


def test_generated_objects_all_reach_netbox_and_a_resend_changes_nothing(
        to_netbox: Settings, netbox: NetBoxState, services: Services, worker: list[subprocess.Popen[bytes]],
        tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:6]}"
    items = _items(namespace, 320, first_host=int(uuid.uuid4().int % 10_000_000))
    process = _start(to_netbox, worker, tmp_path / "worker.log")
    _send(to_netbox, "nb-run", items)
    completed = _completed(to_netbox, "nb-run", process)

    accepted = completed.entities.accepted - completed.entities.duplicates
    assert (completed.status, completed.batches.failed, completed.entities.errored) == ("succeeded", 0, 0)
    assert completed.entities.accepted == len(items) and completed.batches.total == -(-len(items) // 40)
    assert completed.entities.applied + completed.entities.no_changes == accepted
    assert completed.entities.applied > 0.8 * accepted  # fresh objects: created, not found
    counts = state_counts(to_netbox, "nb-run")
    assert set(counts) <= {State.APPLIED, State.NO_CHANGES} and sum(counts.values()) == accepted

    wanted = _objects(items)
    assert _in_netbox(netbox, namespace) == wanted  # each object once, nothing missing, nothing extra
    partitions = {p for (p,) in rows(to_netbox, "SELECT DISTINCT source_partition FROM ingestion_logs")}
    assert len(partitions) == 2

    # The same data again, from a streams that has forgotten it (a fresh database): NetBox
    # matches every entity by natural key and changes nothing.
    again = to_netbox.model_copy(update={"database_url": SecretStr(_fresh_database(services))})
    stop_worker(process)
    process = _start(again, worker, tmp_path / "worker-again.log")
    _send(again, "nb-resend", items)
    resent = _completed(again, "nb-resend", process)
    assert resent.entities.no_changes == accepted and resent.entities.applied == 0
    assert _in_netbox(netbox, namespace) == wanted


def test_entities_netbox_finds_invalid_end_errored_after_one_attempt(
        to_netbox: Settings, netbox: NetBoxState, worker: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    namespace = f"t{uuid.uuid4().hex[:6]}"
    good = [{"object_type": "dcim.site", "entity": {"site": {"name": f"{namespace} ok {n}", "slug": f"{namespace}-ok-{n}"}}}
            for n in range(4)]
    bad = [
        # refused by the plugin's validation: a field too long, a value not among the choices
        {"object_type": "dcim.site", "entity": {"site": {"name": f"{namespace} long", "description": "x" * 300}}},
        {"object_type": "dcim.site", "entity": {"site": {"name": f"{namespace} bogus", "status": "bogus"}}},
    ]
    process = _start(to_netbox, worker, tmp_path / "worker.log")
    _send(to_netbox, "nb-invalid", good[:2] + bad + good[2:], batch_size=10)
    completed = _completed(to_netbox, "nb-invalid", process)
    assert (completed.status, completed.entities.errored, completed.entities.applied) == ("failed", 2, 4)
    errored = rows(to_netbox, "SELECT attempts, last_error FROM ingestion_logs WHERE state = 7 ORDER BY last_error->>'message'")
    assert [attempts for attempts, _ in errored] == [1, 1]
    messages = sorted(error["message"] for _, error in errored)
    assert "dcim.site.description: Ensure this value has at most 200 characters" in messages[0], messages
    assert "dcim.site.status: " in messages[1] and "not a valid choice" in messages[1], messages
    assert all(error["class"] == "permanent" for _, error in errored)
    assert {s["name"] for s in _netbox(netbox, "/api/dcim/sites/", slug__isw=f"{namespace}-")} == \
        {f"{namespace} ok {n}" for n in range(4)}


def test_a_token_that_expires_mid_run_costs_no_entity(
        to_netbox: Settings, netbox: NetBoxState, worker: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    config = f"{netbox.oauth_url}/_admin/config"
    before = httpx.get(config, timeout=HTTP).json()["token_lifetime"]
    issued = httpx.get(f"{netbox.oauth_url}/_admin/stats", timeout=HTTP).json()["tokens_issued"]
    httpx.put(config, json={"token_lifetime": 3}, timeout=HTTP).raise_for_status()
    try:
        namespace = f"t{uuid.uuid4().hex[:6]}"
        items = _items(namespace, 200, first_host=int(uuid.uuid4().int % 10_000_000))
        # One entity per request: many short calls spread over several token lifetimes.
        settings = to_netbox.model_copy(update={"batch_size": 5})
        process = _start(settings, worker, tmp_path / "worker.log")
        _send(settings, "nb-tokens", items, batch_size=20)
        completed = _completed(settings, "nb-tokens", process)
    finally:
        httpx.put(config, json={"token_lifetime": before}, timeout=HTTP)
    assert (completed.status, completed.entities.errored) == ("succeeded", 0)
    assert _in_netbox(netbox, namespace) == _objects(items)
    fetched = httpx.get(f"{netbox.oauth_url}/_admin/stats", timeout=HTTP).json()["tokens_issued"] - issued
    assert fetched >= 3  # the run outlived several tokens
    retried = rows(settings, "SELECT count(*) FROM ingestion_logs WHERE attempts > 1")[0][0]
    assert retried == 0  # not one entity paid an attempt for an expired token
