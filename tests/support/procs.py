"""Process helpers for tests: the same ones `make run` uses."""

from infra.local.processes import (  # noqa: F401
    ROOT,
    free_port,
    start,
    start_api,
    start_moto,
    stop,
    wait_http,
)
