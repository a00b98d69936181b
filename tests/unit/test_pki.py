"""The consortium PKI: what the root issues, what it records, and what a trust store accepts.

Every refusal must be an :class:`IntegrityError` (a certificate that fails a check) or a
:class:`ConfigError` (a file or setting that is unusable) whose message says what failed.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto import (
    SIGNING_KEY_OID,
    CertificateAuthority,
    Role,
    TrustStore,
    load_certificate,
    load_private_key,
    load_signing_key,
    signing_public_key,
)

RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test-consortium")


@pytest.fixture
def trust(ca: CertificateAuthority) -> TrustStore:
    return TrustStore(ca.certificate, ca.crl())


def test_root_is_a_ca_limited_to_leaf_certificates(ca: CertificateAuthority) -> None:
    root = ca.certificate
    constraints = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert root.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "test-consortium"
    )
    root.verify_directly_issued_by(root)
    assert ca.consortium == "test-consortium"


def test_party_certificate_names_party_consortium_role_and_binds_signing_key(
    ca: CertificateAuthority,
) -> None:
    party = ca.issue("west-china", Role.SITE)
    cert = party.certificate
    attrs = {a.oid: a.value for a in cert.subject}
    assert attrs[NameOID.COMMON_NAME] == "west-china"
    assert attrs[NameOID.ORGANIZATION_NAME] == "test-consortium"
    assert attrs[NameOID.ORGANIZATIONAL_UNIT_NAME] == "site"
    ext = cert.extensions.get_extension_for_oid(SIGNING_KEY_OID)
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == party.signing_key.public_key().public_bytes(*RAW)
    assert len(ext.value.value) == 32
    assert SIGNING_KEY_OID.dotted_string.startswith("2.25.")
    bound = signing_public_key(cert)
    assert bound is not None
    assert bound.public_bytes(*RAW) == ext.value.value
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert 0 < cert.serial_number < 2**159
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert isinstance(public.curve, ec.SECP256R1)
    assert public.public_numbers() == party.tls_key.public_key().public_numbers()
    cert.verify_directly_issued_by(ca.certificate)


def test_coordinator_gets_server_auth_and_host_names(ca: CertificateAuthority) -> None:
    cert = ca.issue(
        "coordinator",
        Role.COORDINATOR,
        hosts=["coord.example.org", "10.0.0.5", "localhost", "127.0.0.1", "10.0.0.5"],
    ).certificate
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("127.0.0.1"),
    ]


def test_coordinator_needs_a_host_and_hosts_must_be_hosts(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="at least one host"):
        ca.issue("coordinator", Role.COORDINATOR)
    with pytest.raises(ConfigError, match="not a host name"):
        ca.issue("coordinator", Role.COORDINATOR, hosts=["https://x.org/"])
    with pytest.raises(ConfigError, match="IDNA"):
        ca.issue("coordinator", Role.COORDINATOR, hosts=["hôpital.fr"])


@pytest.mark.parametrize("name", ["", "West", "-x", "x-", "a_b", "a.b", "x" * 64, "é", "a\n"])
def test_invalid_party_names_are_refused(ca: CertificateAuthority, name: str) -> None:
    with pytest.raises(ConfigError, match="not a valid party name"):
        ca.issue(name, Role.SITE)


@pytest.mark.parametrize("name", ["a", "7", "west-china", "x" * 63])
def test_valid_party_names(ca: CertificateAuthority, name: str) -> None:
    assert (
        ca.issue(name, Role.SITE)
        .certificate.subject.rfc4514_string()
        .startswith(f"OU=site,O=test-consortium,CN={name}")
    )


def test_reserved_names_and_bad_consortium_names(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError, match="reserved"):
        ca.issue("coordinator", Role.SITE)
    for bad in ("", " x", "a/b", "x" * 65, "a\nb"):
        with pytest.raises(ConfigError, match="consortium name"):
            CertificateAuthority.create(bad)


def test_a_second_live_certificate_for_a_name_needs_revocation_first(
    ca: CertificateAuthority,
) -> None:
    first = ca.issue("west-china", Role.SITE)
    with pytest.raises(ConfigError, match="revoke it first"):
        ca.issue("west-china", Role.SITE)
    ca.issue("west-china", Role.OPERATOR)  # another role is another certificate
    assert ca.revoke("west-china") == [first.serial]
    second = ca.issue("west-china", Role.SITE)
    assert second.serial != first.serial
    with pytest.raises(ConfigError, match="no unrevoked site certificate named 'nobody'"):
        ca.revoke("nobody")


def test_certificates_cannot_outlive_the_root() -> None:
    ca = CertificateAuthority.create("short", valid_days=10)
    with pytest.raises(ConfigError, match="after the consortium root"):
        ca.issue("west-china", Role.SITE, valid_days=30)


def test_crl_lists_revoked_serials_and_is_signed(ca: CertificateAuthority) -> None:
    a, b = ca.issue("a", Role.SITE), ca.issue("b", Role.SITE)
    ca.revoke("a")
    now = datetime.now(UTC).replace(microsecond=0)
    crl = ca.crl(valid_days=7, now=now)
    root_key = ca.certificate.public_key()
    assert isinstance(root_key, ec.EllipticCurvePublicKey)
    assert isinstance(root_key.curve, ec.SECP256R1)
    assert crl.is_signature_valid(root_key)
    assert crl.get_revoked_certificate_by_serial_number(a.serial) is not None
    assert crl.get_revoked_certificate_by_serial_number(b.serial) is None
    assert crl.last_update_utc == now
    assert crl.next_update_utc == now + timedelta(days=7)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    later = ca.crl(now=now + timedelta(seconds=5))
    assert later.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2


def test_consecutive_crls_have_strictly_increasing_last_update(ca: CertificateAuthority) -> None:
    first, second = ca.crl(), ca.crl()
    assert second.last_update_utc > first.last_update_utc


def test_save_and_load_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    site = ca.issue("west-china", Role.SITE)
    gone = ca.issue("gone", Role.SITE)
    ca.revoke("gone")
    ca.save(tmp_path / "ca")
    assert {p.name for p in (tmp_path / "ca").iterdir()} == {
        "ca.crt",
        "ca.key",
        "crl.pem",
        "state.json",
    }
    assert mode(tmp_path / "ca" / "ca.key") == 0o600
    assert b"ENCRYPTED" not in (tmp_path / "ca" / "ca.key").read_bytes()
    state = json.loads((tmp_path / "ca" / "state.json").read_text())
    assert [i["name"] for i in state["issued"]] == ["west-china", "gone"]
    assert state["issued"][0]["serial"] == f"{site.serial:x}"
    assert state["issued"][0]["fingerprint"] == site.fingerprint
    assert state["revoked"][0]["serial"] == f"{gone.serial:x}"

    loaded = CertificateAuthority.load(tmp_path / "ca")
    assert loaded.certificate == ca.certificate
    assert loaded.issued == ca.issued
    assert loaded.revoked_at(gone.serial) == ca.revoked_at(gone.serial) is not None
    assert loaded.revoked_at(site.serial) is None
    with pytest.raises(ConfigError, match="revoke it first"):
        loaded.issue("west-china", Role.SITE)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()}
    loaded.save(tmp_path / "ca")  # nothing changed: no file changes
    assert {p.name: p.read_bytes() for p in (tmp_path / "ca").iterdir()} == before


def test_encrypted_ca_key_needs_its_passphrase(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca", passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "ca" / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match=r"ca\.key is encrypted and no passphrase"):
        CertificateAuthority.load(tmp_path / "ca")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        CertificateAuthority.load(tmp_path / "ca", passphrase=b"battery staple")
    loaded = CertificateAuthority.load(tmp_path / "ca", passphrase=b"correct horse")
    loaded.issue("x", Role.SITE)
    loaded.save(tmp_path / "ca")  # the key is never rewritten, so never in clear
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "ca" / "ca.key").read_bytes()


def test_load_names_the_missing_or_broken_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        CertificateAuthority.load(tmp_path / "nowhere")
    ca.save(tmp_path / "ca")
    for name in ("state.json", "crl.pem", "ca.key", "ca.crt"):
        data = (tmp_path / "ca" / name).read_bytes()
        (tmp_path / "ca" / name).unlink()
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            CertificateAuthority.load(tmp_path / "ca")
        (tmp_path / "ca" / name).write_bytes(data)
    (tmp_path / "ca" / "state.json").write_text('{"format": 1, "crl_number": "x"}')
    with pytest.raises(ConfigError, match=r"state\.json: field 'crl_number'"):
        CertificateAuthority.load(tmp_path / "ca")


def test_save_refuses_a_folder_of_another_root(ca: CertificateAuthority, tmp_path: Path) -> None:
    CertificateAuthority.create("other").save(tmp_path / "ca")
    with pytest.raises(ConfigError, match="another root certificate"):
        ca.save(tmp_path / "ca")


def test_issued_party_files_and_loaders(ca: CertificateAuthority, tmp_path: Path) -> None:
    party = ca.issue("west-china", Role.SITE)
    paths = party.write(tmp_path / "bundle", stem="site")
    assert paths == {
        "certificate": tmp_path / "bundle" / "site.crt",
        "key": tmp_path / "bundle" / "site.key",
        "signing_key": tmp_path / "bundle" / "signing.key",
    }
    assert mode(paths["key"]) == 0o600
    assert mode(paths["signing_key"]) == 0o600
    assert load_certificate(paths["certificate"]) == party.certificate
    tls_key = load_private_key(paths["key"])
    assert tls_key.private_numbers() == party.tls_key.private_numbers()
    signing = load_signing_key(paths["signing_key"])
    assert signing.public_key().public_bytes(*RAW) == party.signing_key.public_key().public_bytes(
        *RAW
    )
    with pytest.raises(ConfigError, match=r"site\.key holds a .*not an Ed25519 key"):
        load_signing_key(paths["key"])
    with pytest.raises(ConfigError, match=r"signing\.key holds a .*not an EC key"):
        load_private_key(paths["signing_key"])
    with pytest.raises(ConfigError, match=r"site\.key is not a PEM certificate"):
        load_certificate(paths["key"])
    with pytest.raises(ConfigError, match=r"nope\.crt does not exist"):
        load_certificate(tmp_path / "nope.crt")


# --- the trust store -------------------------------------------------------------------------


def test_verify_returns_the_identity(ca: CertificateAuthority, trust: TrustStore) -> None:
    party = ca.issue("west-china", Role.SITE)
    der = party.certificate.public_bytes(serialization.Encoding.DER)
    for given in (party.certificate, der):
        identity = trust.verify(given, role=Role.SITE, name="west-china")
        assert identity.name == "west-china"
        assert identity.role is Role.SITE
        assert identity.consortium == "test-consortium"
        assert identity.serial == party.serial
        assert identity.fingerprint == party.fingerprint
        assert identity.not_after == party.certificate.not_valid_after_utc
        assert identity.signing_key.public_bytes(*RAW) == (
            party.signing_key.public_key().public_bytes(*RAW)
        )


def test_verify_checks_role_and_name(ca: CertificateAuthority, trust: TrustStore) -> None:
    cert = ca.issue("a", Role.SITE).certificate
    with pytest.raises(IntegrityError, match="certificate names site 'a', message claims 'b'"):
        trust.verify(cert, name="b")
    with pytest.raises(IntegrityError, match="is for a site, not a coordinator"):
        trust.verify(cert, role=Role.COORDINATOR)


def test_verify_refuses_another_consortiums_certificate(trust: TrustStore) -> None:
    impostor = CertificateAuthority.create("test-consortium")  # same name, other key
    cert = impostor.issue("west-china", Role.SITE).certificate
    with pytest.raises(
        IntegrityError,
        match="certificate for 'west-china' is not issued by consortium CA 'test-consortium'",
    ):
        trust.verify(cert)


def test_verify_checks_validity_window(ca: CertificateAuthority, trust: TrustStore) -> None:
    start = datetime.now(UTC) - timedelta(days=10)
    expired = ca.issue("old", Role.SITE, not_before=start, valid_days=2).certificate
    with pytest.raises(IntegrityError, match=r"certificate for 'old' expired on \d{4}-\d\d-\d\d"):
        trust.verify(expired)
    fresh = ca.issue("new", Role.SITE).certificate
    with pytest.raises(IntegrityError, match="'new' is not valid before"):
        trust.verify(fresh, now=datetime.now(UTC) - timedelta(days=1))


def test_verify_refuses_revoked_certificates(ca: CertificateAuthority) -> None:
    party = ca.issue("gone", Role.SITE)
    ca.revoke("gone")
    trust = TrustStore(ca.certificate, ca.crl())
    with pytest.raises(
        IntegrityError, match=f"certificate serial {party.serial:x} of site 'gone' was revoked on"
    ):
        trust.verify(party.certificate)


def test_verify_refuses_the_root_garbage_and_unbound_certificates(
    ca: CertificateAuthority, trust: TrustStore, tmp_path: Path
) -> None:
    with pytest.raises(IntegrityError, match="not a party certificate"):
        trust.verify(ca.certificate)
    with pytest.raises(IntegrityError, match="not a valid DER"):
        trust.verify(b"\x30\x03garbage")
    ca.save(tmp_path / "ca")
    key = load_private_key(tmp_path / "ca" / "ca.key")
    party = ca.issue("plain", Role.SITE)
    unbound = (
        x509.CertificateBuilder()
        .subject_name(party.certificate.subject)
        .issuer_name(ca.certificate.subject)
        .public_key(party.tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(party.certificate.not_valid_before_utc)
        .not_valid_after(party.certificate.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(IntegrityError, match="binds no Ed25519 signing key"):
        trust.verify(unbound)


def test_trust_store_checks_its_inputs(ca: CertificateAuthority) -> None:
    leaf = ca.issue("x", Role.SITE).certificate
    with pytest.raises(ConfigError, match="not a CA certificate"):
        TrustStore(leaf)
    other = CertificateAuthority.create("test-consortium")
    with pytest.raises(ConfigError, match="not signed by consortium CA"):
        TrustStore(ca.certificate, other.crl())


def test_trust_store_rereads_a_changed_crl_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    party = ca.issue("west-china", Role.SITE)
    ca.save(tmp_path / "ca")
    trust = TrustStore.load(tmp_path / "ca" / "ca.crt", tmp_path / "ca" / "crl.pem")
    assert trust.consortium == "test-consortium"
    trust.verify(party.certificate)
    assert trust.reload_crl() is False  # unchanged file: one stat, no parsing
    ca.revoke("west-china")
    ca.crl()
    ca.save(tmp_path / "ca")
    with pytest.raises(IntegrityError, match="was revoked on"):
        trust.verify(party.certificate)  # no explicit reload needed


def test_trust_store_fails_closed_on_a_bad_or_older_crl(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    old = ca.crl(now=now - timedelta(minutes=5))
    ca.crl(now=now)
    ca.save(tmp_path / "ca")
    crl_path = tmp_path / "ca" / "crl.pem"
    trust = TrustStore.load(tmp_path / "ca" / "ca.crt", crl_path)
    crl_path.write_bytes(old.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ConfigError, match="older than the CRL in use"):
        trust.reload_crl()
    crl_path.write_bytes(
        CertificateAuthority.create("x").crl().public_bytes(serialization.Encoding.PEM)
    )
    party = ca.issue("y", Role.SITE)
    with pytest.raises(ConfigError, match="not signed by consortium CA"):
        trust.verify(party.certificate)
    crl_path.unlink()
    with pytest.raises(ConfigError, match=r"CRL file .* is missing"):
        trust.verify(party.certificate)


def test_an_expired_crl_refuses_everyone(ca: CertificateAuthority) -> None:
    party = ca.issue("west-china", Role.SITE)
    trust = TrustStore(ca.certificate, ca.crl(valid_days=30))
    with pytest.raises(IntegrityError, match=r"revocation list expired on .* renew-crl"):
        trust.verify(party.certificate, now=datetime.now(UTC) + timedelta(days=31))
