"""Request metrics (per route template, so ids don't explode label cardinality) and the body
size limit."""

import time

from prometheus_client import Counter, Histogram
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

REQUESTS = Counter("memr1_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "memr1_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)


def _route(request: Request) -> str:
    # The router records the matched route in the (shared) scope once it has routed.
    route = request.scope.get("route")
    return str(route.path) if route is not None else "unmatched"


class MetricsMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = _route(request)
        LATENCY.labels(request.method, route).observe(time.perf_counter() - start)
        REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        return response


class BodySizeLimitMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app)
        self.max_bytes = max_bytes

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return JSONResponse(
                {
                    "error": "payload_too_large",
                    "detail": f"request body is {length} bytes; the limit is {self.max_bytes}: "
                    "send fewer turns per request",
                },
                status_code=413,
            )
        return await call_next(request)
