"""Nothing lost on files: a hospital agent and a coordinator killed with SIGKILL lose no task.

One hospital on files takes part in a three-round study. Its agent (``alliance site run
--until-idle``, a real process) is killed in each round at another instant (``ALLIANCE_CRASH_AT``,
see :mod:`alliance.core.faults`): after training before its reply was written, just after it
read its inbox, after its reply was written before the bundle was settled. It is started again
each time (in the test's process: what is tested is the kill). The coordinator (the shipped
service over the same ``coordinator.toml``, store and folders, one tick in a process of its
own) is killed while collecting its inbox, at one instant per round too, and once after it
recorded a task before its bundle was written; it is restarted each time.

- every task reaches the hospital and every round closes with its update: no task is lost;
- the coordinator counts exactly one update per round and refuses none (no duplicate reply);
- a task whose reply was written is not trained again after the restart;
- an unreadable entry in the hospital's inbox (a link to ``/proc/self/mem``, a dangling link, a
  link to a real bundle outside the inbox, a folder, a FIFO) is set aside with its reason, and
  the agent goes on with the good bundles.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.deployment import FEDERATION, Deployment, approve, provision, study_text
from tests.e2e.test_offline_deployment import cli, put_on_files
from tests.integration.test_inbox_entries import assert_set_aside, plant_bad_entries

from alliance.coordinator.serve import CoordinatorConfig, build_service
from alliance.coordinator.service import CoordinatorService
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind
from alliance.protocol.messages import StudyEnd
from alliance.transport.files import carry

pytestmark = pytest.mark.slow

SITE = "xiangya"
STUDY = "crash"
ROUNDS = 3
#: Where the hospital's agent and the coordinator die, one pair per round.
CRASHES = (
    ("site.before_submit", "service.before_update_commit"),
    ("site.after_read", "service.after_update_commit"),
    ("site.before_settle", "bundles.before_record"),
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = provision(tmp_path_factory.mktemp("files-crash"))
    text = study_text(STUDY, (SITE,), rounds=ROUNDS, quorum=1, timeout_s=600).replace(
        "dim = 32",
        "dim = 8",  # small updates: the test is about files, not the model
    )
    approve(d, text)
    put_on_files(d, text, STUDY)
    (d.root / "study.toml").write_text(text, encoding="utf-8")
    yield d
    d.stop()


def coordinator_toml(d: Deployment) -> Path:
    return d.coordinator_dir / "coordinator.toml"


def service_of(d: Deployment) -> CoordinatorService:
    return build_service(CoordinatorConfig.load(coordinator_toml(d)))


def close(service: CoordinatorService) -> None:
    service.store.close()
    if service.offline is not None:
        service.offline.close()


def tick(d: Deployment, times: int = 3) -> dict[str, Any]:
    """A coordinator started afresh (as after a crash), ticked; the study's status."""
    service = service_of(d)
    try:
        for _ in range(times):
            service.tick()
        return service.study_status(STUDY)
    finally:
        close(service)


