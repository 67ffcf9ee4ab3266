"""Chalice entry point; the routes live in chalicelib/api.py."""

from chalicelib.api import create_app
from chalicelib.context import default_context

app = create_app(default_context())
