"""HTTPS with mutual TLS: the coordinator's FastAPI server and the sites' and operator's client.

Sites always initiate. A site long-polls ``GET /v1/messages/next`` for its next signed message
(a training task or the end of a study) and posts its signed update to ``POST /v1/updates``; the
coordinator never opens a connection to a site. Operators submit and follow studies under
``/v1/studies``. The OpenAPI spec is served at ``/openapi.json``.

Who is calling is decided by the TLS handshake, not by anything in the request: uvicorn is run
with an SSL context that requires a client certificate of the consortium CA (TLS 1.3, revoked
certificates refused), and a small protocol subclass hands the peer's certificate to the app,
which maps it to a party (:meth:`CoordinatorEndpoints.identify`). A site can therefore only
fetch its own tasks, and an update's signer must be the party at the other end of the socket.

A request body is read only once the caller's role allows the route, with a cap (uploads:
:meth:`CoordinatorEndpoints.max_upload_bytes`, derived from the model size) and a time allowance
(:mod:`alliance.transport.limits`); each identity has a bounded number of requests in flight
(429 beyond it). A long-poll waits as a coroutine on the service's
:class:`~alliance.transport.longpoll.ChangeNotifier`, not in a thread. Errors are JSON
``{"error", "detail"}`` with a 4xx status that says what the caller did wrong, never echoing what
it sent; the client turns them back into the matching
:class:`~alliance.core.errors.AllianceError`. Network failures and 5xx are retried with
exponential backoff and jitter, so a site rides out a coordinator restart or a dropped link.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio.to_thread
import httpx
import uvicorn
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from uvicorn.protocols.http.h11_impl import H11Protocol

from alliance.core.errors import (
    AllianceError,
    ConfigError,
    DataError,
    FederationError,
    IntegrityError,
    ProtocolError,
    StoreDamaged,
    TransportError,
)
from alliance.transport.limits import (
    CALLER_KEY,
    ClientGone,
    PayloadTooLarge,
    PerCallerLimit,
    RequestLimits,
    RequestTimedOut,
    TooManyRequests,
    read_body,
)
from alliance.transport.longpoll import ChangeNotifier

__all__ = [
    "CoordinatorEndpoints",
    "HttpClient",
    "NotFoundError",
    "PermissionDenied",
    "RequestLimits",
    "RetryPolicy",
    "create_app",
    "error_responses",
    "identify_caller",
    "run_server",
]

logger = logging.getLogger(__name__)
OCTETS = "application/octet-stream"


class PermissionDenied(AllianceError):  # noqa: N818 - reads as what happened
    """The caller's certificate does not allow this request."""


class NotFoundError(AllianceError):
    """The study or resource named in the request does not exist."""


class CoordinatorEndpoints(Protocol):
    """What the HTTP server asks of the coordinator service (all calls are synchronous)."""

    federation: str
    #: Announces every change of state a long-poll may be waiting for.
    changes: ChangeNotifier

    def identify(self, peer_certificate_der: bytes | None) -> tuple[str, str]:
        """``(name, role)`` of the TLS peer; raises ``PermissionDenied`` if it has none."""
        ...

    def max_upload_bytes(self) -> int:
        """Largest update accepted now."""
        ...

    def next_message(self, site: str, wait_s: float) -> bytes | None:
        """The site's next signed message, waiting up to ``wait_s`` for one."""
        ...

    def submit_update(self, site: str, data: bytes) -> str:
        """Verify and store a signed update; returns ``"accepted"`` or ``"duplicate"``."""
        ...

    def submit_study(self, operator: str, spec: str) -> dict[str, Any]:
        """Queue a study; returns its status."""
        ...

    def study_status(self, study_id: str, *, site: str | None = None) -> dict[str, Any]:
        """Status and per-round metrics of a study (as ``site`` may see them, if given)."""
        ...

    def cancel_study(self, operator: str, study_id: str) -> dict[str, Any]:
        """Cancel a queued or running study; returns its status."""
        ...

    def list_studies(self) -> list[dict[str, Any]]:
        """Every study, oldest first."""
        ...

    def study_spec(self, study_id: str) -> str:
        """The study file's text exactly as submitted."""
        ...

    def study_logs(
        self, study_id: str, after: int, *, site: str | None = None
    ) -> list[dict[str, Any]]:
        """Log lines after sequence number ``after`` (those ``site`` may see, if given)."""
        ...

    def study_model(self, study_id: str, version: int | None, *, site: str | None) -> bytes:
        """A finished study's published model file (``site``: only a study it took part in)."""
        ...

    def study_model_card(self, study_id: str, version: int | None, *, site: str | None) -> bytes:
        """The published model's newest signed card, as JSON bytes."""
        ...

    def dashboard(self, name: str, role: str) -> dict[str, Any]:
        """The consortium dashboard's document as party ``name`` of ``role`` may see it."""
        ...


