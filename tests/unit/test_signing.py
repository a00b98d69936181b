"""Message signatures: a Signer's signature verifies only under its own certified key."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto import (
    SIGNATURE_SIZE,
    CertificateAuthority,
    IssuedParty,
    Role,
    Signer,
    TrustStore,
    verify_signature,
)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("signing-test")


@pytest.fixture
def site(ca: CertificateAuthority) -> IssuedParty:
    return ca.issue("west-china", Role.SITE)


@pytest.fixture
def trust(ca: CertificateAuthority) -> TrustStore:
    return TrustStore(ca.certificate, ca.crl())


def test_sign_and_verify_through_the_trust_store(site: IssuedParty, trust: TrustStore) -> None:
    signer = Signer(site.signing_key, site.certificate)
    assert signer.name == "west-china"
    data = b"model update, round 3"
    signature = signer.sign(data)
    assert len(signature) == SIGNATURE_SIZE == 64
    identity = trust.verify(signer.certificate_der, role=Role.SITE, name=signer.name)
    verify_signature(identity, data, signature)


def test_altered_data_or_signature_is_refused(site: IssuedParty, trust: TrustStore) -> None:
    signer = Signer(site.signing_key, site.certificate)
    identity = trust.verify(signer.certificate_der)
    signature = signer.sign(b"payload")
    with pytest.raises(IntegrityError, match="signature of west-china does not verify"):
        verify_signature(identity, b"payloaD", signature)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_signature(identity, b"payload", flipped)
    with pytest.raises(IntegrityError, match="63 bytes, expected 64"):
        verify_signature(identity, b"payload", signature[:63])


def test_another_partys_signature_is_refused(
    ca: CertificateAuthority, site: IssuedParty, trust: TrustStore
) -> None:
    other = ca.issue("ruijin", Role.SITE)
    forged = Signer(other.signing_key, other.certificate).sign(b"payload")
    identity = trust.verify(site.certificate, name="west-china")
    with pytest.raises(IntegrityError, match="not signed by site 'west-china'"):
        verify_signature(identity, b"payload", forged)


def test_signer_refuses_a_key_its_certificate_does_not_bind(site: IssuedParty) -> None:
    with pytest.raises(ConfigError, match="signing key does not match the certificate"):
        Signer(ed25519.Ed25519PrivateKey.generate(), site.certificate)


def test_signer_from_files(site: IssuedParty, trust: TrustStore, tmp_path: Path) -> None:
    paths = site.write(tmp_path, stem="site")
    signer = Signer.from_files(paths["certificate"], paths["signing_key"])
    assert signer.certificate == site.certificate
    identity = trust.verify(signer.certificate_der)
    verify_signature(identity, b"x", signer.sign(b"x"))
    stranger = CertificateAuthority.create("signing-test").issue("west-china", Role.SITE)
    other = stranger.write(tmp_path / "other", stem="site")
    with pytest.raises(ConfigError, match=r"does not match.*other/signing\.key"):
        Signer.from_files(paths["certificate"], other["signing_key"])
    with pytest.raises(ConfigError, match=r"signing key file .*site\.key holds"):
        Signer.from_files(paths["certificate"], paths["key"])
