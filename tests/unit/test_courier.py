"""Import and export of bundles (:mod:`alliance.transport.courier`) and the files settings of
``site.toml`` and ``coordinator.toml``.

- a good bundle enters the inbox once: imported again, or imported after it was read, it is
  reported "already imported" and the inbox does not change;
- a bad bundle (altered, misaddressed, not a bundle, too large) is refused with its reason and
  never enters the inbox; the good ones beside it still do;
- export moves every bundle to the courier's folder, keeps a copy in ``sent/``, never writes a
  bundle twice, and refuses a target inside the outbox;
- the settings name what is wrong: an unknown transport, a hospital certificate that is not the
  named hospital's, a study file missing from the studies folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.unit.test_bundles import Pki, make_pki, verifier_for

from alliance.coordinator.offline import FilesConfig, OfflineSites, message_key, task_version
from alliance.core.errors import ConfigError
from alliance.protocol.bundles import open_bundle, seal_bundle
from alliance.protocol.envelope import COORDINATOR, Envelope, Header, MessageKind
from alliance.site.runner import FilesFolders, SiteConfig
from alliance.transport.courier import ImportOutcome, bundle_files, export_bundles, import_bundles
from alliance.transport.files import BundleLedger

FED = "bundles-test"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def task(round_: int, recipient: str = "site-a") -> Envelope:
    header = Header(MessageKind.STUDY_END, FED, "study", round_, COORDINATOR, recipient)
    return Envelope(header, {"final_version": round_}, {})


def write(pki: Pki, folder: Path, env: Envelope) -> Path:
    key = pki.party(env.header.recipient).public
    data = seal_bundle(env, signer=pki.coordinator.signer, recipient_key=key)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"r{env.header.round}-{env.header.nonce[:8]}.gabn"
    path.write_bytes(data)
    return path


def importer(pki: Pki, tmp: Path) -> tuple[BundleLedger, Path, object]:
    ledger = BundleLedger(tmp / "state" / "bundles.db")

    def open_one(data: bytes) -> object:
        return open_bundle(
            data,
            verify=verifier_for(pki, "site-a"),
            recipient="site-a",
            recipient_key=pki.site_a.key,
            federation=FED,
        )

    return ledger, tmp / "inbox", open_one


def certificate(pki: Pki, tmp: Path) -> Path:
    cert = tmp / "site-a.crt"
    cert.write_bytes(pki.site_a.signer.certificate.public_bytes(serialization.Encoding.PEM))
    return cert


def offline_sites(pki: Pki, tmp: Path, sites: dict[str, Path]) -> OfflineSites:
    return OfflineSites.from_config(
        federation=FED,
        config=FilesConfig(tmp / "offline", sites),
        signer=pki.coordinator.signer,
        key=pki.coordinator.key,
        trust=pki.trust,
    )


def run_import(pki: Pki, tmp: Path, files: list[Path]) -> list[ImportOutcome]:
    ledger, inbox, open_one = importer(pki, tmp)
    try:
        results = import_bundles(
            files,
            inbox=inbox,
            open_one=open_one,  # type: ignore[arg-type]
            ledger=ledger,
            max_bytes=1 << 20,
        )
    finally:
        ledger.close()
    return [r.outcome for r in results]


def test_a_bundle_is_imported_once(pki: Pki, tmp_path: Path) -> None:
    usb = tmp_path / "usb"
    good = write(pki, usb, task(1))
    assert run_import(pki, tmp_path, [good]) == [ImportOutcome.IMPORTED]
    assert run_import(pki, tmp_path, [good]) == [ImportOutcome.ALREADY]
    assert len(list((tmp_path / "inbox").glob("*.gabn"))) == 1
    # read by the agent (recorded in the ledger, moved away): still not imported again
    ledger = BundleLedger(tmp_path / "state" / "bundles.db")
    opened = importer(pki, tmp_path)[2](good.read_bytes())
    assert ledger.accept(opened)  # type: ignore[arg-type]
    ledger.close()
    (tmp_path / "inbox" / good.name).unlink()
    assert run_import(pki, tmp_path, [good]) == [ImportOutcome.ALREADY]
    assert not list((tmp_path / "inbox").glob("*.gabn"))


def test_bad_bundles_are_refused_and_good_ones_beside_them_imported(
    pki: Pki, tmp_path: Path
) -> None:
    usb = tmp_path / "usb"
    good = write(pki, usb, task(1))
    altered = write(pki, usb, task(2))
    data = bytearray(altered.read_bytes())
    data[-10] ^= 1
    altered.write_bytes(bytes(data))
    other = write(pki, usb, task(3, recipient="site-b"))
    junk = usb / "junk.gabn"
    junk.write_bytes(b"not a bundle at all")
    ledger, inbox, open_one = importer(pki, tmp_path)
    results = import_bundles(
        bundle_files([usb]),
        inbox=inbox,
        open_one=open_one,  # type: ignore[arg-type]
        ledger=ledger,
        max_bytes=1 << 20,
    )
    by_name = {r.source.name: r for r in results}
    assert by_name[good.name].outcome is ImportOutcome.IMPORTED
    assert by_name[altered.name].outcome is ImportOutcome.REFUSED
    assert "signature" in by_name[altered.name].reason
    assert by_name[other.name].outcome is ImportOutcome.REFUSED
    assert "site-b" in by_name[other.name].reason
    assert by_name[junk.name].outcome is ImportOutcome.REFUSED
    assert by_name[junk.name].header is None
    assert [p.name for p in inbox.glob("*.gabn")] == [good.name]
    small = import_bundles(
        [good],
        inbox=tmp_path / "inbox2",
        open_one=open_one,
        ledger=ledger,
        max_bytes=10,  # type: ignore[arg-type]
    )
    assert small[0].outcome is ImportOutcome.REFUSED
    assert "exceeds the limit" in small[0].reason
    ledger.close()
    with pytest.raises(ConfigError, match="no such file"):
        bundle_files([tmp_path / "missing"])


def test_export_moves_bundles_keeps_a_copy_and_writes_each_once(pki: Pki, tmp_path: Path) -> None:
    outbox, usb = tmp_path / "outbox", tmp_path / "usb"
    first = write(pki, outbox, task(1))
    second = write(pki, outbox, task(2))
    exported = list(export_bundles(outbox, usb))
    assert sorted(e.name for e in exported) == sorted([first.name, second.name])
    assert not list(outbox.glob("*.gabn"))
    assert sorted(p.name for p in (outbox / "sent").glob("*.gabn")) == sorted(
        [first.name, second.name]
    )
    assert all(e.header.recipient == "site-a" and e.size > 0 for e in exported)
    # the USB key lost: the sent copies go out again, and the same file is not doubled
    for p in (outbox / "sent").glob("*.gabn"):
        p.replace(outbox / p.name)
    list(export_bundles(outbox, usb))
    assert len(list(usb.glob("*.gabn"))) == 2
    assert list(export_bundles(tmp_path / "nothing", usb)) == []
    with pytest.raises(ConfigError, match="inside the outbox"):
        list(export_bundles(outbox, outbox / "usb"))


def test_a_site_toml_names_an_unknown_transport(tmp_path: Path) -> None:
    toml = tmp_path / "site.toml"
    toml.write_text('transport = "carrier-pigeon"\nfederation = "f"\nsite = "s"\n')
    with pytest.raises(ConfigError, match=r"carrier-pigeon.*https.*files"):
        SiteConfig.load(toml)


def test_the_studies_folder_must_hold_the_approved_study(tmp_path: Path) -> None:
    folders = FilesFolders(tmp_path / "in", tmp_path / "out", tmp_path / "studies")
    with pytest.raises(ConfigError, match=r"no study file with \[study\] id = 'rare'"):
        folders.study_text("rare")
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "a.toml").write_text('[study]\nid = "rare"\n')
    assert folders.study_text("rare").startswith("[study]")
    (tmp_path / "studies" / "b.toml").write_text('[study]\nid = "rare"\ntitle = "x"\n')
    with pytest.raises(ConfigError, match="several study files"):
        folders.study_text("rare")


def test_the_coordinator_checks_each_hospital_certificate(pki: Pki, tmp_path: Path) -> None:
    cert = tmp_path / "site-a.crt"
    cert.write_bytes(pki.site_a.signer.certificate.public_bytes(serialization.Encoding.PEM))
    config = FilesConfig(tmp_path / "offline", {"site-b": cert})
    with pytest.raises(ConfigError, match=r"\[files.sites\] site-b"):
        offline_sites(pki, tmp_path, config.sites)
    offline = offline_sites(pki, tmp_path, {"site-a": cert})
    try:
        assert offline.sites == {"site-a"}
        with pytest.raises(ConfigError, match=r"not in \[files.sites\]"):
            offline.outbox("site-b")
        # the same message is written once, even asked for again with a fresh nonce
        assert offline.publish(task(1)) is not None
        assert offline.publish(task(1)) is None
        assert message_key(task(1)) == message_key(task(1))
        assert len(list(offline.outbox("site-a").glob("*.gabn"))) == 1
    finally:
        offline.close()


def test_a_bundle_the_coordinator_had_not_recorded_when_it_crashed_is_read_again(
    pki: Pki, tmp_path: Path
) -> None:
    offline = offline_sites(pki, tmp_path, {"site-a": certificate(pki, tmp_path)})
    header = Header(MessageKind.REFUSAL, FED, "study", 1, "site-a", COORDINATOR)
    reply = Envelope(header, {"reason": "budget"}, {})
    data = seal_bundle(reply, signer=pki.site_a.signer, recipient_key=pki.coordinator.public)
    offline.inbox.mkdir(parents=True)
    (offline.inbox / "reply.gabn").write_bytes(data)
    seen: list[str] = []

    def crash(bundle: object, name: str, size: int) -> None:
        raise RuntimeError("killed")

    try:
        with pytest.raises(RuntimeError):
            offline.collect(crash)
        assert (offline.inbox / "reply.gabn").exists()
        assert offline.collect(lambda b, name, size: seen.append(name)) == []
        assert seen == ["reply.gabn"]
        assert offline.collect(lambda b, name, size: seen.append(name)) == []
        assert seen == ["reply.gabn"]
        # a message the coordinator refuses is recorded and set aside with the reason
        reply2 = Envelope(
            Header(MessageKind.REFUSAL, FED, "study", 2, "site-a", COORDINATOR),
            {"reason": "budget"},
            {},
        )
        (offline.inbox / "late.gabn").write_bytes(
            seal_bundle(reply2, signer=pki.site_a.signer, recipient_key=pki.coordinator.public)
        )

        def refuse(bundle: object, name: str, size: int) -> None:
            raise ConfigError("round 2 is closed")

        refused = offline.collect(refuse)
        assert [r.reason for r in refused] == ["not counted: round 2 is closed"]
        assert (
            (offline.inbox / "rejected" / "late.gabn.reason").read_text().startswith("not counted")
        )
    finally:
        offline.close()


def train_task(round_: int, version: int, study: str = "study") -> Envelope:
    header = Header(MessageKind.TRAIN_TASK, FED, study, round_, COORDINATOR, "site-a")
    return Envelope(header, {"model_version": version, "attempt": 0}, {})


def test_a_restarted_coordinator_reads_which_task_each_hospital_on_files_holds(
    pki: Pki, tmp_path: Path
) -> None:
    cert = certificate(pki, tmp_path)
    offline = offline_sites(pki, tmp_path, {"site-a": cert})
    try:
        assert offline.issued_tasks("study") == {}
        for env in (train_task(1, 0), train_task(4, 3), task(5), train_task(1, 7, "other")):
            assert offline.publish(env) is not None
    finally:
        offline.close()
    restarted = offline_sites(pki, tmp_path, {"site-a": cert})
    try:
        assert restarted.issued_tasks("study") == {"site-a": 3}
        assert restarted.issued_tasks("other") == {"site-a": 7}
        assert restarted.issued_tasks("none") == {}
    finally:
        restarted.close()
    assert task_version(message_key(train_task(2, 1)), "study") == 1
    assert task_version(message_key(train_task(2, 1)), "other") is None
    assert task_version(message_key(task(2)), "study") is None
