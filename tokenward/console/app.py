"""The console's ASGI application: the API, the page, and the gates in front of them.

In front of every route, in this order:
- the admin-key gate for `/api/...` (the OpenAPI document too): `Authorization: Bearer KEY`,
  checked before anything reads the body, so a caller without a key learns nothing but 401;
- the body limit: a body over `MAX_BODY_BYTES` is refused with 413 while it arrives (a declared
  `Content-Length` at once), never held whole;
- headers on every answer: `Cache-Control: no-store` (nothing the console shows is kept by a
  browser or a cache, so the back button cannot bring a token back), a Content-Security-Policy
  that lets the page load only its own files, no framing, no referrer.
The store is looked at on every request (`check_file`), so a store replaced or removed under the
console is noticed as the proxies notice it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from tokenward.console import api, pages
from tokenward.console.actions import INVALID, Refusal
from tokenward.console.keys import console_key_digest, is_console_key_shaped
from tokenward.console.sessions import Sessions
from tokenward.core.tokens import redact_tokens
from tokenward.store import Store, StoreUnavailable

API_PREFIX = "/api"
OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
# JSON bodies and forms of the console are a few hundred bytes.
MAX_BODY_BYTES = 64 * 1024
STATIC_DIR = Path(__file__).with_name("static")

_SECURITY_HEADERS = (
    (b"cache-control", b"no-store"),
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        b" form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_UNAUTHORIZED = {"error": "unauthorized", "message": "an admin key is needed"}
_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def error_answer(status: int, error: str, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status, headers=headers or None)


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(name, value) for name, value in _SECURITY_HEADERS if name not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _AdminKeyGate:
    """401 for an `/api` request without a valid admin key; the store checked on every one."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await run_in_threadpool(self.store.check_file)
            if is_api_path(scope["path"]) and not await self._admitted(scope):
                answer: Response = error_answer(
                    401, **_UNAUTHORIZED, **{"WWW-Authenticate": 'Bearer realm="tokenward console"'}
                )
                await answer(scope, receive, send)
                return
        except StoreUnavailable as error:
            await _store_unavailable(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admitted(self, scope: Scope) -> bool:
        fields = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(fields) != 1:
            return False
        scheme, _, key = fields[0].decode("latin-1").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not is_console_key_shaped(key):
            return False
        found = await run_in_threadpool(self.store.console_key_named_by, console_key_digest(key))
        return found is not None


class _BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = error_answer(
            413, "body_too_large", f"the body is over {self.max_bytes} bytes", Connection="close"
        )
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared and declared[0].isdigit() and int(declared[0]) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await too_large(scope, receive, send)
                return
            more = message.get("more_body", False)
        replay: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)


def _store_unavailable(error: StoreUnavailable) -> JSONResponse:
    return error_answer(503, "store_unavailable", str(error))


class ConsoleApp(FastAPI):
    """The FastAPI app whose OpenAPI document says what the gates and handlers answer."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document = super().openapi()
            # Validation errors are answered 400 with {"error", "message"} (see below).
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            schemas = document.get("components", {}).get("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            document.setdefault("components", {})["securitySchemes"] = {
                "adminKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An admin key: tokenward console keys create --name NAME",
                }
            }
            document["security"] = [{"adminKey": []}]
            self.openapi_schema = document
        return self.openapi_schema


def _methods_at(app: FastAPI, path: str) -> list[str]:
    return sorted(
        method
        for route in app.routes
        if isinstance(route, APIRoute) and route.path_regex.fullmatch(path)
        for method in route.methods or ()
    )


def _validation_message(error: RequestValidationError) -> str:
    first = error.errors()[0]
    # Where, not what: the value given is never repeated (it might be a token pasted by mistake).
    location = ".".join(str(part) for part in first.get("loc", ()))
    return f"{redact_tokens(location)!r}: {first.get('msg', 'invalid')}"


def create_app(store: Store, *, secure_cookies: bool) -> FastAPI:
    """The console on `store`; `secure_cookies` when it is served over TLS."""
    app = ConsoleApp(
        title="tokenward console",
        version=version("tokenward"),
        description="Tokens and services of a tokenward store. Every call needs an admin key.",
        openapi_url=OPENAPI_PATH,
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )
    app.state.store = store
    app.state.sessions = Sessions()
    app.state.secure_cookies = secure_cookies
    app.include_router(api.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(Refusal)
    async def refused(request: Request, refusal: Refusal) -> Response:
        return error_answer(refusal.status, refusal.error, refusal.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> Response:
        return error_answer(400, INVALID, _validation_message(error))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if not is_api_path(request.url.path):
            return pages.error_page(error.status_code, str(error.detail))
        code = _ERROR_CODES.get(error.status_code, "error")
        headers = dict(error.headers or {})
        if error.status_code == 405:
            # Starlette names the methods of one route only; a path has a route per method.
            headers["Allow"] = ", ".join(_methods_at(request.app, request.scope["path"]))
        return error_answer(error.status_code, code, str(error.detail), **headers)

    @app.exception_handler(StoreUnavailable)
    async def unavailable(request: Request, error: StoreUnavailable) -> Response:
        return _store_unavailable(error)

    @app.exception_handler(pages.SignInRequired)
    async def sign_in(request: Request, _: pages.SignInRequired) -> Response:
        return pages.to_sign_in(request)

    app.add_middleware(_BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(_AdminKeyGate, store=store)
    app.add_middleware(_SecurityHeaders)
    return app
