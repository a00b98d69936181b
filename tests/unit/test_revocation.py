"""The CRL a party relies on: no rollback (also after a restart), and notices before expiry."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto import CertificateAuthority, Role, TrustStore
from alliance.crypto.revocation import CrlFloor, CrlNotices, crl_notice, crl_number

PEM = serialization.Encoding.PEM


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("revocation-test")


def test_a_restarted_party_refuses_a_crl_older_than_it_relied_on(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    party = ca.issue("west-china", Role.SITE)
    ca.save(tmp_path / "ca")
    crl_path, floor = tmp_path / "ca" / "crl.pem", tmp_path / "state" / "crl-number.json"
    before = crl_path.read_bytes()  # CRL number 1
    trust = TrustStore.load(tmp_path / "ca" / "ca.crt", crl_path, floor=floor)
    assert CrlFloor(floor).highest() == 1
    ca.revoke("west-china")
    ca.crl()
    ca.save(tmp_path / "ca")
    with pytest.raises(IntegrityError, match="was revoked"):
        trust.verify(party.certificate)  # re-reads CRL number 2, and records it
    assert CrlFloor(floor).highest() == 2

    crl_path.write_bytes(before)
    with pytest.raises(ConfigError) as refused:  # "after a restart": a new store, same state
        TrustStore.load(tmp_path / "ca" / "ca.crt", crl_path, floor=floor)
    message = str(refused.value)
    assert "is CRL number 1" in message
    assert "older than CRL number 2 this party already relied on" in message
    assert str(floor) in message
    assert "Copy the newest crl.pem" in message


def test_the_floor_file_names_its_own_damage(tmp_path: Path) -> None:
    floor = CrlFloor(tmp_path / "crl-number.json")
    assert floor.highest() == 0
    floor.path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"crl-number\.json does not record a CRL number"):
        floor.highest()
    floor.path.write_text('{"crl_number": -3}')
    with pytest.raises(ConfigError, match="-3 is not a CRL number"):
        floor.highest()


def test_notices_warn_before_expiry_and_name_the_remedy(ca: CertificateAuthority) -> None:
    now = datetime.now(UTC)
    crl = ca.crl(valid_days=10, now=now)
    assert crl_number(crl) == 1
    assert crl_notice(crl, "crl.pem", now=now, warn_days=7) is None
    soon = crl_notice(crl, "crl.pem", now=now + timedelta(days=8), warn_days=7)
    assert soon is not None
    assert soon[0] == logging.WARNING
    assert "expires on" in soon[1]
    assert "in 2.0 days" in soon[1]
    assert "alliance consortium renew-crl" in soon[1]
    late = crl_notice(crl, "crl.pem", now=now + timedelta(days=11))
    assert late is not None
    assert late[0] == logging.ERROR
    assert "expired on" in late[1]
    assert "every party's TLS handshake and message is refused" in late[1]


def test_notices_are_logged_once_not_on_every_handshake(
    ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    expired = ca.crl(valid_days=1, now=datetime.now(UTC) - timedelta(days=2))
    notices = CrlNotices("crl.pem")
    with caplog.at_level(logging.WARNING, logger="alliance.crypto.revocation"):
        for _ in range(50):
            notices.check(expired)
    assert len(caplog.records) == 1
    assert caplog.records[0].levelno == logging.ERROR
    renewed = ca.crl(valid_days=3)
    with caplog.at_level(logging.WARNING, logger="alliance.crypto.revocation"):
        notices.check(renewed)  # another list, another notice (it expires within 7 days)
    assert len(caplog.records) == 2
    assert "CRL number 2" in caplog.records[1].getMessage()


def test_a_floor_that_cannot_be_written_is_a_config_error(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the state folder should be")
    with pytest.raises(ConfigError, match=r"cannot read the CRL number recorded in .*not-a-folder"):
        CrlFloor(blocker / "crl-number.json").raise_to(ca.crl())
