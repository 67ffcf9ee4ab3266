"""Serve app.py locally: Chalice's own local server (what `chalice local` runs),
with Nagle's algorithm off on each connection.

`chalice local` writes headers and body in separate sends; on a keep-alive
connection that meets the client's delayed ACK and costs ~40 ms per request.
Usage: python -m infra.local.api_server --port 8000 [--stage dev]"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from chalice.cli.factory import CLIFactory
from chalice.local import ChaliceRequestHandler, ForbiddenError, LocalDevServer, LocalGatewayException

from infra.local.edge import Edge, Request, Verdict
from infra.local.processes import ROOT


def not_found_body(method: str, path: str) -> dict[str, object]:
    """The same words as the gateway response's template in infra/aws/app.yaml."""
    return {"error": f"No route {method} {path}",
            "details": [{"field": "path", "message": "must be one of the API's routes (see /openapi.json)"}]}


class NoDelayHandler(ChaliceRequestHandler):
    disable_nagle_algorithm = True
    edge: Edge | None = None  # app.yaml's WAF rules in front of the API (--edge-acl)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._multi: dict[str, list[str]] = {}
        super().__init__(*args, **kwargs)

    def _parse_payload(self) -> tuple[dict[str, Any], bytes | None]:
        """As API Gateway does, the event also carries every copy of each header
        (``multiValueHeaders``): Chalice's local server keeps only one, and the API
        refuses a repeated credential rather than pick a copy."""
        self._multi = {}
        for name, value in self.headers.items():
            self._multi.setdefault(name.lower(), []).append(value)
        gateway = self.local_gateway
        if not getattr(gateway, "_multi_wrapped", False):
            create = gateway.event_converter.create_lambda_event

            def with_multi(*args: Any, **kwargs: Any) -> dict[str, Any]:
                return {**create(*args, **kwargs), "multiValueHeaders": dict(self._multi)}

            gateway.event_converter.create_lambda_event = with_multi  # type: ignore[method-assign]
            gateway._multi_wrapped = True  # type: ignore[attr-defined]
        return super()._parse_payload()

    def _method_not_allowed(self) -> None:
        """Methods no route has (TRACE, QUERY, ...): 405 in the API's error format, as for a
        route's wrong method, instead of http.server's 501 HTML page. (API Gateway never
        passes them to the function.)"""
        if self._refused_at_the_edge():
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # or it would be read as the next request
        self.close_connection = True
        body = json.dumps({"error": f"Unsupported method: {self.command}",
                           "details": [{"field": "method", "message": "must be one of: GET, POST"}]}).encode()
        self.send_response(405)
        self.send_header("Content-Type", "application/json")
        self.send_header("Allow", "GET, POST")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _generic_handle(self) -> None:
        """A client that hangs up before its answer (Ctrl-C during a held `Prefer: wait`, a
        closed browser tab) is an ordinary event: one log line, no traceback."""
        if self._refused_at_the_edge():
            return
        try:
            super()._generic_handle()
        except (BrokenPipeError, ConnectionResetError) as exc:
            self.close_connection = True
            print(json.dumps({"level": "INFO", "event": "api.client_gone", "path": self.path.split("?", 1)[0],
                              "reason": f"the client closed the connection before the answer ({type(exc).__name__})"}),
                  flush=True)

    def _refused_at_the_edge(self) -> bool:
        """WAF sees every request, whatever its method: True when a rule answered it."""
        if self.edge is None:
            return False
        verdict = self.edge.check(Request(self.client_address[0],
                                          {name.lower(): value for name, value in self.headers.items()}))
        if verdict is not None:
            self._send_verdict(verdict)
        return verdict is not None

    def _send_verdict(self, verdict: Verdict) -> None:
        """The edge's answer, as WAF gives it: the function never sees the request, whose body
        is left unread (the connection is closed after the answer)."""
        print(json.dumps({"level": "INFO", "event": "edge.blocked", "rule": verdict.rule,
                          "address": self.client_address[0], "path": self.path.split("?", 1)[0],
                          "reason": f"the web ACL's rule {verdict.rule} is over its rate for this caller"}),
              flush=True)
        self.close_connection = True
        self.send_response(verdict.status)
        for name, value in verdict.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(verdict.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(verdict.body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _send_error_response(self, error: LocalGatewayException) -> None:
        """A path no route has: 404 in the API's error format, as API Gateway answers it
        (the MISSING_AUTHENTICATION_TOKEN gateway response in infra/aws/app.yaml), instead
        of 403 "Missing Authentication Token"."""
        if isinstance(error, ForbiddenError) and b"Missing Authentication Token" in (error.body or b""):
            path = self.path.split("?", 1)[0]
            body = json.dumps(not_found_body(self.command, path)).encode()
            self._send_http_response(404, {"Content-Type": "application/json"}, body)
            return
        super()._send_error_response(error)

    def __getattr__(self, name: str):  # any method no route has: QUERY, TRACE, CONNECT, ...
        if name.startswith("do_"):
            return self._method_not_allowed
        raise AttributeError(name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--edge-acl", type=Path, help="a JSON file of app.yaml's ApiWebAcl properties, resolved: "
                        "its rate rules answer before the API, as WAF does on AWS")
    args = parser.parse_args()
    if args.edge_acl is not None:
        NoDelayHandler.edge = Edge(json.loads(args.edge_acl.read_text()))
    os.environ["AWS_CHALICE_CLI_MODE"] = "true"
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    factory = CLIFactory(project_dir=str(ROOT), environ=os.environ)
    config = factory.create_config_obj(chalice_stage_name=args.stage)
    server = LocalDevServer(config.chalice_app, config, args.host, args.port, handler_cls=NoDelayHandler)
    print(f"Serving on http://{args.host}:{args.port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