def run(argv: list[str], crash_at: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ALLIANCE_CRASH_AT"}
    env["OMP_NUM_THREADS"] = "1"
    if crash_at is not None:
        env["ALLIANCE_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, *argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def site_run(d: Deployment, crash_at: str) -> subprocess.CompletedProcess[str]:
    """``alliance site run --until-idle`` in a process of its own, killed at ``crash_at``."""
    config = str(d.site_dir(SITE) / "site.toml")
    argv = ["-m", "alliance.cli.app", "site", "run", "--until-idle", "--config", config]
    return run(argv, crash_at, d.root)


def site_restart(d: Deployment) -> str:
    """The agent started again (in this process: the start is what is tested, not the kill)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return cli("site", "run", "--until-idle", "--config", str(d.site_dir(SITE) / "site.toml"))
    finally:  # the command logs to the runner's stream, closed once it returns
        root.handlers[:] = handlers
        root.setLevel(level)


#: The shipped service, in a process of its own: one tick (it reads the files inbox first).
COORDINATOR_TICK = (
    "import sys\n"
    "from alliance.coordinator.serve import CoordinatorConfig, build_service\n"
    "build_service(CoordinatorConfig.load(sys.argv[1])).tick()\n"
)


def coordinator_run(d: Deployment, crash_at: str) -> subprocess.CompletedProcess[str]:
    """One tick of the coordinator in a process of its own, killed at ``crash_at``."""
    return run(["-c", COORDINATOR_TICK, str(coordinator_toml(d))], crash_at, d.root)


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def to_site(d: Deployment) -> list[Path]:
    return list(carry(d.coordinator_dir / "offline" / f"to-{SITE}", d.site_dir(SITE) / "inbox"))


def to_coordinator(d: Deployment) -> list[Path]:
    return list(carry(d.site_dir(SITE) / "outbox", d.coordinator_dir / "offline" / "inbox"))


def killed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == -9


def test_agent_and_coordinator_killed_at_every_step_lose_no_task(deployment: Deployment) -> None:
    d = deployment
    service = service_of(d)
    try:
        service.submit_study("operator", (d.root / "study.toml").read_text())
    finally:
        close(service)
    # Killed after it recorded the first task, before the bundle was in its folder ...
    assert killed(coordinator_run(d, "offline.before_write"))
    assert not list((d.coordinator_dir / "offline" / f"to-{SITE}").glob("*.gabn"))
    tick(d)  # ... it writes that very bundle on its next start.
    for round_, (site_crash, coordinator_crash) in enumerate(CRASHES, start=1):
        assert len(to_site(d)) == 1, f"round {round_}: the task was written once"
        crashed = site_run(d, site_crash)
        assert killed(crashed), (site_crash, crashed.returncode, crashed.stderr[-2000:])
        site_restart(d)
        replies = to_coordinator(d)
        assert len(replies) == 1, f"round {round_} after a crash at {site_crash}: {replies}"
        dead = coordinator_run(d, coordinator_crash)
        assert killed(dead), (coordinator_crash, dead.returncode, dead.stderr[-2000:])
        status = tick(d)
        assert status["rounds_closed"] == round_, status
    assert tick(d)["status"] == "finished"

    status = tick(d)
    assert [r["sites"] for r in status["history"]] == [[SITE]] * ROUNDS
    c_events = events(d.coordinator_dir / "audit.log")
    received = [
        e["details"]["round"]
        for e in c_events
        if e["event"] == "update_received" and e["details"]["site"] == SITE
    ]
    assert received == [1, 2, 3]  # each round answered exactly once
    refused = [e for e in c_events if e["event"] in ("update_rejected", "bundle_rejected")]
    assert refused == []
    inbox = d.site_dir(SITE) / "inbox"
    assert not list(inbox.glob("*.gabn"))
    assert len(list((inbox / "done").glob("*.gabn"))) == ROUNDS
    s_events = events(d.site_dir(SITE) / "state" / "audit.log")
    trained = [e["details"]["round"] for e in s_events if e["event"] == "task_received"]
    # killed before its reply was written, the agent trains round 1 again; never otherwise
    assert trained == [1, 1, 2, 3]


def test_the_agent_sets_entries_that_are_no_bundle_aside_and_goes_on(
    deployment: Deployment,
) -> None:
    """Without this, the first such entry stopped ``alliance site run`` at every start."""
    d = deployment
    service = service_of(d)
    try:
        assert service.offline is not None
        header = Header(MessageKind.STUDY_END, FEDERATION, "elsewhere", 0, COORDINATOR, SITE)
        service.offline.publish(StudyEnd(header, 4).to_envelope())
    finally:
        close(service)
    good = to_site(d)  # this study's end, and the end of the study above if it ran
    outside = d.root / "outside.gabn"
    outside.write_bytes(good[0].read_bytes())
    inbox = d.site_dir(SITE) / "inbox"
    bad = plant_bad_entries(inbox, outside)
    site_restart(d)
    assert_set_aside(inbox, bad)
    assert all((inbox / "done" / file.name).is_file() for file in good)
    s_events = events(d.site_dir(SITE) / "state" / "audit.log")
    rejected = {e["details"]["file"] for e in s_events if e["event"] == "bundle_rejected"}
    assert rejected == set(bad)
