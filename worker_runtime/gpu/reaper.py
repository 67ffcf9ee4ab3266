"""The reaper lives in chalicelib/gpu_reaper.py (it runs as the API's scheduled
``gpu_reaper`` handler); re-exported here for the worker's modules."""

from chalicelib.gpu_reaper import *  # noqa: F401,F403
