"""Inboxes on files: entries that are no bundle file are set aside, and no task is lost.

- an entry of a hospital's inbox or of the coordinator's files inbox that is no bundle file (a
  link to ``/proc/self/mem``, a dangling link, a link to a good bundle outside the inbox, a
  folder, a FIFO) is moved to ``rejected/`` with a ``.reason`` naming what it is; the reader
  never follows the link, never waits on the FIFO, and goes on with the good bundles;
- the coordinator's study driver keeps running online rounds while such an entry lies in its
  files inbox, and sets it aside once;
- a hospital's link hands a task out again until it is settled, and a task whose reply was
  written is settled on the next start instead (its kept reply written again if it is gone).

The tests run as root, so unreadable files are made by kind, not by permissions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from tests.integration.test_async_offline import _TinyModel
from tests.unit.test_bundles import Pki, make_pki, verifier_for

from alliance.coordinator.offline import FilesConfig, OfflineSites
from alliance.coordinator.service import CoordinatorService
from alliance.crypto.pki import Role
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.bundles import seal_bundle
from alliance.protocol.codec import decode_signed, encode_signed
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.protocol.messages import ModelUpdate, TrainTask
from alliance.store.audit import AuditLog
from alliance.store.memory import MemoryStore
from alliance.transport.files import BUNDLE_SUFFIX, BundleLedger, FileSiteLink

FED = "bundles-test"  # the consortium of make_pki


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def plant_bad_entries(folder: Path, outside: Path) -> dict[str, str]:
    """Entries named like bundles that are none; their names and what the reason must say."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"a-mem{BUNDLE_SUFFIX}").symlink_to("/proc/self/mem")
    (folder / f"b-dangling{BUNDLE_SUFFIX}").symlink_to(folder / "nowhere")
    (folder / f"c-outside{BUNDLE_SUFFIX}").symlink_to(outside)
    (folder / f"d-folder{BUNDLE_SUFFIX}").mkdir()
    (folder / f"d-folder{BUNDLE_SUFFIX}" / "x").write_bytes(b"x")
    os.mkfifo(folder / f"e-fifo{BUNDLE_SUFFIX}")
    return {
        f"a-mem{BUNDLE_SUFFIX}": "symbolic link",
        f"b-dangling{BUNDLE_SUFFIX}": "symbolic link",
        f"c-outside{BUNDLE_SUFFIX}": "symbolic link",
        f"d-folder{BUNDLE_SUFFIX}": "is a folder",
        f"e-fifo{BUNDLE_SUFFIX}": "no regular file",
    }


def assert_set_aside(folder: Path, bad: dict[str, str]) -> None:
    rejected = folder / "rejected"
    for name, said in bad.items():
        assert not os.path.lexists(folder / name), f"{name} is still in {folder}"
        assert os.path.lexists(rejected / name), f"{name} was not set aside"
        reason = (rejected / f"{name}.reason").read_text("utf-8")
        assert said in reason, (name, reason)


def study_end(round_: int, recipient: str = "site-a") -> Envelope:
    header = Header(MessageKind.STUDY_END, FED, "study", round_, COORDINATOR, recipient)
    return Envelope(header, {"final_version": round_}, {})


def write_task(pki: Pki, folder: Path, env: Envelope, name: str) -> Path:
    data = seal_bundle(env, signer=pki.coordinator.signer, recipient_key=pki.site_a.public)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder / name


def site_link(pki: Pki, root: Path) -> FileSiteLink:
    """Site A's link as an agent builds it at start (its ledger opened afresh)."""
    return FileSiteLink(
        "site-a",
        federation=FED,
        inbox=root / "inbox",
        outbox=root / "outbox",
        signer=pki.site_a.signer,
        key=pki.site_a.key,
        coordinator_key=None,
        verify=verifier_for(pki, "site-a"),
        ledger=BundleLedger(root / "state" / "bundles.db"),
    )


def test_a_site_sets_entries_that_are_no_bundle_aside_and_reads_the_good_one(
    pki: Pki, tmp_path: Path
) -> None:
    outside = write_task(pki, tmp_path / "elsewhere", study_end(9), f"x{BUNDLE_SUFFIX}")
    bad = plant_bad_entries(tmp_path / "inbox", outside)
    write_task(pki, tmp_path / "inbox", study_end(1), f"z-good{BUNDLE_SUFFIX}")
    link = site_link(pki, tmp_path)
    got = link.fetch("site-a")
    assert got is not None
    assert got.header.round == 1
    assert link.fetch("site-a") is None  # the bundle outside the inbox was never read
    assert len(link.rejections) == len(bad)
    assert_set_aside(tmp_path / "inbox", bad)
    assert outside.read_bytes()  # what the link pointed at is untouched
    assert list((tmp_path / "inbox" / "done").iterdir()) == [
        tmp_path / "inbox" / "done" / f"z-good{BUNDLE_SUFFIX}"
    ]


