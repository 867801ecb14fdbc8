"""The web console: a static page at ``/console`` over the JSON API (see ``static/``)."""

from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

STATIC = Path(__file__).parent / "static"
# The page runs only its own script and style and talks only to this origin; no other site
# may frame it (the key it holds is a bearer token).
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class _Console(StaticFiles):
    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(_HEADERS)
        return response


def mount_console(app: FastAPI) -> None:
    """Serve the console. The page itself holds no data: every view asks the API with the
    key the user signs in with, so it is behind the same keys and scopes as the API."""
    app.mount("/console", _Console(directory=STATIC, html=True), name="console")
