"""What one caller may ask of the coordinator's HTTPS server: concurrency, body size, read time.

No single certificate may stall the coordinator for everybody else:

- :class:`PerCallerLimit` counts each identity's requests in flight (the name in its client
  certificate) and answers those beyond :attr:`RequestLimits.max_in_flight` at once with 429
  and ``Retry-After``; that caller's other requests, and everyone else's, go on untouched.
- :func:`read_body` reads a request body only up to a size limit (a declared
  ``Content-Length`` above it is refused with 413 before a byte is read) and within a time
  allowance (:attr:`RequestLimits.body_timeout_s` plus what the body's size takes at
  :attr:`RequestLimits.min_body_rate` bytes per second): a body that stalls, trickles or lies
  about its length is refused with 408. A caller that hangs up mid-body ends the request
  quietly. Routes call it only once the caller's role allows them, so a body a caller may
  not send is never read at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from alliance.core.errors import AllianceError, ProtocolError

__all__ = [
    "ClientGone",
    "PayloadTooLarge",
    "PerCallerLimit",
    "RequestLimits",
    "RequestTimedOut",
    "TooManyRequests",
    "read_body",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: Where the middleware leaves ``(name, role)`` of the caller in the request's ``state``.
CALLER_KEY = "alliance_caller"


class PayloadTooLarge(ProtocolError):  # noqa: N818 - reads as what happened
    """The request body is larger than the route accepts (HTTP 413)."""


class RequestTimedOut(ProtocolError):  # noqa: N818 - reads as what happened
    """The request body did not arrive in the time allowed (HTTP 408)."""


class ClientGone(ProtocolError):  # noqa: N818 - reads as what happened
    """The caller hung up before its request body was complete."""


class TooManyRequests(AllianceError):  # noqa: N818 - reads as the HTTP status it is
    """The caller has as many requests in flight as it may (HTTP 429)."""


@dataclass(frozen=True)
class RequestLimits:
    """Per-caller limits of the coordinator's HTTPS server.

    Parameters
    ----------
    max_in_flight
        Requests one identity may have in flight at once (a site needs one long-poll and an
        upload or two).
    retry_after_s
        Seconds a caller refused with 429 is told to wait.
    body_timeout_s
        Seconds any request body may take, on top of its size at ``min_body_rate``.
    min_body_rate
        Slowest upload, in bytes per second, that still counts as progress.
    study_bytes
        Largest ``POST /v1/studies`` body (a JSON-quoted study file of up to 64 000 characters).
    """

    max_in_flight: int = 8
    retry_after_s: int = 1
    body_timeout_s: float = 30.0
    min_body_rate: float = 64 * 1024
    study_bytes: int = 512 * 1024


async def read_body(request: Request, *, limit: int, limits: RequestLimits) -> bytes:
    """The request's body, at most ``limit`` bytes, within the time ``limits`` allow.

    Raises
    ------
    PayloadTooLarge
        Declared or streamed size above ``limit`` (checked before reading, then per chunk).
    RequestTimedOut
        The body did not arrive in time.
    ClientGone
        The caller disconnected mid-body.
    """
    declared_text = request.headers.get("content-length")
    declared = int(declared_text) if declared_text is not None and declared_text.isdigit() else 0
    if declared > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds the limit of {limit} bytes"
        )
    loop = asyncio.get_running_loop()
    started = loop.time()
    chunks: list[bytes] = []
    size = 0
    stream = request.stream().__aiter__()
    while True:
        allowance = limits.body_timeout_s + max(declared, size) / limits.min_body_rate
        try:
            async with asyncio.timeout_at(started + allowance):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return b"".join(chunks)
        except TimeoutError:
            raise RequestTimedOut(
                f"request body incomplete after {loop.time() - started:.0f} s ({size} of "
                f"{declared or 'unknown'} bytes); send the whole body at once"
            ) from None
        except ClientDisconnect:
            raise ClientGone(f"caller hung up after {size} bytes of its request body") from None
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(
                f"request body of at least {size} bytes exceeds the limit of {limit} bytes"
            )
        chunks.append(chunk)


class PerCallerLimit:
    """ASGI middleware: at most ``limits.max_in_flight`` requests per identity at once.

    Parameters
    ----------
    app
        The application.
    identify
        ``(name, role)`` of a TLS peer certificate (DER), or ``None`` if it identifies nobody;
        requests without a certificate or of nobody go through uncounted, for the routes to
        refuse.
    limits
        The limits.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        identify: Callable[[bytes], Awaitable[tuple[str, str] | None]],
        limits: RequestLimits,
    ) -> None:
        self.app = app
        self.identify = identify
        self.limits = limits
        self.in_flight: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Count the caller in, refuse it with 429 over its limit, count it out when done."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        peer = state.get("tls_peer_der")
        caller = None if peer is None else await self.identify(peer)
        if caller is None:
            await self.app(scope, receive, send)
            return
        state[CALLER_KEY] = caller
        name = caller[0]
        if self.in_flight.get(name, 0) >= self.limits.max_in_flight:
            refusal = JSONResponse(
                {
                    "error": TooManyRequests.__name__,
                    "detail": f"{caller[1]} {name!r} already has {self.limits.max_in_flight} "
                    f"requests in flight; retry after {self.limits.retry_after_s} s",
                },
                status_code=429,
                headers={"Retry-After": str(self.limits.retry_after_s)},
            )
            await refusal(scope, receive, send)
            return
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            left = self.in_flight[name] - 1
            if left:
                self.in_flight[name] = left
            else:
                del self.in_flight[name]
