"""The coordinator's HTTPS server under requests that try to hold it: limits, sizes, timeouts.

A real uvicorn server with mutual TLS on loopback (see ``coordinator_https.py``). One site's
certificate must not be able to stall anybody else: its long-polls beyond its own limit get 429
while another site and an operator are served at once; long-polls hold no request thread. A
request body is only read once the caller's role allows the route and its declared size fits
(refused with 403 or 413 while the body is still on its way); a body that stalls or trickles is
cut off with 408 and one log line; no error answer echoes what was sent.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tests.integration.coordinator_https import Running, provision, serving

from alliance.transport.http import HttpClient, RequestLimits, RetryPolicy

CROWD = 45  # more long-polls than the request thread pool (40) once had workers
SITES = [f"site-{i:02d}" for i in range(CROWD)]
MB = 1 << 20


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("limits")
    provision(path, SITES)
    return path


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[Running]:
    with serving(root, limits=RequestLimits(body_timeout_s=1.0)) as running:
        yield running


def _poll(server: Running, site: str, wait: float) -> httpx.Response:
    with server.client(site) as c:
        return c.get("/v1/messages/next", params={"wait": wait})


def _timed(call: object) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call()  # type: ignore[operator]
    return time.monotonic() - started, response


def _while_crowded(server: Running, sites: list[str], wait: float) -> dict[str, object]:
    """Hold ``sites`` in long-polls of ``wait`` s; meanwhile time another site and an operator."""
    with ThreadPoolExecutor(len(sites)) as pool:
        polls = [pool.submit(_poll, server, s, wait) for s in sites]
        time.sleep(1.5)  # every poll is connected and waiting
        with server.client("site-44") as other, server.client("operator") as op:
            other_s, other_r = _timed(lambda: other.get("/v1/messages/next", params={"wait": 0}))
            op_s, op_r = _timed(lambda: op.get("/v1/studies"))
        answers = [p.result(timeout=wait + 30) for p in polls]
    return {"answers": answers, "other": (other_s, other_r), "operator": (op_s, op_r)}


def test_long_polls_of_many_sites_hold_no_request_thread(server: Running) -> None:
    """44 sites long-poll at once; a 45th site and an operator are answered at once."""
    seen = _while_crowded(server, SITES[:44], wait=8)
    answers = seen["answers"]
    assert [r.status_code for r in answers] == [204] * 44  # type: ignore[attr-defined]
    other_s, other = seen["other"]  # type: ignore[misc]
    op_s, op = seen["operator"]  # type: ignore[misc]
    assert (other.status_code, op.status_code) == (204, 200)
    # Held behind the polls they would take 6.5 s or more; served at once they take a TLS
    # handshake (the bound is wide for a loaded, shared 2-core machine).
    assert other_s < 4, other_s
    assert op_s < 4, op_s


def test_one_site_beyond_its_limit_gets_429_and_nobody_else_waits(server: Running) -> None:
    seen = _while_crowded(server, ["site-00"] * CROWD, wait=8)
    answers: list[httpx.Response] = seen["answers"]  # type: ignore[assignment]
    codes = sorted(r.status_code for r in answers)
    refused = [r for r in answers if r.status_code == 429]
    assert set(codes) == {204, 429}, codes
    assert 1 <= codes.count(204) <= 16, codes
    for r in refused:
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"] == "TooManyRequests"
        assert "site-00" in r.json()["detail"]
    other_s, other = seen["other"]  # type: ignore[misc]
    op_s, op = seen["operator"]  # type: ignore[misc]
    assert (other.status_code, op.status_code) == (204, 200)
    assert other_s < 4, other_s
    assert op_s < 4, op_s
    # The site's slots are given back: it polls again normally.
    assert _poll(server, "site-00", 0).status_code == 204


def _answer_so_far(sock: ssl.SSLSocket) -> bytes:
    """Whatever the server has answered yet, without waiting (TLS tickets are not answers)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except (ssl.SSLWantReadError, BlockingIOError):
        return b""
    finally:
        sock.setblocking(True)


def _read_answer(sock: ssl.SSLSocket, start: bytes = b"") -> bytes:
    """The whole answer: status line, headers and a body of its Content-Length."""
    sock.settimeout(10)
    data = start
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return data
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return head + b"\r\n\r\n" + body


def _send_until_answered(
    server: Running, party: str, head: bytes, body_bytes: int, *, chunked: bool = False
) -> tuple[bytes, int]:
    """Send ``head`` then up to ``body_bytes`` of body; stop as soon as the server answers.

    Returns the answer and how many body bytes were sent by then.
    """
    sock = server.raw(party)
    sent = 0
    block = b"x" * (64 * 1024)
    answer = b""
    try:
        sock.sendall(head)
        while sent < body_bytes and not answer:
            piece = block if not chunked else b"%x\r\n%s\r\n" % (len(block), block)
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(block)
            time.sleep(0.02)  # 3.2 MB/s: the server, in this process, gets its turn to answer
            answer = _answer_so_far(sock)
        answer = _read_answer(sock, answer)
    finally:
        sock.close()
    return answer, sent


