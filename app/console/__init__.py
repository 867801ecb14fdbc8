"""The web console: a static page at ``/console`` over the JSON API (see ``static/``)."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount_console(app: FastAPI) -> None:
    """Serve the console. The page itself holds no data: every view asks the API with the
    key the user signs in with, so it is behind the same keys and scopes as the API."""
    app.mount("/console", StaticFiles(directory=STATIC, html=True), name="console")
