"""One error family. Every 4xx/5xx the API returns on purpose is an AppError subclass,
rendered as ``{"error": <short code>, "detail": <what to fix>}``. A 500 is always a bug."""

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class AppError(Exception):
    status_code = 400
    error = "bad_request"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(AppError):
    pass


class Unauthorized(AppError):
    status_code = 401
    error = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    error = "forbidden"


class NotFound(AppError):
    status_code = 404
    error = "not_found"


class Conflict(AppError):
    status_code = 409
    error = "conflict"


class PayloadTooLarge(AppError):
    status_code = 413
    error = "payload_too_large"


class Unprocessable(AppError):
    status_code = 422
    error = "invalid_input"


class NotImplementedYet(AppError):
    status_code = 501
    error = "not_implemented"


class Upstream(AppError):
    """A model or embedding endpoint failed or timed out."""

    status_code = 503
    error = "upstream_unavailable"


class BadUpstreamResponse(AppError):
    """The model server refused the request or answered with something unusable."""

    status_code = 502
    error = "bad_upstream_response"


class UnusableOutput(BadUpstreamResponse):
    """The request was served, but the model's reply cannot be used (cut off by max_tokens
    inside its JSON, or not JSON at all). The agents record it as a bad output; any other
    BadUpstreamResponse is a fault of the request or the server and is never taken for an
    empty reply."""


def _body(error: str, detail: object) -> dict[str, object]:
    return {"error": error, "detail": detail}


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(_body(exc.error, exc.detail), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(_body("invalid_input", _describe_validation(exc)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code)