async def identify_caller(
    service: CoordinatorEndpoints, request: Request, *roles: str
) -> tuple[str, str]:
    """``(name, role)`` of the caller, if its role is one of ``roles``.

    Raises
    ------
    PermissionDenied
        No valid client certificate, or one of another role.
    """
    known: tuple[str, str] | None = getattr(request.state, CALLER_KEY, None)
    if known is None:
        peer = getattr(request.state, "tls_peer_der", None)
        known = await run_in_threadpool(service.identify, peer)
    name, role = known
    if role not in roles:
        raise PermissionDenied(f"a {role} certificate ({name!r}) cannot call {request.url.path}")
    return name, role


# --- server ---------------------------------------------------------------------------------

_STATUS: list[tuple[type[AllianceError], int]] = [
    (PayloadTooLarge, 413),
    (RequestTimedOut, 408),
    (TooManyRequests, 429),
    (PermissionDenied, 403),
    (NotFoundError, 404),
    (IntegrityError, 422),
    (ProtocolError, 400),
    (ConfigError, 400),
    (DataError, 400),
    (FederationError, 409),
    # The coordinator cannot take the request now (its disk refused the audit line, its store
    # is damaged): nothing was recorded, the caller retries.
    (TransportError, 503),
    (StoreDamaged, 503),
]


def _error(exc: AllianceError) -> JSONResponse:
    status = next((code for kind, code in _STATUS if isinstance(exc, kind)), 400)
    return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=status)


class ErrorBody(BaseModel):
    """A refused request: the error's kind and what the caller did wrong."""

    error: str = Field(description="The kind of error, e.g. PermissionDenied or NotFoundError.")
    detail: str = Field(description="What was wrong, and how to fix it.")


_MEANING = {
    400: "Malformed request or invalid content (ProtocolError, ConfigError, DataError)",
    403: "The client certificate does not allow this request (PermissionDenied)",
    404: "No such study (NotFoundError)",
    408: "The request body did not arrive in time (RequestTimedOut)",
    409: "Not possible in the federation's current state (FederationError)",
    413: "The request body is larger than this route accepts (PayloadTooLarge)",
    422: "The update's signature or integrity check failed (IntegrityError)",
    429: "This certificate has too many requests in flight; wait Retry-After seconds",
    503: "Nothing was recorded, retry later: the coordinator's disk is full or its store is "
    "damaged (TransportError, StoreDamaged)",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error statuses a route answers with (always JSON)."""
    body = {"application/json": {"schema": ErrorBody.model_json_schema()}}
    out: dict[int | str, dict[str, Any]] = {
        code: {"description": _MEANING[code], "content": body} for code in (*codes, 429, 503)
    }
    out[429]["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of a route that answers the error ``codes`` (and 429, 503)."""
    return _errors(*codes)


def _invalid(exc: RequestValidationError | ValidationError, what: str) -> ProtocolError:
    """What was wrong with a request's parameters or body, naming where and never the input."""
    problems = []
    for error in exc.errors()[:5]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where or what}: {error.get('msg', 'invalid')}")
    return ProtocolError(f"invalid {what}: " + "; ".join(problems))


class StudySubmission(BaseModel):
    """A study file's text."""

    spec: str = Field(max_length=64_000, description="The study.toml text, exactly as approved.")


_STUDY_BODY = {
    "required": True,
    "content": {"application/json": {"schema": StudySubmission.model_json_schema()}},
}


