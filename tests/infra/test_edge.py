"""The API's edge: app.yaml's WAF web ACL (ApiWebAcl), enforced in front of the local API
server by infra/local/edge.py as WAF enforces it in front of the stage on AWS. One key, or
one address without a key, over its rate gets 429 with the template's body; the other
callers do not notice. The rules are read from the template, with small limits given as
deploy parameters (WAF's smallest limit is 10)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from chalicelib.platform.settings import Settings
from infra.local.edge import Edge, EdgeTemplateError, Request, web_acl_from_template
from infra.local.stack import create_stack
from tests.conftest import resource_env
from tests.support import procs
from tests.support.harness import send_from

LIMITS = {"ApiTenantRateLimit": "10", "ApiAnonymousRateLimit": "10", "ApiAddressRateLimit": "40",
          "ApiRateWindowSeconds": "60"}
KEY_A, KEY_B = {"X-C3-RENDER-KEY": "edge-a"}, {"X-C3-RENDER-KEY": "edge-b"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def edge() -> tuple[Edge, Clock]:
    clock = Clock()
    return Edge(web_acl_from_template(LIMITS), clock=clock), clock


def keyed(address: str, key: str) -> Request:
    return Request(address, {"x-c3-render-key": key})


def test_one_key_over_its_rate_is_refused_and_the_other_keys_are_not() -> None:
    rules, clock = edge()
    tenant = keyed("10.0.0.1", "key-a")
    assert [rules.check(tenant) for _ in range(10)] == [None] * 10
    verdict = rules.check(tenant)
    assert verdict is not None and verdict.status == 429 and verdict.rule == "per-key-header"
    assert verdict.headers == {"Retry-After": "60", "Content-Type": "application/json"}
    assert json.loads(verdict.body)["details"] == [
        {"field": "X-C3-RENDER-KEY", "message": "at most 10 requests per 60 seconds per key"}]
    assert rules.check(keyed("10.0.0.1", "key-b")) is None  # another tenant, the same address
    clock.now += 59
    assert rules.check(tenant) is not None  # the blocked requests counted too: still over
    clock.now += 60.5
    assert rules.check(tenant) is None  # the window slid past them


def test_a_bearer_key_is_one_key_however_it_is_written() -> None:
    rules, _ = edge()
    spellings = ["Bearer key-c", "bearer key-c", "Bearer   key-c", "BEARER key-c"]
    assert [rules.check(Request("10.0.0.2", {"authorization": spellings[n % 4]})) for n in range(10)] == [None] * 10
    verdict = rules.check(Request("10.0.0.2", {"authorization": "bearer  key-c"}))
    assert verdict is not None and verdict.rule == "per-key-bearer"
    assert rules.check(Request("10.0.0.2", {"authorization": "Bearer key-d"})) is None


def test_callers_without_a_key_are_bounded_per_address() -> None:
    rules, _ = edge()
    anonymous = Request("10.0.0.3", {"user-agent": "curl"})
    assert [rules.check(anonymous) for _ in range(10)] == [None] * 10
    verdict = rules.check(anonymous)
    assert verdict is not None and verdict.rule == "per-address-without-key" and verdict.status == 429
    assert "10 requests per 60 seconds per address without a key" in json.loads(verdict.body)["details"][0]["message"]
    assert rules.check(Request("10.0.0.4", {})) is None  # another address
    assert rules.check(keyed("10.0.0.3", "key-a")) is None  # a key from the same address
    assert rules.check(Request("10.0.0.3", {"x-c3-render-key": ""})) is not None  # an empty key is none


def test_a_caller_inventing_a_key_per_request_meets_the_address_bound() -> None:
    rules, _ = edge()
    assert [rules.check(keyed("10.0.0.5", f"made-up-{n}")) for n in range(40)] == [None] * 40
    verdict = rules.check(keyed("10.0.0.5", "made-up-41"))
    assert verdict is not None and verdict.rule == "per-address"
    assert json.loads(verdict.body)["details"][0]["field"] == "address"
    assert rules.check(keyed("10.0.0.6", "key-a")) is None


def test_a_rule_the_edge_cannot_enforce_is_refused_not_skipped() -> None:
    acl = web_acl_from_template(LIMITS)
    acl["Rules"].append({"Name": "no-geo", "Priority": 9, "Action": {"Block": {}},
                         "Statement": {"GeoMatchStatement": {"CountryCodes": ["AQ"]}},
                         "VisibilityConfig": {}})
    with pytest.raises(EdgeTemplateError, match="rule no-geo: GeoMatchStatement"):
        Edge(acl)
    acl["Rules"][-1]["Statement"] = {"RateBasedStatement": {"Limit": 10, "AggregateKeyType": "FORWARDED_IP"}}
    with pytest.raises(EdgeTemplateError, match="FORWARDED_IP"):
        Edge(acl)


@pytest.mark.integration
def test_the_api_answers_behind_the_edge(aws_endpoints, tmp_path: Path) -> None:
    env = {**resource_env(f"e{uuid.uuid4().hex[:12]}"), "C3_RENDER_API_KEY": "edge-a,edge-b"}
    create_stack(Settings(**env))
    acl = tmp_path / "edge-acl.json"
    acl.write_text(json.dumps(web_acl_from_template(LIMITS)))
    port = procs.free_port()
    log = tmp_path / "api.log"
    proc = procs.start_api(port, env, log, edge_acl=acl)
    try:
        assert [send_from("127.0.0.2", port, "/jobs", KEY_A)[0] for _ in range(10)] == [200] * 10
        status, headers, body = send_from("127.0.0.2", port, "/jobs", KEY_A)
        assert (status, headers["retry-after"], headers["content-type"]) == (429, "60", "application/json")
        assert json.loads(body)["error"] == "Too many requests for this API key"
        assert send_from("127.0.0.2", port, "/jobs", KEY_B)[0] == 200  # the other tenant, same address
        assert [send_from("127.0.0.3", port, "/health")[0] for _ in range(10)] == [200] * 10
        status, _, body = send_from("127.0.0.3", port, "/health")
        assert status == 429 and json.loads(body)["error"] == "Too many requests without an API key from this address"
        assert send_from("127.0.0.3", port, "/health", method="TRACE")[0] == 429  # any method: WAF sees all
        assert send_from("127.0.0.4", port, "/health")[0] == 200
        assert send_from("127.0.0.3", port, "/jobs", KEY_B)[0] == 200
    finally:
        procs.stop(proc)
    blocked = [json.loads(line) for line in log.read_text().splitlines() if '"edge.blocked"' in line]
    assert [(b["rule"], b["address"]) for b in blocked] == [("per-key-header", "127.0.0.2")] + [
        ("per-address-without-key", "127.0.0.3")] * 2
