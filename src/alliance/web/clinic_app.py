"""The clinician's page over HTTP: one page, its script and style, and three JSON routes.

==========================  ==========================================================
``GET /``                   the page (``static/clinic.html``)
``GET /static/{file}``      its script and style, from the package
``GET /api/model``          which model answers, and the "research use" notices
``POST /api/terms``         ``{"q": "seizure"}`` → matching HPO terms (English, Chinese)
``POST /api/differential``  ``{"observed": [...], "excluded": [...], "top": 10}``
==========================  ==========================================================

What the clinician types travels only in POST bodies, never in a URL, and uvicorn's access log
is off, so no log line anywhere holds a finding; the app logs nothing of a request either. A
bad request (an unknown term, a malformed body) is answered ``400``/``422`` with
``{"error": message}``, which the page shows; an unexpected failure ``500`` with a fixed
message and only its type in the log, never a traceback to the browser.

Every response forbids what an air-gapped page must never do: its Content-Security-Policy lets
the page load and call only its own origin (no CDN, font or image from elsewhere), and nothing
is cached. FastAPI's interactive docs are off, since they load from a CDN.

:func:`serve_clinic` binds the socket itself, so that a port in use is a one-line
:class:`~alliance.core.errors.ConfigError`, and ``port=0`` picks a free port.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from alliance.core.errors import AllianceError, ConfigError, DataError
from alliance.web.clinic import MAX_FINDINGS, MAX_QUERY, Clinic

__all__ = ["create_clinic_app", "serve_clinic"]

logger = logging.getLogger(__name__)

#: The largest request body read: a hundred findings fit many times over.
MAX_BODY = 64 * 1024
_ASSETS = {
    "clinic.js": "text/javascript; charset=utf-8",
    "clinic.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class TermQuery(BaseModel):
    """Body of ``POST /api/terms``."""

    q: Annotated[str, Field(max_length=MAX_QUERY)]
    limit: Annotated[int, Field(ge=1, le=50)] = 10


class Findings(BaseModel):
    """Body of ``POST /api/differential``: HPO ids only, no patient identifier."""

    observed: Annotated[list[Annotated[str, Field(max_length=20)]], Field(max_length=MAX_FINDINGS)]
    excluded: Annotated[
        list[Annotated[str, Field(max_length=20)]], Field(max_length=MAX_FINDINGS)
    ] = []
    top: Annotated[int, Field(ge=1, le=50)] = 10


def _asset(name: str) -> str:
    return resources.files("alliance.web").joinpath("static", name).read_text(encoding="utf-8")


def _answer(work: Callable[[], Any]) -> Any:
    """``work()``'s result, or the JSON error the page shows."""
    try:
        return work()
    except AllianceError as exc:
        status = 400 if isinstance(exc, DataError | ConfigError) else 500
        return JSONResponse({"error": str(exc)}, status_code=status)
    except Exception as exc:
        # The message could quote what was typed: only the type is logged.
        logger.error("clinic request failed: %s", type(exc).__name__)
        return JSONResponse(
            {"error": "the clinic could not answer (an internal error); try again"},
            status_code=500,
        )


def _validation_message(exc: RequestValidationError) -> str:
    # Pydantic's errors carry the input: name where the body is wrong, never what it held.
    parts = []
    for error in exc.errors()[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "bad request: " + "; ".join(parts)


def create_clinic_app(clinic: Clinic) -> FastAPI:
    """The clinician's page and its routes over ``clinic``."""
    app = FastAPI(title="Guardian Alliance clinic", docs_url=None, redoc_url=None, openapi_url=None)
    page = _asset("clinic.html")
    assets = {name: _asset(name) for name in _ASSETS}

    @app.middleware("http")
    async def headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        declared = request.headers.get("content-length", "0")
        if not declared.isdigit() or int(declared) > MAX_BODY:
            response: Response = JSONResponse(
                {"error": f"request body over {MAX_BODY} bytes; send fewer findings"},
                status_code=413,
            )
        else:
            response = await call_next(request)
        response.headers.update(_HEADERS)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(page, media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in assets:
            return JSONResponse({"error": f"no asset {name!r}"}, status_code=404)
        return Response(assets[name], media_type=_ASSETS[name])

    @app.get("/api/model")
    def model() -> Any:
        return clinic.model.describe()

    @app.post("/api/terms")
    def terms(query: TermQuery) -> Any:
        return _answer(
            lambda: {"terms": [m.__dict__ for m in clinic.search(query.q, limit=query.limit)]}
        )

    @app.post("/api/differential")
    def differential(findings: Findings) -> Any:
        return _answer(
            lambda: {
                "candidates": clinic.differential(
                    findings.observed, findings.excluded, top=findings.top
                ),
                "observed": [clinic.term(t) for t in _current(clinic, findings.observed)],
                "excluded": [clinic.term(t) for t in _current(clinic, findings.excluded)],
                "model": clinic.model.describe(),
            }
        )

    return app


def _current(clinic: Clinic, terms: list[str]) -> list[str]:
    return list(dict.fromkeys(clinic.ontology.resolve(t) for t in terms))


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"the clinic cannot listen on {host!r}: not an address of this machine "
            f"({exc.strerror}); give --host an address such as 127.0.0.1 or 0.0.0.0"
        ) from None
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ConfigError(
            f"the clinic cannot listen on {host}:{port} ({reason}); "
            "choose another --host or --port, or stop what uses the port"
        ) from None


def serve_clinic(
    clinic: Clinic,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    ready: Callable[[int], None] | None = None,
    should_exit: Callable[[], bool] | None = None,
) -> None:
    """Serve the page until interrupted (or ``should_exit()`` is true, checked every 0.2 s);
    ``ready`` gets the bound port once listening.

    Raises
    ------
    ConfigError
        The address cannot be bound (a port in use, a host not of this machine).
    """
    sock = _listen(host, port)
    config = uvicorn.Config(
        create_clinic_app(clinic),
        access_log=False,
        log_config=None,
        log_level="warning",
        server_header=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not serving.done():
            await asyncio.sleep(0.05)
        if server.started and ready is not None:
            ready(int(sock.getsockname()[1]))
        while should_exit is not None and not serving.done():
            if should_exit():
                server.should_exit = True
                break
            await asyncio.sleep(0.2)
        await serving

    with sock:
        asyncio.run(main())
