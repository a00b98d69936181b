"""A bounded load test of the coordinator's HTTPS server: 120 hospitals long-poll at once.

The coordinator runs as a real process (``alliance coordinator serve``) on loopback, with the
consortium's certificates made by the project's own provisioning. 120 sites, each with its own
certificate, hold a long-poll open together while an operator follows a study; every poll must
end with 204 (no message was due: the study waits for a hospital that never comes), no request
may fail, and the operator's calls must be answered promptly (p95 at most 1 s). The figures are
printed (``pytest -s``) for the closing note.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from statistics import quantiles
from typing import Any

import httpx
import pytest
from tests.integration.coordinator_https import Running, provision

pytestmark = pytest.mark.slow

SITES = [f"h{i:03d}" for i in range(120)]
POLL_S = 10.0
OPERATOR_CALLS = 60
STUDY = """[study]
id = "waiting"
rounds = 1
sites = ["absent-hospital"]
quorum = 1

[model]
kind = "phenotype-ranker"
dim = 8
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    root = tmp_path_factory.mktemp("load")
    provision(root, SITES)
    port = _free_port()
    config = root / "coordinator.toml"
    config.write_text(
        f"""federation = "guardian"

[server]
host = "127.0.0.1"
port = {port}

[tls]
certificate = "coordinator/party.crt"
key = "coordinator/party.key"
signing_key = "coordinator/signing.key"
ca = "ca/ca.crt"

[store]
url = "sqlite:///coordinator.db"

[audit]
path = "audit.log"
"""
    )
    out = (root / "coordinator.out").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "alliance.cli.app", "coordinator", "serve", "--config", str(config)],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (root / "coordinator.out").read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        yield Running(f"https://127.0.0.1:{port}", port, root, None)  # type: ignore[arg-type]
    finally:
        proc.terminate()
        proc.wait(20)
        out.close()


def _figures(samples: list[float]) -> dict[str, float]:
    cuts = quantiles(samples, n=100, method="inclusive")
    return {"p50": cuts[49], "p95": cuts[94], "max": max(samples), "n": len(samples)}


class _Crowd:
    """Sites that connect (TLS handshake and a health check), then long-poll together."""

    def __init__(self, server: Running) -> None:
        self.server = server
        self.connected: list[float] = []
        self.all_connected = asyncio.Event()

    async def poll(self, site: str) -> tuple[int, float]:
        context = self.server.context(site)
        async with httpx.AsyncClient(
            base_url=self.server.url, verify=context, timeout=POLL_S + 30
        ) as c:
            started = time.monotonic()
            assert (await c.get("/v1/health")).status_code == 200
            self.connected.append(time.monotonic() - started)
            if len(self.connected) == len(SITES):
                self.all_connected.set()
            started = time.monotonic()
            response = await c.get("/v1/messages/next", params={"wait": POLL_S})
            return response.status_code, time.monotonic() - started

    async def operator(self) -> list[float]:
        paths = ["/v1/studies", "/v1/studies/waiting", "/v1/studies/waiting/logs"]
        took: list[float] = []
        context = self.server.context("operator")
        async with httpx.AsyncClient(base_url=self.server.url, verify=context, timeout=30) as c:
            await asyncio.wait_for(self.all_connected.wait(), 60)
            await asyncio.sleep(0.5)  # every poll is in flight
            for i in range(OPERATOR_CALLS):
                started = time.monotonic()
                response = await c.get(paths[i % len(paths)])
                took.append(time.monotonic() - started)
                assert response.status_code == 200, response.text
                await asyncio.sleep(0.05)
        return took

    async def run(self) -> dict[str, Any]:
        operator = asyncio.create_task(self.operator())
        answers = await asyncio.gather(*(self.poll(s) for s in SITES), return_exceptions=True)
        return {
            "errors": [a for a in answers if isinstance(a, BaseException) or a[0] != 204],
            "polls": [a[1] for a in answers if not isinstance(a, BaseException)],
            "operator": await operator,
        }


def test_120_long_polls_and_an_operator_are_all_served(coordinator: Running) -> None:
    with coordinator.client("operator") as c:
        assert c.post("/v1/studies", json={"spec": STUDY}).status_code == 201
    started = time.monotonic()
    crowd = _Crowd(coordinator)
    seen = asyncio.run(crowd.run())
    wall = time.monotonic() - started
    operator = _figures(seen["operator"])
    polls = _figures(seen["polls"])
    print(
        "\nload: "
        + json.dumps(
            {
                "sites": len(SITES),
                "poll_wait_s": POLL_S,
                "errors": len(seen["errors"]),
                "connect_s": _figures(crowd.connected),
                "operator_s": operator,
                "poll_s": polls,
                "wall_s": wall,
                "cpus": os.cpu_count(),
            },
            indent=1,
        )
    )
    assert seen["errors"] == []
    assert operator["n"] == OPERATOR_CALLS
    assert operator["p95"] <= 1.0, operator
    # A poll ends when its wait is over, not later behind the others.
    assert polls["max"] < POLL_S + 10, polls
