"""The API's edge, locally: the rules of app.yaml's WAF web ACL (``ApiWebAcl``), enforced in
front of the local API server the way AWS WAF enforces them in front of API Gateway.

On AWS the web ACL is associated with the API's stage, and per-key and per-address rate-based
rules answer 429 before a request reaches the stage throttle or the function. Nothing emulates
WAF here, so this module reads the same resolved properties and applies the subset of WAF's
rule language the template uses: rate-based statements aggregated by source address (``IP``)
or by headers (``CUSTOM_KEYS``), scope-down statements built of ``SizeConstraintStatement`` on
a single header with ``And``/``Or``/``Not``, the ``NONE``/``LOWERCASE``/``COMPRESS_WHITE_SPACE``
text transformations, and ``Allow``/``Block``/``Count`` actions with custom responses. Anything
else in the template is refused when the rules are loaded (``EdgeTemplateError``), so a rule
added to the template is either enforced here or fails loudly, never skipped in silence.

Like WAF, a rate-based rule counts every request it evaluates that matches its scope and
carries its aggregation keys (the blocked ones too), over a window sliding with the clock;
a request is blocked while its key's count in the window exceeds the limit. WAF's own counts
lag by some seconds; here they are exact.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

WAF_DEFAULT_WINDOW = 300
_WHITE_SPACE = re.compile(r"[ \t\n\r\f\v\u00a0]+")
_TRANSFORMS: dict[str, Callable[[str], str]] = {
    "NONE": lambda value: value,
    "LOWERCASE": str.lower,
    "COMPRESS_WHITE_SPACE": lambda value: _WHITE_SPACE.sub(" ", value),
}
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "EQ": lambda a, b: a == b, "NE": lambda a, b: a != b, "LE": lambda a, b: a <= b,
    "LT": lambda a, b: a < b, "GE": lambda a, b: a >= b, "GT": lambda a, b: a > b,
}


class EdgeTemplateError(ValueError):
    """The web ACL uses something this emulation does not enforce (named in the message)."""


@dataclass(frozen=True)
class Request:
    """What the rules look at: the source address and the headers (names in lower case)."""

    address: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Verdict:
    """A blocked request's answer: status, headers and body, as the rule's action says."""

    rule: str
    status: int
    headers: dict[str, str]
    body: bytes


def _transform(value: str, transformations: list[Mapping[str, Any]], where: str) -> str:
    for step in sorted(transformations, key=lambda t: int(t["Priority"])):
        kind = step["Type"]
        if kind not in _TRANSFORMS:
            raise EdgeTemplateError(f"{where}: text transformation {kind} is not enforced locally")
        value = _TRANSFORMS[kind](value)
    return value


def _header_name(field_to_match: Mapping[str, Any], where: str) -> str:
    if set(field_to_match) != {"SingleHeader"}:
        raise EdgeTemplateError(f"{where}: FieldToMatch {sorted(field_to_match)} is not enforced locally "
                                "(only SingleHeader)")
    return str(field_to_match["SingleHeader"]["Name"]).lower()


def _matcher(statement: Mapping[str, Any], where: str) -> Callable[[Request], bool]:
    """A scope-down statement as a predicate on requests."""
    (kind, body), = statement.items()
    if kind in ("AndStatement", "OrStatement"):
        parts = [_matcher(s, f"{where}.{kind}") for s in body["Statements"]]
        combine = all if kind == "AndStatement" else any
        return lambda request: combine(part(request) for part in parts)
    if kind == "NotStatement":
        inner = _matcher(body["Statement"], f"{where}.NotStatement")
        return lambda request: not inner(request)
    if kind == "SizeConstraintStatement":
        name = _header_name(body["FieldToMatch"], where)
        compare = _COMPARE.get(body["ComparisonOperator"])
        if compare is None:
            raise EdgeTemplateError(f"{where}: ComparisonOperator {body['ComparisonOperator']} is unknown")
        size = int(body["Size"])
        transformations = list(body.get("TextTransformations", []))

        def sized(request: Request) -> bool:
            value = request.headers.get(name)
            if value is None:
                return False  # WAF: a header the request lacks matches no size constraint
            return compare(len(_transform(value, transformations, where).encode()), size)

        return sized
    raise EdgeTemplateError(f"{where}: {kind} is not enforced locally")


@dataclass
class RateRule:
    """One rate-based rule: which requests it counts, by what key, and what it answers."""

    name: str
    limit: int
    window: float
    keys: list[Callable[[Request], str | None]]
    scope: Callable[[Request], bool] | None
    verdict: Verdict | None  # None: a Count rule (counts, never blocks)
    seen: dict[tuple[str, ...], deque[float]] = field(default_factory=dict)

    def aggregate(self, request: Request) -> tuple[str, ...] | None:
        if self.scope is not None and not self.scope(request):
            return None
        parts = [key(request) for key in self.keys]
        return None if any(part is None for part in parts) else tuple(p for p in parts if p is not None)

    def over(self, key: tuple[str, ...], now: float) -> bool:
        """Count this request under ``key``; True while the window holds more than the limit."""
        times = self.seen.setdefault(key, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) > self.limit

    def forget_idle(self, now: float) -> None:
        for key in [k for k, times in self.seen.items() if not times or times[-1] <= now - self.window]:
            del self.seen[key]


def _aggregation(statement: Mapping[str, Any], where: str) -> list[Callable[[Request], str | None]]:
    kind = statement.get("AggregateKeyType", "IP")
    if kind == "IP":
        return [lambda request: request.address]
    if kind == "CONSTANT":
        return [lambda request: ""]
    if kind != "CUSTOM_KEYS":
        raise EdgeTemplateError(f"{where}: AggregateKeyType {kind} is not enforced locally")
    keys: list[Callable[[Request], str | None]] = []
    for custom in statement["CustomKeys"]:
        (kind, body), = custom.items()
        if kind == "IP":
            keys.append(lambda request: request.address)
        elif kind == "Header":
            name = str(body["Name"]).lower()
            transformations = list(body.get("TextTransformations", []))

            def header(request: Request, name: str = name,
                       transformations: list[Mapping[str, Any]] = transformations) -> str | None:
                value = request.headers.get(name)
                return None if value is None else _transform(value, transformations, where)

            keys.append(header)
        else:
            raise EdgeTemplateError(f"{where}: custom aggregation key {kind} is not enforced locally")
    return keys


def _verdict(rule: Mapping[str, Any], bodies: Mapping[str, Any], where: str) -> Verdict | None:
    (kind, body), = rule["Action"].items()
    if kind == "Count":
        return None
    if kind != "Block":
        raise EdgeTemplateError(f"{where}: a rate-based rule's action {kind} is not enforced locally")
    custom = (body or {}).get("CustomResponse")
    if not custom:
        return Verdict(rule["Name"], 403, {"Content-Type": "text/html"}, b"<html><body>403 Forbidden</body></html>")
    headers = {str(h["Name"]): str(h["Value"]) for h in custom.get("ResponseHeaders", [])}
    content = b""
    if "CustomResponseBodyKey" in custom:
        declared = bodies[custom["CustomResponseBodyKey"]]
        content = str(declared["Content"]).encode()
        headers["Content-Type"] = {"APPLICATION_JSON": "application/json", "TEXT_HTML": "text/html",
                                   "TEXT_PLAIN": "text/plain"}[declared["ContentType"]]
    return Verdict(rule["Name"], int(custom["ResponseCode"]), headers, content)


def web_acl_from_template(parameters: Mapping[str, str] | None = None, stage: str = "dev") -> dict[str, Any]:
    """``ApiWebAcl``'s properties from app.yaml, resolved with its parameters' defaults
    and ``parameters`` (the deploy's parameter overrides)."""
    from infra.aws.emulator import Resolver
    from infra.aws.template import APP_TEMPLATE, LOCAL_PARAMETERS, load_template, resolve_parameters

    app = load_template(APP_TEMPLATE)
    given = {"Stage": stage, **LOCAL_PARAMETERS, **(parameters or {})}
    resolver = Resolver(resolve_parameters(app, given, {}), {"AWS::Region": "us-east-1",
                                                             "AWS::AccountId": "000000000000"})
    return resolver.resolve(app["Resources"]["ApiWebAcl"]["Properties"])


class Edge:
    """The web ACL's rate rules, evaluated in priority order for each request."""

    def __init__(self, web_acl: Mapping[str, Any], clock: Callable[[], float] = time.monotonic):
        default = web_acl.get("DefaultAction", {"Allow": {}})
        if set(default) != {"Allow"}:
            raise EdgeTemplateError(f"DefaultAction {sorted(default)} is not enforced locally (only Allow)")
        bodies = web_acl.get("CustomResponseBodies", {})
        self.rules: list[RateRule] = []
        for rule in sorted(web_acl.get("Rules", []), key=lambda r: int(r["Priority"])):
            where = f"rule {rule['Name']}"
            (kind, statement), = rule["Statement"].items()
            if kind != "RateBasedStatement":
                raise EdgeTemplateError(f"{where}: {kind} is not enforced locally (only RateBasedStatement)")
            scope = statement.get("ScopeDownStatement")
            self.rules.append(RateRule(
                name=rule["Name"], limit=int(statement["Limit"]),
                window=float(statement.get("EvaluationWindowSec", WAF_DEFAULT_WINDOW)),
                keys=_aggregation(statement, where), scope=_matcher(scope, where) if scope else None,
                verdict=_verdict(rule, bodies, where)))
        self._clock = clock
        self._lock = threading.Lock()
        self._checked = 0

    def check(self, request: Request) -> Verdict | None:
        """The answer of the first rule that blocks the request, or None: let it through."""
        with self._lock:
            now = self._clock()
            self._checked += 1
            if self._checked % 1000 == 0:
                for rule in self.rules:
                    rule.forget_idle(now)
            for rule in self.rules:
                key = rule.aggregate(request)
                if key is not None and rule.over(key, now) and rule.verdict is not None:
                    return rule.verdict
            return None
