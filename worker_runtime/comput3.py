"""The Comput3 control-plane client lives in chalicelib/comput3.py (the API's scheduled
GPU reaper uses it too); re-exported here for the worker's modules."""

from chalicelib.comput3 import *  # noqa: F401,F403