def test_a_task_is_handed_out_until_settled_and_never_again_once_answered(
    pki: Pki, tmp_path: Path
) -> None:
    inbox = tmp_path / "inbox"
    write_task(pki, inbox, study_end(1), f"r1{BUNDLE_SUFFIX}")
    write_task(pki, inbox, study_end(2), f"r2{BUNDLE_SUFFIX}")
    first = site_link(pki, tmp_path)
    got = first.fetch("site-a")
    assert got is not None
    assert got.header.round == 1
    # The agent dies before it answered: the next start is handed the same task.
    restarted = site_link(pki, tmp_path)
    again = restarted.fetch("site-a")
    assert again is not None
    assert again.header.round == 1
    header = Header(MessageKind.REFUSAL, FED, "study", 1, "site-a", COORDINATOR)
    restarted.submit(Envelope(header, {"reason": "test"}, {}))
    (reply,) = (tmp_path / "outbox").glob(f"*{BUNDLE_SUFFIX}")
    sent = reply.read_bytes()
    reply.unlink()  # and its reply was lost too (the disk of a courier, say)
    # It dies after the reply was written: the task is settled, its very reply written again.
    third = site_link(pki, tmp_path)
    nxt = third.fetch("site-a")
    assert nxt is not None
    assert nxt.header.round == 2
    assert reply.read_bytes() == sent
    assert [p.name for p in (inbox / "done").iterdir()] == [f"r1{BUNDLE_SUFFIX}"]
    third.settle()
    assert third.fetch("site-a") is None
    assert not list(inbox.glob(f"*{BUNDLE_SUFFIX}"))


def test_the_driver_runs_online_rounds_past_entries_that_are_no_bundle(
    pki: Pki, tmp_path: Path
) -> None:
    cert = tmp_path / "site-b.crt"
    cert.write_bytes(pki.site_b.signer.certificate.public_bytes(serialization.Encoding.PEM))
    offline = OfflineSites.from_config(
        federation=FED,
        config=FilesConfig(tmp_path / "offline", {"site-b": cert}),
        signer=pki.coordinator.signer,
        key=pki.coordinator.key,
        trust=pki.trust,
    )
    outside = tmp_path / "elsewhere" / f"x{BUNDLE_SUFFIX}"
    outside.parent.mkdir()
    outside.write_bytes(b"GABN not a bundle")
    bad = plant_bad_entries(offline.inbox, outside)
    service = CoordinatorService(
        federation=FED,
        store=MemoryStore(),
        signer=pki.coordinator.signer,
        trust=pki.trust,
        audit=AuditLog(tmp_path / "audit.log", actor=COORDINATOR),
        model_kind=lambda table: _TinyModel(),  # type: ignore[arg-type,return-value]
        model_check=_TinyModel.check,
        offline=offline,
    )
    service.submit_study(
        "operator",
        '[study]\nid = "s"\nrounds = 2\nsites = ["site-a"]\nquorum = 1\n[model]\nkind = "tiny"\n',
    )
    verify = MessageVerifier(pki.trust, role=Role.COORDINATOR)
    assert service.next_message("site-a", 0) is None  # site A polls: it is alive
    for round_ in (1, 2):
        service.tick()
        data = service.next_message("site-a", 0)
        assert data is not None, service.study_status("s")
        task = TrainTask.from_envelope(decode_signed(data, verify).envelope)
        assert task.header.round == round_
        header = Header(MessageKind.MODEL_UPDATE, FED, "s", round_, "site-a", COORDINATOR)
        delta = {k: np.full_like(v, 0.1) for k, v in task.weights.items()}
        update = ModelUpdate(header, task.model_version, 8, delta, {"train_loss": 1.0})
        signed = encode_signed(update.to_envelope(), pki.site_a.signer)
        assert service.submit_update("site-a", signed) == "accepted"
        service.tick()
    service.tick()
    assert service.study_status("s")["status"] == "finished"
    assert_set_aside(offline.inbox, bad)
    lines = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    rejected = sorted(e["details"]["file"] for e in lines if e["event"] == "bundle_rejected")
    assert rejected == sorted(bad)  # each set aside once, not at every tick
    offline.close()
