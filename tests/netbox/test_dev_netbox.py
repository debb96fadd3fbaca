"""`streams dev netbox` against itself: a token from the dev OAuth2 server lets a client apply
entities through the diode plugin's bulk-plan-apply, NetBox's REST API shows the result, and
every bad or expired token is refused with 403 once NetBox's cached introspection runs out."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from streams.dev import netbox as dev_netbox
from streams.dev.netbox import NetBoxState
from tests.conftest import Services

# The first session on a machine builds the NetBox cache inside the first test's setup (minutes).
pytestmark = [pytest.mark.netbox, pytest.mark.timeout(1200)]

TIMEOUT = httpx.Timeout(60.0, connect=5.0)


def _token(netbox: NetBoxState, scope: str | None = None) -> str:
    response = httpx.post(netbox.token_url, timeout=TIMEOUT, data={
        "grant_type": "client_credentials", "client_id": netbox.client_id,
        "client_secret": netbox.client_secret, "scope": scope or netbox.scope,
    })
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def _apply(netbox: NetBoxState, token: str | None, entities: list[dict[str, object]]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(f"{netbox.target_url}/bulk-plan-apply/", json={"entities": entities}, headers=headers,
                      timeout=TIMEOUT)


def _site(slug: str) -> dict[str, object]:
    return {"id": f"id-{slug}", "object_type": "dcim.site", "entity": {"site": {"name": slug, "slug": slug}}}


def _wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(0.25)


@pytest.fixture
def short_tokens(netbox: NetBoxState) -> Iterator[int]:
    """Tokens issued while this runs live 2 s; the default lifetime comes back afterwards."""
    before = httpx.get(f"{netbox.oauth_url}/_admin/config", timeout=TIMEOUT).json()["token_lifetime"]
    config = f"{netbox.oauth_url}/_admin/config"
    httpx.put(config, json={"token_lifetime": 2}, timeout=TIMEOUT).raise_for_status()
    try:
        yield 2
    finally:
        httpx.put(config, json={"token_lifetime": before}, timeout=TIMEOUT)


def test_bulk_plan_apply_creates_a_site_visible_in_the_rest_api(netbox: NetBoxState) -> None:
    response = _apply(netbox, _token(netbox), [_site("t-dc1")])
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    assert result["id"] == "id-t-dc1"
    assert result["errors"] is None
    [change] = result["change_set"]["changes"]
    assert change["change_type"] == "create"
    assert change["object_type"] == "dcim.site"

    sites = httpx.get(f"{netbox.url}/api/dcim/sites/", params={"slug": "t-dc1"}, headers=netbox.api_headers(),
                      timeout=TIMEOUT)
    assert sites.status_code == 200, sites.text
    assert [site["name"] for site in sites.json()["results"]] == ["t-dc1"]

    again = _apply(netbox, _token(netbox), [_site("t-dc1")])
    assert again.status_code == 200
    assert again.json()["results"][0]["change_set"]["changes"] == []  # matched by natural key: nothing to do


def test_the_api_token_reads_and_a_wrong_one_is_refused(netbox: NetBoxState) -> None:
    status = httpx.get(f"{netbox.url}/api/status/", headers=netbox.api_headers(), timeout=TIMEOUT)
    assert status.status_code == 200
    assert status.json()["netbox-version"].startswith(netbox.versions["netbox"])
    assert "netbox_diode_plugin" in status.json()["plugins"]
    wrong = netbox.api_token[:-4] + "zzzz"
    refused = httpx.get(f"{netbox.url}/api/dcim/sites/", headers={"Authorization": f"Bearer {wrong}"},
                        timeout=TIMEOUT)
    assert refused.status_code == 403


def test_missing_wrong_and_read_only_tokens_get_403(netbox: NetBoxState) -> None:
    slug = f"t-refused-{uuid.uuid4().hex[:6]}"
    assert _apply(netbox, None, [_site(slug)]).status_code == 403
    assert _apply(netbox, "not-a-token", [_site(slug)]).status_code == 403
    # NetBox's own API token is not a diode token.
    assert _apply(netbox, netbox.api_token, [_site(slug)]).status_code == 403
    assert _apply(netbox, _token(netbox, scope="netbox:read"), [_site(slug)]).status_code == 403
    sites = httpx.get(f"{netbox.url}/api/dcim/sites/", params={"slug": slug}, headers=netbox.api_headers(),
                      timeout=TIMEOUT)
    assert sites.json()["count"] == 0


def test_an_expired_token_gets_403_once_the_cached_introspection_expires(
        netbox: NetBoxState, short_tokens: int) -> None:
    def stats() -> dict[str, int]:
        return httpx.get(f"{netbox.oauth_url}/_admin/stats", timeout=TIMEOUT).json()  # type: ignore[no-any-return]

    before = stats()
    token = _token(netbox)
    first = _apply(netbox, token, [_site(f"t-exp-{uuid.uuid4().hex[:6]}")])
    assert first.status_code == 200, first.text
    after = stats()
    assert after["tokens_issued"] == before["tokens_issued"] + 1
    assert after["introspections_active"] > before["introspections_active"]
    # The plugin caches a good introspection for exp - iat = 2 s; after that it asks again and is told no.
    _wait_for(lambda: _apply(netbox, token, [_site("t-never")]).status_code == 403, timeout=30,
              what="NetBox refusing an expired token")
    final = stats()
    refused_before = after["introspections"] - after["introspections_active"]
    assert final["introspections"] - final["introspections_active"] > refused_before  # NetBox asked again
    # A fresh token works again.
    assert _apply(netbox, _token(netbox), [_site(f"t-fresh-{uuid.uuid4().hex[:6]}")]).status_code == 200


def test_start_again_returns_the_running_stack(netbox: NetBoxState, services: Services) -> None:
    again = dev_netbox.start(services.home, services.database_url, database=netbox.database)
    assert again == netbox
    assert dev_netbox.state(services.home) == netbox


def test_the_ui_and_its_static_files_load(netbox: NetBoxState) -> None:
    login = httpx.get(f"{netbox.url}/login/", timeout=TIMEOUT)
    assert login.status_code == 200
    assert "NetBox" in login.text
    links = [part.split('"')[0] for part in login.text.split('href="')[1:]]
    stylesheets = [link for link in links if ".css" in link]
    assert stylesheets, "the login page links no stylesheet"
    css = httpx.get(f"{netbox.url}{stylesheets[0]}", timeout=TIMEOUT)
    assert css.status_code == 200
    assert "css" in css.headers["content-type"]
