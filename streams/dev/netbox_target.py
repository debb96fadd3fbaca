"""Which NetBox a command that applies to NetBox talks to (`streams demo|bench --target netbox`).

STREAMS_TARGET_URL set: that NetBox, with the STREAMS_TARGET_* credentials as given. Unset: the
`streams dev netbox` one, started if it is not running (it stays up afterwards, so what was
applied can be looked at; `streams dev netbox down` stops it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from streams.dev import netbox, services
from streams.settings import Settings


@dataclass(frozen=True)
class NetBoxTarget:
    settings: Settings  # with STREAMS_TARGET_* aimed at NetBox's diode plugin
    url: str | None  # NetBox itself, for reading back through its REST API (dev NetBox only)
    api_token: str | None
    started: bool


def resolve(settings: Settings, progress: Callable[[str], None] = lambda _: None) -> NetBoxTarget:
    if settings.target_url:
        return NetBoxTarget(settings, None, None, False)
    base = services.home(settings)
    was_running = netbox.state(base) is not None
    if not was_running:
        services.netbox_up(settings, progress)
    stack = netbox.state(base)
    assert stack is not None, "streams dev netbox up returned without a running NetBox"
    aimed = settings.model_copy(update={
        "target_url": stack.target_url, "target_token_url": stack.token_url,
        "target_client_id": stack.client_id, "target_client_secret": SecretStr(stack.client_secret),
        "target_scope": stack.scope,
    })
    return NetBoxTarget(aimed, stack.url, stack.api_token, not was_running)