def create_app(
    service: CoordinatorEndpoints,
    *,
    limits: RequestLimits | None = None,
    pages: Callable[[FastAPI, CoordinatorEndpoints], None] | None = None,
) -> FastAPI:
    """The coordinator's HTTP API over ``service``, with per-caller ``limits``; ``pages``
    adds the routes of pages served beside it (the dashboard, :mod:`alliance.web`)."""
    limits = limits or RequestLimits()
    app = FastAPI(
        title="Guardian Alliance coordinator",
        version="1",
        description="Federated rare-disease diagnosis: sites long-poll tasks and post signed "
        "updates; operators submit and follow studies. Every caller is identified by its "
        "client certificate (mutual TLS).",
    )

    @app.exception_handler(AllianceError)
    async def _alliance_error(request: Request, exc: AllianceError) -> JSONResponse:
        if isinstance(exc, PayloadTooLarge | RequestTimedOut | ClientGone):
            # One line, no traceback: these are the caller's doing, not the coordinator's.
            who = getattr(request.state, CALLER_KEY, ("unidentified", ""))[0]
            logger.warning("%s %s from %r: %s", request.method, request.url.path, who, exc)
        return _error(exc)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(_invalid(exc, "request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The framework's own refusals (unknown path, method, unparsable body) in the same shape.
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only the first route's
            methods = {
                method
                for route in app.routes
                if isinstance(route, APIRoute) and route.matches(request.scope)[0] is Match.PARTIAL
                for method in route.methods or ()
            }
            headers["Allow"] = ", ".join(sorted(methods))
        return JSONResponse(
            {"error": "ProtocolError", "detail": str(exc.detail)},
            status_code=exc.status_code,
            headers=headers,
        )

    async def identify(peer: bytes) -> tuple[str, str] | None:
        try:
            return await run_in_threadpool(service.identify, peer)
        except AllianceError:
            return None  # the route refuses it, saying why

    app.add_middleware(PerCallerLimit, identify=identify, limits=limits)

    async def caller(request: Request, *roles: str) -> str:
        """The caller's name, if its role is one of ``roles`` (``PermissionDenied`` if not)."""
        return (await caller_and_role(request, *roles))[0]

    async def caller_and_role(request: Request, *roles: str) -> tuple[str, str]:
        return await identify_caller(service, request, *roles)

    poll_threads: list[anyio.CapacityLimiter] = []

    async def long_poll(site: str, wait: float) -> bytes | None:
        """Wait as a coroutine, looking for the site's message in a thread at each change."""
        if not poll_threads:  # made in the server's event loop, once
            poll_threads.append(anyio.CapacityLimiter(8))
        changes = service.changes
        loop = asyncio.get_running_loop()
        give_up = loop.time() + wait
        while True:
            seen = changes.version
            data = await anyio.to_thread.run_sync(
                service.next_message, site, 0.0, limiter=poll_threads[0]
            )
            remaining = give_up - loop.time()
            if data is not None or remaining <= 0 or changes.closed:
                return data
            await changes.changed(seen, remaining)

    @app.get("/v1/health", summary="Liveness and the federation's name")
    async def health() -> dict[str, str]:
        return {"status": "ok", "federation": service.federation}

    @app.get(
        "/v1/messages/next",
        summary="Long-poll: the calling site's next signed message",
        responses={
            200: {"content": {OCTETS: {}}},
            204: {"description": "nothing yet"},
            **_errors(400, 403),
        },
        response_class=Response,
    )
    async def next_message(
        request: Request, wait: float = Query(25.0, ge=0, le=60, description="seconds to wait")
    ) -> Response:
        site = await caller(request, "site")
        data = await long_poll(site, wait)
        if data is None:
            return Response(status_code=204)
        return Response(content=data, media_type=OCTETS)

    @app.post(
        "/v1/updates",
        summary="Submit the calling site's signed model update",
        responses=_errors(400, 403, 408, 409, 413, 422),
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
            }
        },
    )
    async def submit_update(request: Request) -> dict[str, str]:
        site = await caller(request, "site")
        limit = await run_in_threadpool(service.max_upload_bytes)
        data = await read_body(request, limit=limit, limits=limits)
        receipt = await run_in_threadpool(service.submit_update, site, data)
        return {"receipt": receipt}

    @app.get("/v1/studies", summary="Every study, oldest first", responses=_errors(400, 403))
    async def list_studies(request: Request) -> list[dict[str, Any]]:
        await caller(request, "operator", "site")
        return await run_in_threadpool(service.list_studies)

    @app.post(
        "/v1/studies",
        status_code=201,
        summary="Submit a study (operators only)",
        responses=_errors(400, 403, 408, 413),
        openapi_extra={"requestBody": _STUDY_BODY},
    )
    async def submit_study(request: Request) -> dict[str, Any]:
        # Who is asking, and how much, before reading a byte of the body.
        operator = await caller(request, "operator")
        raw = await read_body(request, limit=limits.study_bytes, limits=limits)
        try:
            body = StudySubmission.model_validate_json(raw)
        except ValidationError as exc:
            raise _invalid(
                exc, 'study submission (send JSON {"spec": "<study.toml text>"})'
            ) from None
        return await run_in_threadpool(service.submit_study, operator, body.spec)

    @app.get(
        "/v1/studies/{study_id}",
        summary="A study's status and per-round metrics",
        responses=_errors(400, 403, 404),
    )
    async def study_status(request: Request, study_id: str) -> dict[str, Any]:
        name, role = await caller_and_role(request, "operator", "site")
        site = name if role == "site" else None
        return await run_in_threadpool(lambda: service.study_status(study_id, site=site))

    @app.post(
        "/v1/studies/{study_id}/cancel",
        summary="Cancel a queued or running study (operators only)",
        responses=_errors(400, 403, 404, 409),
    )
    async def cancel_study(request: Request, study_id: str) -> dict[str, Any]:
        operator = await caller(request, "operator")
        return await run_in_threadpool(service.cancel_study, operator, study_id)

    @app.get(
        "/v1/studies/{study_id}/spec",
        summary="The study file exactly as submitted (sites check its hash)",
        response_class=PlainTextResponse,
        responses=_errors(400, 403, 404),
    )
    async def study_spec(request: Request, study_id: str) -> PlainTextResponse:
        await caller(request, "operator", "site")
        return PlainTextResponse(await run_in_threadpool(service.study_spec, study_id))

    @app.get(
        "/v1/studies/{study_id}/logs",
        summary="A study's log lines after a sequence number",
        responses=_errors(400, 403, 404),
    )
    async def study_logs(
        request: Request, study_id: str, after: int = Query(0, ge=0, le=2**62)
    ) -> list[dict[str, Any]]:
        name, role = await caller_and_role(request, "operator", "site")
        site = name if role == "site" else None
        return await run_in_threadpool(lambda: service.study_logs(study_id, after, site=site))

    @app.get(
        "/v1/studies/{study_id}/model",
        summary="A finished study's published model file (its hospitals and operators)",
        response_class=Response,
        responses={200: {"content": {OCTETS: {}}}, **_errors(400, 403, 404)},
    )
    async def study_model(
        request: Request,
        study_id: str,
        version: int | None = Query(None, ge=1, le=2**62, description="a published version"),
    ) -> Response:
        name, role = await caller_and_role(request, "operator", "site")
        site = name if role == "site" else None
        data = await run_in_threadpool(lambda: service.study_model(study_id, version, site=site))
        return Response(content=data, media_type=OCTETS)

    @app.get(
        "/v1/studies/{study_id}/model/card",
        summary="The published model's newest signed model card",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}, **_errors(400, 403, 404)},
    )
    async def study_model_card(
        request: Request,
        study_id: str,
        version: int | None = Query(None, ge=1, le=2**62, description="a published version"),
    ) -> Response:
        name, role = await caller_and_role(request, "operator", "site")
        site = name if role == "site" else None
        data = await run_in_threadpool(
            lambda: service.study_model_card(study_id, version, site=site)
        )
        return Response(content=data, media_type="application/json")

    @app.get(
        "/v1/dashboard",
        summary="The consortium dashboard's data (a hospital sees its own figures only)",
        responses=_errors(400, 403),
    )
    async def dashboard(request: Request) -> JSONResponse:
        name, role = await caller_and_role(request, "operator", "site")
        data = await run_in_threadpool(service.dashboard, name, role)
        return JSONResponse(data, headers={"Cache-Control": "no-store"})

    if pages is not None:
        pages(app, service)
    return app


