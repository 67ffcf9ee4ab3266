"""Serve app.py locally: Chalice's own local server (what `chalice local` runs),
with Nagle's algorithm off on each connection.

`chalice local` writes headers and body in separate sends; on a keep-alive
connection that meets the client's delayed ACK and costs ~40 ms per request.
Usage: python -m infra.local.api_server --port 8000 [--stage dev]"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from chalice.cli.factory import CLIFactory
from chalice.local import ChaliceRequestHandler, LocalDevServer

from infra.local.processes import ROOT


class NoDelayHandler(ChaliceRequestHandler):
    disable_nagle_algorithm = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--stage", default="dev")
    args = parser.parse_args()
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
