"""A hospital without a network connection takes part in a deployed study through files.

The coordinator runs as its own process (``alliance coordinator serve``) with three hospitals
online over mutual TLS and one, listed in ``[files.sites]``, on files. The test is the
courier: ``alliance coordinator export --site``, ``alliance site import``, ``alliance site run
--until-idle``, ``alliance site export``, ``alliance coordinator import``, round after round.

- the study finishes with the very model of the in-process simulation of the same four sites
  (synchronous rounds: it does not matter how an update travelled);
- importing the same bundles again changes nothing (reported "already imported"; each round
  counts each site once);
- an altered bundle is refused at import with its reason and exit status 2;
- every bundle is a line in both audit logs (written/exported by its sender, imported/read by
  its recipient), and both logs verify;
- with asynchronous rounds (a deployment of its own), the online hospitals make model versions
  while the hospital's reply is on the road, the reply counts when it arrives, discounted by its
  staleness, and the hospital is handed no second task meanwhile, even by a coordinator that
  crashed and restarted while the reply was on the road.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.e2e.deployment import Deployment, approve, provision, simulate_study, study_text
from tests.e2e.test_deployment import assert_counted_once, assert_same_weights, audit_verifies
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.models.training import get_weights

pytestmark = pytest.mark.slow

ONLINE = ("bch", "pumch", "west-china")
OFFLINE = "xiangya"
ROUNDS = 2


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = provision(tmp_path_factory.mktemp("offline"))
    yield d
    d.stop()


def cli(*args: str, code: int = 0) -> str:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the site processes and the simulation
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == code, result.output
    return result.output


def put_on_files(d: Deployment, text: str, study: str) -> None:
    """The hospital's site.toml says files and it keeps the study it approved in ``studies/``;
    the coordinator lists its certificate."""
    site = d.site_dir(OFFLINE)
    toml = site / "site.toml"
    body = toml.read_text()
    toml.write_text(body.replace("coordinator = ", 'transport = "files"\ncoordinator = ', 1))
    (site / "studies").mkdir(exist_ok=True)
    (site / "studies" / f"{study}.toml").write_text(text, encoding="utf-8")
    certs = d.coordinator_dir / "sites"
    certs.mkdir(exist_ok=True)
    shutil.copy(site / "site.crt", certs / f"{OFFLINE}.crt")
    config = d.coordinator_dir / "coordinator.toml"
    config.write_text(
        config.read_text()
        + f'\n[files]\ndir = "offline"\n\n[files.sites]\n"{OFFLINE}" = "sites/{OFFLINE}.crt"\n'
    )


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_hospital_on_files_trains_the_model_of_the_simulation(deployment: Deployment) -> None:
    d = deployment
    sites = (*ONLINE, OFFLINE)
    text = study_text("offline", sites, rounds=ROUNDS, quorum=len(sites), timeout_s=600)
    approve(d, text)
    put_on_files(d, text, "offline")
    d.start_coordinator()
    d.submit(text)
    d.site_procs = {}
    for site in ONLINE:
        d.start_site(site)

    coordinator_toml = str(d.coordinator_dir / "coordinator.toml")
    site_toml = str(d.site_dir(OFFLINE) / "site.toml")
    to_site, to_coordinator = d.root / "usb-to-site", d.root / "usb-to-coordinator"
    deadline = time.monotonic() + 600
    trips = 0
    while d.status("offline")["status"] != "finished":
        assert time.monotonic() < deadline, d.log("coordinator.out")
        out = cli(
            "coordinator", "export", "--site", OFFLINE, "--to", str(to_site), "-c", coordinator_toml
        )
        if "nothing to export" in out:
            time.sleep(0.5)
            continue
        trips += 1
        cli("site", "import", str(to_site), "-c", site_toml)
        cli("site", "run", "--until-idle", "-c", site_toml)
        cli("site", "export", "--to", str(to_coordinator), "-c", site_toml)
        imported = cli("coordinator", "import", str(to_coordinator), "-c", coordinator_toml)
        assert "imported" in imported
        # The courier brings the same files twice: nothing changes.
        again = cli("coordinator", "import", str(to_coordinator), "-c", coordinator_toml)
        assert "0 imported" in again
        assert "already imported" in again
        again = cli("site", "import", str(to_site), "-c", site_toml)
        assert "0 imported" in again
        for folder in (to_site, to_coordinator):
            for file in folder.glob("*.gabn"):
                file.unlink()
    d.wait_sites(300)
    assert trips == ROUNDS

    status = d.status("offline")
    assert [sorted(r["sites"]) for r in status["history"]] == [sorted(sites)] * ROUNDS
    assert_counted_once(d, status, sites)
    version, weights = d.final_weights("offline")
    assert version == ROUNDS
    expected = get_weights(simulate_study(d, text).model)
    assert_same_weights(weights, expected)

    # The study's end reaches the hospital too.
    cli("coordinator", "export", "--site", OFFLINE, "--to", str(to_site), "-c", coordinator_toml)
    cli("site", "import", str(to_site), "-c", site_toml)
    cli("site", "run", "--until-idle", "-c", site_toml)

    coordinator_log = d.coordinator_dir / "audit.log"
    site_log = d.site_dir(OFFLINE) / "state" / "audit.log"
    audit_verifies(coordinator_log)
    audit_verifies(site_log)
    c_events, s_events = events(coordinator_log), events(site_log)
    written = [e for e in c_events if e["event"] == "bundle_written"]
    exported = [e for e in c_events if e["event"] == "bundle_exported"]
    imported_here = [e for e in s_events if e["event"] == "bundle_imported"]
    # tasks for every round and the study's end: written, exported and imported, the same files
    assert len(written) == ROUNDS + 1
    assert {e["details"]["file"] for e in written} == {e["details"]["file"] for e in exported}
    assert {e["details"]["sha256"] for e in exported} == {
        e["details"]["sha256"] for e in imported_here
    }
    sent = [e for e in s_events if e["event"] == "update_sent"]
    site_exports = [e for e in s_events if e["event"] == "bundle_exported"]
    read = [e for e in c_events if e["event"] == "bundle_read"]
    assert len(sent) == len(site_exports) == len(read) == ROUNDS
    assert {e["details"]["sha256"] for e in site_exports} == {e["details"]["sha256"] for e in read}
    received = [
        e for e in c_events if e["event"] == "update_received" and e["details"]["site"] == OFFLINE
    ]
    assert len(received) == ROUNDS
    assert all(e["details"]["bundle"] for e in received)
    assert any(e["event"] == "study_ended" for e in s_events)


def test_an_altered_bundle_is_refused_at_import_with_its_reason(deployment: Deployment) -> None:
    d = deployment
    sent = sorted((d.site_dir(OFFLINE) / "outbox" / "sent").glob("*.gabn"))
    assert sent, "the study above left the hospital's sent bundles"
    data = bytearray(sent[-1].read_bytes())
    data[len(data) // 2] ^= 0x01
    bad = d.root / "usb-bad"
    bad.mkdir()
    (bad / sent[-1].name).write_bytes(bytes(data))
    coordinator_toml = str(d.coordinator_dir / "coordinator.toml")
    before = d.status("offline")
    out = cli("coordinator", "import", str(bad), "-c", coordinator_toml, code=2)
    assert "refused" in out
    assert "signature" in out
    assert not list((d.coordinator_dir / "offline" / "inbox").glob("*.gabn"))
    assert d.status("offline") == before
    refused = [e for e in events(d.coordinator_dir / "audit.log") if e["event"] == "bundle_refused"]
    assert refused
    assert "signature" in refused[-1]["details"]["reason"]


ASYNC_ROUNDS = 8
ASYNC = """
[aggregation]
mode = "async"
buffer = 3
max_staleness = 6
"""


def courier_trip(d: Deployment, *, deliver: bool = True) -> bool:
    """One trip: the coordinator's bundles to the hospital, its run, its replies exported and,
    with ``deliver``, imported at the coordinator. ``False`` when nothing was waiting."""
    coordinator_toml = str(d.coordinator_dir / "coordinator.toml")
    site_toml = str(d.site_dir(OFFLINE) / "site.toml")
    to_site = d.root / "usb-to-site"
    out = cli(
        "coordinator", "export", "--site", OFFLINE, "--to", str(to_site), "-c", coordinator_toml
    )
    if "nothing to export" in out:
        return False
    cli("site", "import", str(to_site), "-c", site_toml)
    cli("site", "run", "--until-idle", "-c", site_toml)
    cli("site", "export", "--to", str(d.root / "usb-to-coordinator"), "-c", site_toml)
    if deliver:
        deliver_replies(d)
    for file in to_site.glob("*.gabn"):
        file.unlink()
    return True


def deliver_replies(d: Deployment) -> None:
    folder = d.root / "usb-to-coordinator"
    cli("coordinator", "import", str(folder), "-c", str(d.coordinator_dir / "coordinator.toml"))
    for file in folder.glob("*.gabn"):
        file.unlink()


def wait_for(d: Deployment, study: str, ready: Any, what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready(d.status(study)):
        assert time.monotonic() < deadline, f"{what}: {d.log('coordinator.out')}"
        time.sleep(0.3)


@pytest.fixture
def async_deployment(tmp_path: Path) -> Iterator[Deployment]:
    d = provision(tmp_path)
    yield d
    d.stop()


def test_asynchronous_rounds_go_on_without_the_courier_and_count_its_late_reply(
    async_deployment: Deployment,
) -> None:
    """The online hospitals make model versions while the reply of the hospital on files is on
    the road; when it arrives it counts, discounted, and the hospital had only one task."""
    d = async_deployment
    sites = (*ONLINE, OFFLINE)
    # eight versions: room for the reply to arrive late and still young enough to count
    text = study_text("async", sites, rounds=ASYNC_ROUNDS, quorum=3, timeout_s=600, extra=ASYNC)
    approve(d, text)
    put_on_files(d, text, "async")
    d.start_coordinator()
    d.submit(text)
    for site in ONLINE:
        d.start_site(site)
    outbox = d.coordinator_dir / "offline" / f"to-{OFFLINE}"
    deadline = time.monotonic() + 120
    while not list(outbox.glob("*.gabn")):
        assert time.monotonic() < deadline, d.log("coordinator.out")
        time.sleep(0.3)
    assert courier_trip(d, deliver=False)  # the reply stays on the road ...
    wait_for(d, "async", lambda s: s["rounds_closed"] >= 1, "the online hospitals go on")
    assert d.coordinator is not None
    d.coordinator.kill()  # ... while the coordinator crashes and restarts a version later ...
    d.coordinator.wait()
    d.start_coordinator()
    restarted = d.status("async")["rounds_closed"]
    wait_for(d, "async", lambda s: s["rounds_closed"] >= restarted + 1, "the hospitals go on")
    # ... no second task was written for the hospital meanwhile (it would spend its budget)
    assert not list(outbox.glob("*.gabn"))
    deliver_replies(d)
    wait_for(
        d,
        "async",
        lambda s: any(OFFLINE in r["sites"] for r in s["history"]) or s["status"] == "finished",
        "the late reply counts",
    )
    status = d.status("async")
    late = [r for r in status["history"] if OFFLINE in r["sites"]]
    assert late, status["history"]
    tau = late[0]["staleness"][OFFLINE]
    assert tau >= 2
    assert late[0]["shares"][OFFLINE] < max(late[0]["shares"].values())
    while d.status("async")["status"] != "finished":
        if not courier_trip(d):
            time.sleep(0.3)
    d.wait_sites(300)
    status = d.status("async")
    assert status["rounds_closed"] == ASYNC_ROUNDS
    events_ = events(d.site_dir(OFFLINE) / "state" / "audit.log")
    trained = [
        e for e in events_ if e["event"] == "task_received" and e["details"]["study"] == "async"
    ]
    counted = sum(OFFLINE in r["sites"] for r in status["history"])
    # every task the hospital trained on was a model it could still improve
    assert counted >= 1
    assert len(trained) <= counted + 1