class _PeerCertificateH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, handing the TLS peer certificate to the app.

    The certificate lands in the request scope's ``state`` (``request.state.tls_peer_der``),
    per connection; uvicorn has no ASGI TLS extension of its own.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app_state = {**self.app_state, "tls_peer_der": peer}


def run_server(
    app: FastAPI,
    *,
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    ready: Callable[[int], None] | None = None,
    should_exit: Callable[[], bool] | None = None,
) -> None:
    """Serve ``app`` over HTTPS with ``ssl_context`` until interrupted.

    ``port`` 0 picks a free port; ``ready`` is called with the bound port once listening.

    Raises
    ------
    ConfigError
        If ``host:port`` cannot be listened on (in use, not an address of this machine, a
        privileged port), naming the address and what to do; nothing was served.
    TransportError
        If the server stopped before it was listening.
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=_PeerCertificateH11,
        ssl_context_factory=lambda cfg, default: ssl_context,
        log_level="warning",
        timeout_keep_alive=75,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # Bound here, not by uvicorn, which logs a failure and exits the process (status 3).
    listening = _listen(host, port)

    async def main() -> None:
        watcher: asyncio.Task[None] | None = None
        serving = asyncio.create_task(server.serve(sockets=[listening]))
        while not server.started:
            if serving.done():
                with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot start
                    await serving
                raise TransportError(f"the server stopped before it listened on {host}:{port}")
            await asyncio.sleep(0.05)
        if ready is not None:
            ready(int(listening.getsockname()[1]))
        if should_exit is not None:

            async def watch() -> None:
                while not should_exit():
                    await asyncio.sleep(0.2)
                server.should_exit = True

            watcher = asyncio.create_task(watch())
        await serving
        if watcher is not None:
            watcher.cancel()

    with listening:
        asyncio.run(main())


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port``; :class:`ConfigError` saying why when it cannot be."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as exc:
        raise ConfigError(
            f"cannot listen on {where}: the host is not an address of this machine ({exc}); "
            "set [server] host to one of its addresses, or 0.0.0.0 for all"
        ) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {where}: {_bind_advice(exc)}") from None
    return sock


def _bind_advice(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            "the address is already in use (another coordinator, or another program, listens "
            "there); stop it or set another [server] port"
        )
    if exc.errno == errno.EACCES:
        return (
            "permission denied (ports below 1024 need privileges); set [server] port to 1024 "
            "or more"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            "the host is not an address of this machine; set [server] host to one of its addresses"
        )
    return f"{exc.strerror or exc}; check [server] host and port"


# --- client ---------------------------------------------------------------------------------


class RetryPolicy:
    """Exponential backoff with full jitter: ``uniform(0, min(cap, base · 2^attempt))``."""

    def __init__(self, *, base_s: float = 0.5, cap_s: float = 30.0, give_up_s: float = 3600.0):
        self.base_s, self.cap_s, self.give_up_s = base_s, cap_s, give_up_s

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2**attempt))  # noqa: S311


_ERRORS: dict[str, type[AllianceError]] = {
    cls.__name__: cls
    for cls in (
        PermissionDenied,
        NotFoundError,
        IntegrityError,
        PayloadTooLarge,
        RequestTimedOut,
        TooManyRequests,
        ProtocolError,
        ConfigError,
        DataError,
        FederationError,
    )
}


class HttpClient:
    """An mTLS HTTPS client of the coordinator that retries what is worth retrying.

    Parameters
    ----------
    base_url
        ``https://host:port`` of the coordinator.
    ssl_context
        Client context with this party's certificate (see :mod:`alliance.crypto.tls`).
    retry
        Backoff for connection failures and 5xx answers; 4xx answers are never retried.
    timeout_s
        Per-request timeout besides a long-poll's own wait.
    sleep
        How to wait between retries (tests pass a fake).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ssl_context: ssl.SSLContext,
        retry: RetryPolicy | None = None,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not base_url.startswith("https://"):
            raise ConfigError(f"coordinator address must start with https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout_s = timeout_s
        self.sleep = sleep
        self._client = httpx.Client(base_url=self.base_url, verify=ssl_context, http2=False)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        extra_timeout_s: float = 0.0,
        on_retry: Callable[[int, str], None] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying network failures, 5xx and 429; raise the server's 4xx errors.

        A 429 is retried after the server's ``Retry-After`` (at most 60 s), counted against the
        policy's ``give_up_s``.
        """
        started = time.monotonic()
        attempt = 0
        while True:
            wait: float | None = None
            try:
                response = self._client.request(
                    method, path, timeout=self.timeout_s + extra_timeout_s, **kwargs
                )
                if response.status_code == 429:
                    wait = _retry_after(response)
                elif response.status_code < 500:
                    return self._checked(response)
                problem = f"coordinator answered {response.status_code}{_reason(response)}"
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started > self.retry.give_up_s:
                raise TransportError(
                    f"{method} {self.base_url}{path} failed for {self.retry.give_up_s:.0f} s "
                    f"({problem}); check the coordinator address and the network"
                )
            delay = self.retry.delay(attempt) if wait is None else wait
            logger.warning("%s %s: %s; retrying in %.1f s", method, path, problem, delay)
            if on_retry is not None:
                on_retry(attempt, problem)
            self.sleep(delay)
            attempt += 1

    def _checked(self, response: httpx.Response) -> httpx.Response:
        if response.status_code < 400:
            return response
        try:
            payload = response.json()
            kind, detail = payload["error"], payload["detail"]
        except (ValueError, KeyError, TypeError):
            kind, detail = "ProtocolError", response.text[:500]
        raise _ERRORS.get(kind, ProtocolError)(f"coordinator refused: {detail}")


def _retry_after(response: httpx.Response) -> float:
    """Seconds a 429 asks to wait (``Retry-After`` in seconds, 1 if absent; at most 60)."""
    text = response.headers.get("retry-after", "1").strip()
    seconds = float(text) if text.isdigit() else 1.0
    return min(max(seconds, 0.1), 60.0)


def _reason(response: httpx.Response) -> str:
    """``": <detail>"`` of an error answer in the API's shape (a 503 says why), else ``""``."""
    try:
        detail = response.json()["detail"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {str(detail)[:300]}"
