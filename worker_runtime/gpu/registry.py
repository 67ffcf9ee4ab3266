"""The GPU registry lives in chalicelib/gpu_registry.py (the API's scheduled GPU reaper
reads it too); re-exported here for the worker's modules."""

from chalicelib.gpu_registry import *  # noqa: F401,F403
