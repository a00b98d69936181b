"""The consortium's revocation list on a running coordinator: renewal ends an outage, no rollback.

A real ``alliance coordinator serve`` process with the consortium made by ``alliance consortium
init``; hospitals connect with their own bundles over mutual TLS 1.3. No study runs: what is
checked is who gets through the handshake, and what the coordinator says in its log.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from tests.e2e.deployment import Deployment, free_port
from typer.testing import CliRunner

from alliance.cli.consortium import app as consortium_app
from alliance.crypto import CertificateAuthority
from alliance.crypto.tls import client_context

SITES = ("site-a", "site-b")
pytestmark = pytest.mark.slow  # a coordinator process per test (starting one takes seconds)


def _consortium(root: Path, *, crl_days: int = 30) -> Deployment:
    port = free_port()
    lines = ["[coordinator]", 'host = "127.0.0.1"', f"port = {port}", ""]
    for site in SITES:
        lines += ["[[site]]", f'id = "{site}"', ""]
    (root / "sites.toml").write_text("\n".join(lines), encoding="utf-8")
    _cli("init", "crl-test", "--sites", str(root / "sites.toml"), "--out", str(root / "consortium"))
    d = Deployment(root, SITES, port)
    toml = d.coordinator_dir / "coordinator.toml"
    toml.write_text(toml.read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"'))
    return d


def _cli(*args: str) -> str:
    result = CliRunner().invoke(consortium_app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def _handshake(d: Deployment, site: str) -> int | str:
    """The status of ``GET /v1/messages/next`` as ``site``, or the transport error's text."""
    folder = d.site_dir(site)
    context = client_context(
        certificate=folder / "site.crt", key=folder / "site.key", ca=folder / "ca.crt"
    )
    url = f"https://127.0.0.1:{d.port}"
    try:
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            return client.get("/v1/messages/next", params={"wait": 0}).status_code
    except httpx.TransportError as exc:
        return f"refused: {exc!r}"


def _wait_for_log(d: Deployment, text: str, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        log = (d.root / "coordinator.out").read_text(errors="replace")
        if text in log or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = _consortium(tmp_path)
    yield d
    d.stop()


def test_renewing_an_expired_crl_ends_the_outage_without_a_restart(
    deployment: Deployment,
) -> None:
    d = deployment
    ca_dir = d.root / "consortium" / "ca"
    # A CRL that expired yesterday, made with the provisioning API, as if nobody renewed it.
    ca = CertificateAuthority.load(ca_dir)
    ca.crl(valid_days=1, now=datetime.now(UTC) - timedelta(days=2))
    ca.save(ca_dir)
    shutil.copyfile(ca_dir / "crl.pem", d.coordinator_dir / "crl.pem")
    d.start_coordinator()
    outage = _handshake(d, "site-a")
    assert isinstance(outage, str), outage
    log = _wait_for_log(d, "expired on")
    assert "revocation list (CRL number 2" in log, log
    assert "alliance consortium renew-crl" in log, log

    # The fix the CLI prints: renew, and copy crl.pem to the coordinator (init's layout puts
    # the coordinator's copy in place already).
    output = _cli("renew-crl", str(d.root / "consortium"))
    assert "no restart needed" in " ".join(output.split())
    assert _handshake(d, "site-a") == 204
    assert _handshake(d, "site-b") == 204
    log = _wait_for_log(d, "against CRL number 3")
    assert "TLS now checks clients against CRL number 3" in log, log
    assert d.coordinator is not None
    assert d.coordinator.poll() is None


def _restart(d: Deployment) -> tuple[int, str] | None:
    """Stop the coordinator and start it again: its exit code and output if it refused to
    start, ``None`` if it listens again."""
    assert d.coordinator is not None
    d.coordinator.send_signal(signal.SIGTERM)
    d.coordinator.wait(timeout=30)
    try:
        d.start_coordinator()
    except AssertionError:
        assert d.coordinator.poll() is not None
        return d.coordinator.returncode, (d.root / "coordinator.out").read_text(errors="replace")
    return None


def test_an_older_crl_copied_back_is_refused_and_the_revoked_site_stays_out(
    deployment: Deployment,
) -> None:
    d = deployment
    crl_file = d.coordinator_dir / "crl.pem"
    before_revocation = crl_file.read_bytes()  # CRL number 1
    d.start_coordinator()
    assert _handshake(d, "site-b") == 204
    _cli("revoke-site", str(d.root / "consortium"), "site-b")  # CRL number 2, in place
    assert _handshake(d, "site-b") != 204
    assert _handshake(d, "site-a") == 204

    crl_file.write_bytes(before_revocation)  # someone restores yesterday's backup
    finished = _restart(d)
    assert finished is not None, "the coordinator started with an older CRL"
    code, output = finished
    assert code == 2, output
    message = " ".join(output.split())  # the terminal wraps long lines
    assert "is CRL number 1" in message
    assert "CRL number 2 this party already" in message
    assert "Copy the newest crl.pem" in message
    assert "Traceback" not in message
    assert (d.coordinator_dir / "crl-number.json").exists()

    # With the newest list back, the coordinator serves again and site-b stays out.
    shutil.copyfile(d.root / "consortium" / "ca" / "crl.pem", crl_file)
    d.start_coordinator()
    assert _handshake(d, "site-a") == 204
    assert _handshake(d, "site-b") != 204


def test_an_older_crl_copied_in_while_running_is_refused_and_logged(
    deployment: Deployment,
) -> None:
    d = deployment
    crl_file = d.coordinator_dir / "crl.pem"
    before_revocation = crl_file.read_bytes()
    d.start_coordinator()
    _cli("revoke-site", str(d.root / "consortium"), "site-b")
    assert _handshake(d, "site-b") != 204
    crl_file.write_bytes(before_revocation)
    assert _handshake(d, "site-b") != 204
    log = _wait_for_log(d, "refused the new file")
    assert "is CRL number 1, older than the CRL in use (number 2)" in " ".join(log.split()), log


def test_a_hospital_checking_the_crl_refuses_an_older_one_after_a_restart(
    deployment: Deployment,
) -> None:
    d = deployment
    folder = d.site_dir("site-a")
    (folder / "cases.train.jsonl").write_text("", encoding="utf-8")
    toml = folder / "site.toml"
    body = toml.read_text().replace('ca = "ca.crt"\n', 'ca = "ca.crt"\ncrl = "crl.pem"\n')
    toml.write_text(body.replace('test = ""', "# no held-out cases"))
    ca_crl = d.root / "consortium" / "ca" / "crl.pem"
    before_revocation = ca_crl.read_bytes()  # CRL number 1
    _cli("revoke-site", str(d.root / "consortium"), "site-b")
    shutil.copyfile(ca_crl, folder / "crl.pem")  # CRL number 2
    floor = folder / "state" / "crl-number.json"
    d.start_site("site-a")  # no coordinator runs: the agent starts and keeps polling
    deadline = time.monotonic() + 60
    while not floor.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert floor.exists(), d.log("site-site-a.out")
    assert '"crl_number": 2' in floor.read_text()
    d.site_procs["site-a"].send_signal(signal.SIGTERM)
    d.site_procs["site-a"].wait(timeout=30)

    (folder / "crl.pem").write_bytes(before_revocation)
    d.start_site("site-a")
    assert d.site_procs["site-a"].wait(timeout=60) == 2
    message = " ".join(d.log("site-site-a.out").split())
    assert "is CRL number 1" in message
    assert "older than CRL number 2 this party already relied on" in message
    assert "Traceback" not in message
