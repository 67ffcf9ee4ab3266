"""boto3 clients, created once per process.

Endpoints come from boto3's own ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_<SERVICE>``
variables; nothing here builds endpoint URLs.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import boto3
from botocore.config import Config

_lock = threading.Lock()
_clients: dict[tuple[str, str, str | None], Any] = {}

# SQS long polls hold a connection for up to 20 s, so the read timeout must exceed it.
_READ_TIMEOUT = {"sqs": 35}


def client_config(service: str) -> Config:
    s3 = {"addressing_style": os.environ.get("S3_ADDRESSING_STYLE", "path")} if service == "s3" else None
    return Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=5,
        read_timeout=_READ_TIMEOUT.get(service, 30),
        max_pool_connections=32,
        signature_version="s3v4" if service == "s3" else None,
        s3=s3,
    )


def client(service: str, region: str, endpoint_url: str | None = None) -> Any:
    """A shared, thread-safe boto3 client; ``endpoint_url`` only for explicit overrides."""
    key = (service, region, endpoint_url)
    with _lock:
        if key not in _clients:
            _clients[key] = boto3.session.Session().client(
                service, region_name=region, endpoint_url=endpoint_url, config=client_config(service)
            )
        return _clients[key]


def reset_clients() -> None:
    """Forget cached clients (tests that move endpoints between cases)."""
    with _lock:
        _clients.clear()
