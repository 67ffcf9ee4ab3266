"""Chalice entry point; the routes live in chalicelib/api/routes.py."""

from chalicelib.api.routes import create_app
from chalicelib.context import default_context
from chalicelib.platform.secrets import load_secrets

load_secrets()  # on AWS: API keys and webhook secret from SSM, before settings are read
app = create_app(default_context())
