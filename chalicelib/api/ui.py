"""``GET /ui``: the operators' page — static HTML, JavaScript and CSS shipped in
chalicelib/api/ui_static/ (so ``chalice package`` bundles them), no build step, nothing
loaded from elsewhere.

The page is public; everything it shows it fetches from the API with the key the user
types in (GET /jobs, /status/{id}, /result/{id}, /health), so it shows nothing a key
does not already open."""

from __future__ import annotations

from pathlib import Path

from chalice import Chalice, Response

STATIC = Path(__file__).resolve().parent / "ui_static"

# route -> (file, Content-Type). The page refers to its assets relatively (ui/app.js), so
# it works under an API Gateway stage prefix (/prod/ui) as well as at the root.
ASSETS = {
    "/ui": ("index.html", "text/html; charset=utf-8"),
    "/ui/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/ui/app.css": ("app.css", "text/css; charset=utf-8"),
}

# Only this origin's scripts, styles and API; media (presigned S3 URLs) from anywhere over
# http(s). No form ever submits (the key form is handled by the script: a plain submit would
# put the key in a URL). No framing; results' URLs (credentials in their query) are not sent as referrers.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; media-src 'self' http: https:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def asset(route: str, path: str = "") -> Response:
    """Read on every request (a few kB): an edited page shows on reload under `make run`.

    ``path`` is the path the request came in on: API Gateway and `chalice local` route
    ``/ui/`` to ``/ui``, where the page's relative asset URLs would miss (``/ui/ui/app.js``),
    so ``/ui/`` is redirected to ``/ui`` (relatively: under a stage prefix too)."""
    if route == "/ui" and path.endswith("/"):
        return Response(body="", status_code=301, headers={**HEADERS, "Location": "../ui"})
    name, content_type = ASSETS[route]
    body = (STATIC / name).read_text(encoding="utf-8")
    return Response(body=body, status_code=200, headers={**HEADERS, "Content-Type": content_type})


def register_ui(app: Chalice) -> None:
    for route in ASSETS:
        def serve(route: str = route) -> Response:
            return asset(route, str((app.current_request.context or {}).get("path") or ""))

        serve.__name__ = "ui_" + "".join(c if c.isalnum() else "_" for c in route.strip("/"))
        app.route(route, methods=["GET"])(serve)
