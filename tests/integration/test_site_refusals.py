"""A hospital's agent tells the coordinator at once when it will not work, and runs once.

The real agent (:class:`~alliance.site.runner.SiteRunner`, on files) of a hospital provisioned by
``alliance consortium init``, with tasks signed by the coordinator's own key:

- a task of a study the hospital has not approved is answered with a Refusal "not-approved",
  one of a cohort below ``[policy] min_cohort`` with "cohort" (so the round does not wait for
  the site until its deadline); the details stay in the hospital's audit log;
- a study approved in ``site.toml`` while the agent runs is trained on at its next task;
- a second agent on the same state folder is refused (exit status 1), naming the folder and the
  pid that holds it, while ``alliance site budget`` still works.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from tests.integration.test_lying_coordinator_on_files import Coordinator, cli, hospital_on_files

from alliance.protocol.envelope import Envelope, MessageKind
from alliance.protocol.study import spec_hash
from alliance.site.lock import AgentLock
from alliance.site.runner import SiteConfig, SiteRunner
from alliance.store.audit import AuditLog

pytestmark = pytest.mark.slow


def set_policy(toml: Path, *, approved: list[str] | None = None, min_cohort: int = 1) -> None:
    """Rewrite ``[policy]`` of ``site.toml`` (what the hospital's officer does)."""
    lines = []
    for line in toml.read_text().splitlines():
        if line.startswith("approved_studies = ") and approved is not None:
            line = "approved_studies = [" + ", ".join(f'"{h}"' for h in approved) + "]"
        elif line.startswith("min_cohort = "):
            line = f"min_cohort = {min_cohort}"
        lines.append(line)
    toml.write_text("\n".join(lines) + "\n")


def deliver(bundle: Path, config: SiteConfig) -> None:
    assert config.files is not None
    config.files.inbox.mkdir(parents=True, exist_ok=True)
    shutil.copy(bundle, config.files.inbox / bundle.name)


def replies(coordinator: Coordinator, config: SiteConfig) -> list[Envelope]:
    assert config.files is not None
    return coordinator.read(config.files.outbox)


def test_a_study_not_approved_is_refused_at_once_and_seen_once_approved(tmp_path: Path) -> None:
    site, toml, text = hospital_on_files(tmp_path)
    set_policy(toml, approved=[])
    coordinator = Coordinator(tmp_path / "c", site, text)
    config = dataclasses.replace(SiteConfig.load(toml), poll_s=0.05)
    with SiteRunner(config) as runner:
        deliver(coordinator.task(tmp_path / "usb", 1, "first"), config)
        runner.run(until_idle=True)
        (refusal,) = replies(coordinator, config)
        assert refusal.header.kind is MessageKind.REFUSAL
        assert dict(refusal.body) == {"reason": "not-approved"}

        set_policy(toml, approved=[spec_hash(text)])  # approved while the agent runs
        deliver(coordinator.task(tmp_path / "usb", 1, "again"), config)
        runner.run(until_idle=True)
    kinds = sorted(r.header.kind.value for r in replies(coordinator, config))
    assert kinds == ["model_update", "refusal"]
    audit = AuditLog(config.state_dir / "audit.log", actor=site).entries()
    (refused,) = [e.details for e in audit if e.event == "task_refused"]
    assert refused["category"] == "not-approved"
    assert spec_hash(text) in refused["reason"]
    sent = [(e.event, e.details.get("reason")) for e in audit if e.event.endswith("_sent")]
    assert sent == [("refusal_sent", "not-approved"), ("update_sent", None)]


def test_a_cohort_below_min_cohort_is_refused_with_its_category(tmp_path: Path) -> None:
    site, toml, text = hospital_on_files(tmp_path)
    set_policy(toml, min_cohort=100_000)
    coordinator = Coordinator(tmp_path / "c", site, text)
    config = dataclasses.replace(SiteConfig.load(toml), poll_s=0.05)
    with SiteRunner(config) as runner:
        deliver(coordinator.task(tmp_path / "usb", 1, "first"), config)
        runner.run(until_idle=True)
    (refusal,) = replies(coordinator, config)
    assert dict(refusal.body) == {"reason": "cohort"}
    audit = AuditLog(config.state_dir / "audit.log", actor=site).entries()
    (refused,) = [e.details for e in audit if e.event == "task_refused"]
    assert "policy requires at least 100000" in str(refused["reason"])


def test_a_second_agent_on_the_same_folder_is_refused_and_the_budget_still_shows(
    tmp_path: Path,
) -> None:
    _, toml, _ = hospital_on_files(tmp_path)
    state = SiteConfig.load(toml).state_dir
    with AgentLock(state):  # the first agent
        out = cli("site", "run", "--until-idle", "--config", str(toml), code=1)
        assert f"another site agent (pid {os.getpid()}) is running" in out
        assert str(state) in out
        assert "no privacy ledger yet" in cli("site", "budget", "--config", str(toml))
    cli("site", "run", "--until-idle", "--config", str(toml))  # the first one has stopped
