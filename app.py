"""Chalice entry point; the routes live in chalicelib/api/routes.py."""

from chalicelib.api.routes import create_app
from chalicelib.context import default_context
from chalicelib.platform.secrets import load_secrets

load_secrets()  # on AWS: API keys and webhook secret from SSM, before settings are read
app = create_app(default_context())

# Lambda calls each event-triggered function through its template Handler, "app.<name>"
# (the decorated function's name, as `chalice package` writes it): they must be here.
for _source in app.event_sources:
    globals()[_source.handler_string.split(".", 1)[1]] = app.handler_map[_source.name]
