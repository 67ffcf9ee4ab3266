"""The webhook receiver tests use: the same one `make soak` uses."""

from infra.local.webhook_receiver import Received, Receiver  # noqa: F401
