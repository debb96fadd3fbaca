"""Every branch of the response classification, through the target client's transport seam
(`httpx.MockTransport`): what the NetBox diode plugin answers, and what each answer means."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from streams.pipeline.outcomes import (
    CallResult,
    ErrorClass,
    RequestFault,
    State,
    describe_errors,
    parse_retry_after,
)
from streams.settings import Settings
from streams.target.client import TargetClient

IDS = ["a", "b", "c"]
Handler = Callable[[httpx.Request], httpx.Response]


def call(handler: Handler, ids: list[str] = IDS, **settings: Any) -> CallResult:
    async def run() -> CallResult:
        client = TargetClient(Settings(target_url="http://target.test/api/plugins/diode", **settings),
                              transport=httpx.MockTransport(handler))
        try:
            return await client.bulk_plan_apply([{"id": i, "object_type": "dcim.site",
                                                  "entity": {"site": {"name": i}}} for i in ids])
        finally:
            await client.aclose()
    return asyncio.run(run())


def answer(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Handler:
    content = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    return lambda request: httpx.Response(status, content=content, headers=headers)


def created(entity_id: str, change_type: str = "create") -> dict[str, Any]:
    return {"id": entity_id, "errors": None, "change_set": {"id": f"cs-{entity_id}", "branch": None, "changes": [
        {"change_type": change_type, "object_type": "dcim.site", "object_id": None, "ref_id": "new_object:1",
         "object_primary_value": entity_id, "before": {}, "data": {"name": entity_id}, "new_refs": []}]}}


def failed(entity_id: str, plan: Any = None, apply: Any = None, change_set: Any = None) -> dict[str, Any]:
    return {"id": entity_id, "change_set": change_set, "errors": {"plan": plan, "apply": apply}}


INTERNAL = {"request": {"__all__": ["internal error"]}}


def test_200_every_entity_applied_and_the_request_is_posted_as_the_plugin_reads_it() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=orjson.dumps({"results": [created(i) for i in IDS]}))

    result = call(handler)
    assert [o.state for o in result.outcomes] == [State.APPLIED] * 3
    assert result.request_failure is None
    assert str(seen[0].url) == "http://target.test/api/plugins/diode/bulk-plan-apply/"
    assert orjson.loads(seen[0].content)["entities"][0]["entity"] == {"site": {"name": "a"}}


def test_no_changes_is_an_empty_change_set_or_only_noops() -> None:
    empty = {"id": "a", "errors": None, "change_set": {"id": "x", "changes": []}}
    result = call(answer(200, {"results": [empty, created("b", "noop"), created("c", "update")]}))
    assert [o.state for o in result.outcomes] == [State.NO_CHANGES, State.NO_CHANGES, State.APPLIED]


def test_207_a_validation_plan_error_is_permanent_and_says_which_field() -> None:
    plan = {"dcim.site": {"status": ["Value 'bogus' is not a valid choice."]}}
    result = call(answer(207, {"results": [failed("a", plan=plan), created("b"), created("c")]}))
    bad, good, _ = result.outcomes
    assert good.state is State.APPLIED
    assert bad.state is None and bad.failure is not None
    assert bad.failure.error_class is ErrorClass.PERMANENT and not bad.failure.whole_request
    assert bad.failure.message == "plan: dcim.site.status: Value 'bogus' is not a valid choice."
    assert bad.failure.detail == plan and bad.failure.http_status == 207


def test_207_one_internal_plan_error_is_transient_for_that_entity() -> None:
    result = call(answer(207, {"results": [failed("a", plan=INTERNAL), created("b"), created("c")]}))
    assert result.request_failure is None
    assert result.outcomes[0].failure is not None
    assert result.outcomes[0].failure.error_class is ErrorClass.TRANSIENT


def test_207_with_most_entities_internal_errors_is_the_target_down() -> None:
    result = call(answer(207, {"results": [failed("a", plan=INTERNAL), failed("b", plan=INTERNAL), created("c")]}))
    failure = result.request_failure
    assert failure is not None and failure.request is RequestFault.UNAVAILABLE
    assert [o.state for o in result.outcomes] == [None, None, State.APPLIED]
    assert result.outcomes[0].failure is failure


@pytest.mark.parametrize("code", ["db_deadlock_after_retries", "db_error"])
def test_207_database_contention_at_apply_is_transient_and_keeps_the_change_set(code: str) -> None:
    change_set = created("a")["change_set"]
    result = call(answer(207, {"results": [failed("a", apply={"__all__": [code]}, change_set=change_set),
                                           created("b"), created("c")]}))
    outcome = result.outcomes[0]
    assert outcome.failure is not None and outcome.failure.error_class is ErrorClass.TRANSIENT
    assert outcome.change_set is not None and outcome.change_set.id == "cs-a"
    assert outcome.failure.message == f"apply: {code}"


def test_207_an_integrity_error_at_apply_is_permanent() -> None:
    apply = {"dcim.site": {"slug": ["site with this slug already exists."]}}
    result = call(answer(207, {"results": [failed("a", apply=apply), created("b"), created("c")]}))
    assert result.outcomes[0].failure is not None
    assert result.outcomes[0].failure.error_class is ErrorClass.PERMANENT


@pytest.mark.parametrize(("errors", "expected"), [
    ({"plan": {"message": "try later", "retryable": True}}, ErrorClass.TRANSIENT),
    ({"apply": {"__all__": ["db_error"], "retryable": False}}, ErrorClass.PERMANENT),
    ({"apply": {"message": "conflict", "retryable": True}}, ErrorClass.TRANSIENT),
])
def test_retryable_overrides_the_class(errors: dict[str, Any], expected: ErrorClass) -> None:
    result = call(answer(207, {"results": [failed("a", **errors), created("b"), created("c")]}))
    assert result.outcomes[0].failure is not None and result.outcomes[0].failure.error_class is expected


def test_warnings_are_kept_with_an_applied_entity() -> None:
    warned = {**created("a"), "warnings": [{"message": "bound to the existing row; no field stored"}]}
    result = call(answer(200, {"results": [warned, created("b"), created("c")]}))
    assert result.outcomes[0].state is State.APPLIED
    assert result.outcomes[0].warnings == ({"message": "bound to the existing row; no field stored"},)


def test_a_missing_id_is_transient_and_an_unknown_id_is_ignored() -> None:
    result = call(answer(200, {"results": [created("a"), created("b"), created("zzz")]}))
    assert result.outcomes[2].failure is not None
    assert result.outcomes[2].failure.error_class is ErrorClass.TRANSIENT
    assert result.outcomes[2].failure.message == "no result for this id"
    assert result.unknown_ids == ("zzz",)


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"{}", b'{"results": "x"}', b""])
def test_a_200_body_that_is_not_the_contract_is_the_target_unavailable(body: bytes) -> None:
    result = call(answer(200, body))
    assert result.request_failure is not None
    assert result.request_failure.request is RequestFault.UNAVAILABLE


@pytest.mark.parametrize(("status", "fault", "error_class"), [
    (401, RequestFault.CREDENTIALS, ErrorClass.TRANSIENT),
    (403, RequestFault.CREDENTIALS, ErrorClass.TRANSIENT),
    (400, RequestFault.MISCONFIGURED, ErrorClass.TRANSIENT),
    (404, RequestFault.MISCONFIGURED, ErrorClass.TRANSIENT),
    (405, RequestFault.MISCONFIGURED, ErrorClass.TRANSIENT),
    (500, RequestFault.BROKEN, ErrorClass.TRANSIENT),
    (413, RequestFault.BROKEN, ErrorClass.TRANSIENT),
    (408, RequestFault.UNAVAILABLE, ErrorClass.TRANSIENT),
    (429, RequestFault.UNAVAILABLE, ErrorClass.TRANSIENT),
    (502, RequestFault.UNAVAILABLE, ErrorClass.TRANSIENT),
    (503, RequestFault.UNAVAILABLE, ErrorClass.TRANSIENT),
    (504, RequestFault.UNAVAILABLE, ErrorClass.TRANSIENT),
    (507, RequestFault.UNAVAILABLE, ErrorClass.TRANSIENT),
    (422, RequestFault.REFUSED, ErrorClass.PERMANENT),
    (409, RequestFault.REFUSED, ErrorClass.PERMANENT),
])
def test_whole_request_statuses(status: int, fault: RequestFault, error_class: ErrorClass) -> None:
    result = call(answer(status, {"errors": {"request": {"__all__": ["internal error"]}}}))
    failure = result.request_failure
    assert failure is not None and failure.request is fault and failure.error_class is error_class
    assert failure.http_status == status
    assert all(o.failure is failure for o in result.outcomes)
    assert fault.stops_the_flow is (status in (400, 401, 403, 404, 405))


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    seconds = call(answer(503, b"", {"Retry-After": "120"}))
    assert seconds.request_failure is not None and seconds.request_failure.retry_after == 120.0
    when = email.utils.formatdate(time.time() + 300, usegmt=True)
    dated = call(answer(429, b"", {"Retry-After": when}))
    assert dated.request_failure is not None and dated.request_failure.retry_after is not None
    assert 290 <= dated.request_failure.retry_after <= 301
    assert parse_retry_after("not a date", 0.0) is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", time.time()) == 0.0  # in the past


def test_a_gunicorn_timeout_page_is_not_quoted_in_the_message() -> None:
    result = call(answer(500, b"<html><head><title>Internal Server Error</title></head></html>"))
    assert result.request_failure is not None and "(an HTML page)" in result.request_failure.message


@pytest.mark.parametrize("error", [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                                   httpx.RemoteProtocolError("cut")])
def test_network_errors_and_timeouts_are_the_target_unavailable(error: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    result = call(handler)
    assert result.request_failure is not None
    assert result.request_failure.request is RequestFault.UNAVAILABLE
    assert result.request_failure.http_status is None
    assert type(error).__name__ in result.request_failure.message


def test_describe_errors_flattens_the_plugins_nested_errors() -> None:
    assert describe_errors({"message": "plain"}) == "plain"
    assert describe_errors({"__all__": ["db_error"]}) == "db_error"
    assert describe_errors(INTERNAL) == "request: internal error"
    nested = {"dcim.device": {"site": ["required"], "name": ["too long", "bad"]}, "x": {"y": ["z"]}}
    assert describe_errors(nested) == "dcim.device.site: required; dcim.device.name: too long; dcim.device.name: bad (and 1 more)"
    assert describe_errors({}) == "error"