def _head(path: str, length: int | None) -> bytes:
    size = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (
        b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n%s\r\n\r\n"
        % (
            path.encode(),
            size,
        )
    )


@pytest.mark.parametrize("length", [50 * MB, None], ids=["declared", "chunked"])
def test_a_site_posting_a_study_is_refused_before_its_body_is_read(
    server: Running, length: int | None
) -> None:
    answer, sent = _send_until_answered(
        server, "site-01", _head("/v1/studies", length), 50 * MB, chunked=length is None
    )
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert sent < 5 * MB, sent


@pytest.mark.parametrize(
    ("party", "path"),
    [("operator", "/v1/studies"), ("site-01", "/v1/updates")],
    ids=["study", "update"],
)
@pytest.mark.parametrize("length", [50 * MB, None], ids=["declared", "chunked"])
def test_an_oversized_body_is_refused_with_413_before_it_is_read(
    server: Running, party: str, path: str, length: int | None
) -> None:
    answer, sent = _send_until_answered(
        server, party, _head(path, length), 50 * MB, chunked=length is None
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"exceeds the limit" in answer
    assert sent < 5 * MB, sent


MARKER = "ECHO-CANARY-" + "z" * 40


@pytest.mark.parametrize(
    ("party", "method", "path", "kwargs"),
    [
        ("operator", "POST", "/v1/studies", {"content": f'{{"spec": 1, "{MARKER}": 2}}'}),
        ("operator", "POST", "/v1/studies", {"content": f"not json {MARKER}"}),
        ("operator", "POST", "/v1/studies", {"json": {"spec": [MARKER]}}),
        ("site-01", "GET", "/v1/messages/next", {"params": {"wait": MARKER}}),
        ("operator", "GET", "/v1/studies/x/logs", {"params": {"after": MARKER}}),
    ],
    ids=["unknown-field", "not-json", "wrong-type", "poll-wait", "logs-after"],
)
def test_errors_name_what_was_wrong_without_echoing_the_input(
    server: Running, party: str, method: str, path: str, kwargs: dict[str, object]
) -> None:
    with server.client(party) as c:
        response = c.request(method, path, headers={"content-type": "application/json"}, **kwargs)  # type: ignore[arg-type]
    assert 400 <= response.status_code < 500
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert MARKER not in response.text
    assert body["detail"]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(logging.Formatter().format(record))


@pytest.fixture
def server_log() -> Iterator[list[str]]:
    handler = _Lines()
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "alliance")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler.lines
    for lg in loggers:
        lg.removeHandler(handler)


@pytest.mark.parametrize("how", ["stalled", "trickled", "hung-up"])
def test_a_lying_or_slow_body_is_cut_off_with_one_clean_log_line(
    server: Running, server_log: list[str], how: str
) -> None:
    sock = server.raw("operator")
    answer = b""
    started = time.monotonic()
    try:
        sock.sendall(_head("/v1/studies", 4000) + b'{"spec": "')
        if how == "trickled":
            sock.settimeout(0.2)
            while time.monotonic() - started < 10 and not answer:
                try:
                    sock.sendall(b"a")
                    answer = sock.recv(4096)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
        if how == "hung-up":
            sock.close()
            time.sleep(1.5)
        else:
            sock.settimeout(10)
            answer = answer or sock.recv(4096)
    finally:
        sock.close()
    took = time.monotonic() - started
    if how != "hung-up":
        assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
        assert took < 8, took
    time.sleep(0.3)
    text = "\n".join(server_log)
    assert "Traceback" not in text
    mine = [line for line in server_log if "/v1/studies" in line]
    assert len(mine) == 1, server_log
    assert "operator" in mine[0]
    assert len(mine[0]) < 300


def test_the_site_client_waits_out_a_429_and_retries(server: Running) -> None:

    waits: list[float] = []
    client = HttpClient(
        server.url,
        ssl_context=server.context("site-02"),
        retry=RetryPolicy(base_s=0.01, cap_s=0.02, give_up_s=30),
        sleep=lambda s: (waits.append(s), time.sleep(s))[-1],  # type: ignore[func-returns-value]
    )
    with ThreadPoolExecutor(CROWD) as pool:
        hogs = [pool.submit(_poll, server, "site-02", 8) for _ in range(CROWD)]
        deadline = time.monotonic() + 20
        while _poll(server, "site-02", 0).status_code != 429:  # until its slots are all taken
            assert time.monotonic() < deadline, "site-02's long-polls never filled its slots"
            time.sleep(0.2)
        started = time.monotonic()
        response = client.request("GET", "/v1/messages/next", params={"wait": 0})
        took = time.monotonic() - started
        for h in hogs:
            h.result(timeout=30)
    client.close()
    assert response.status_code == 204
    assert waits
    assert max(waits) >= 1.0  # the server's Retry-After, not the tiny backoff
    assert took < 30
