"""Chalice entry point; the routes live in chalicelib/api.py."""

from chalicelib.api import create_app
from chalicelib.context import default_context
from chalicelib.secrets import load_secrets

load_secrets()  # on AWS: API keys and webhook secret from SSM, before settings are read
app = create_app(default_context())
