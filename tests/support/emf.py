"""The EMF reader tests use: the same one `make soak` uses."""

from infra.local.emf import Point, named, parse, read  # noqa: F401
