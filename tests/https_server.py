"""A real HTTPS server for the tests: uvicorn on a free loopback port, in a thread of the test.

:func:`serve_app` runs :func:`~alliance.transport.http.run_server` with the TLS context a test
built from the project's own certificates, and stops it when the ``with`` block ends.
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI

from alliance.transport.http import run_server


@contextmanager
def serve_app(
    app: FastAPI, context: ssl.SSLContext, *, start_s: float = 30.0, stop_s: float = 10.0
) -> Iterator[int]:
    """Serve ``app`` over HTTPS on 127.0.0.1 and yield the port it bound.

    The server must listen within ``start_s``; on exit it is told to stop and waited for up to
    ``stop_s`` (a daemon thread, so one that hangs cannot keep the test process alive).
    """
    stop, ready = threading.Event(), threading.Event()
    ports: list[int] = []

    def on_ready(port: int) -> None:
        ports.append(port)
        ready.set()

    thread = threading.Thread(
        target=run_server,
        kwargs={
            "app": app,
            "host": "127.0.0.1",
            "port": 0,
            "ssl_context": context,
            "ready": on_ready,
            "should_exit": stop.is_set,
        },
        daemon=True,
    )
    thread.start()
    assert ready.wait(start_s), "the HTTPS server did not start"
    try:
        yield ports[0]
    finally:
        stop.set()
        thread.join(stop_s)
