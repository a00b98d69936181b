"""Keys born at the hospital: requests, their proofs, signing, installing and key rotation.

The hospital's commands (``alliance site init``, ``install-cert``) and the consortium's
(``init --site-requests``, ``sign-request``, ``revoke-site --previous``) run on real folders;
a forged or altered request is built with ``cryptography`` the way an attacker would.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from rich.console import Console
from typer.testing import CliRunner, Result

from alliance.cli import common
from alliance.cli.app import app
from alliance.core.errors import ConfigError, IntegrityError
from alliance.crypto import SIGNING_KEY_OID, CertificateAuthority, Role, TrustStore
from alliance.crypto.enrolment import (
    SIGNING_PROOF_OID,
    make_site_keys,
    read_request,
    read_request_file,
)
from alliance.crypto.keyfiles import load_certificate, load_private_key, load_signing_key

SITES = """\
[coordinator]
host = "127.0.0.1"
port = 9443

[[site]]
id = "west-china"

[[site]]
id = "ruijin"
"""
PEM = serialization.Encoding.PEM
RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "console", Console(width=400))
    monkeypatch.setattr(common, "err", Console(width=400, stderr=True))


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"ALLIANCE_CA_PASSPHRASE": None})


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def consortium(tmp_path: Path) -> Path:
    (tmp_path / "sites.toml").write_text(SITES, encoding="utf-8")
    out = tmp_path / "consortium"
    result = run(
        "consortium", "init", "rare-west", "--sites", str(tmp_path / "sites.toml"),
        "--out", str(out), "--site-requests",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def enrol(consortium: Path, hospital: Path, site: str, *extra: str) -> Result:
    """The hospital makes keys and a request, the consortium signs it, the hospital installs."""
    made = run("site", "init", "--site", site, "--out", str(hospital), *extra)
    assert made.exit_code == 0, made.output
    signed = run("consortium", "sign-request", str(consortium), str(hospital / "site.csr"), *extra)
    if signed.exit_code != 0:
        return signed
    installed = run(
        "site", "install-cert", str(consortium / "sites" / site), "--dir", str(hospital)
    )
    assert installed.exit_code == 0, installed.output
    return signed


def trust_of(consortium: Path) -> TrustStore:
    return TrustStore.load(
        consortium / "coordinator" / "ca.crt", consortium / "coordinator" / "crl.pem"
    )


def forge(
    name: str,
    tls_key: ec.EllipticCurvePrivateKey,
    signing_public: bytes,
    proof: bytes | None,
) -> bytes:
    """A request signed by ``tls_key`` carrying whatever signing key and proof it is given."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site"),
            ]
        )
    )
    builder = builder.add_extension(
        x509.UnrecognizedExtension(SIGNING_KEY_OID, signing_public), critical=False
    )
    if proof is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(SIGNING_PROOF_OID, proof), critical=False
        )
    return builder.sign(tls_key, hashes.SHA256()).public_bytes(PEM)


def proof_for(
    signing: ed25519.Ed25519PrivateKey, name: str, tls: ec.EllipticCurvePublicKey
) -> bytes:
    label = b"guardian-alliance site request v1\x00"
    return signing.sign(label + name.encode() + b"\x00" + tls.public_bytes(*SPKI))


def test_site_init_keeps_the_keys_private_and_the_request_binds_both(tmp_path: Path) -> None:
    hospital = tmp_path / "west-china"
    result = run("site", "init", "--site", "west-china", "--out", str(hospital))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in hospital.iterdir()) == ["signing.key", "site.csr", "site.key"]
    assert mode(hospital) == 0o700
    assert mode(hospital / "site.key") == mode(hospital / "signing.key") == 0o600
    request = read_request_file(hospital / "site.csr")
    assert request.name == "west-china"
    assert request.fingerprint in result.stdout
    tls = load_private_key(hospital / "site.key").public_key()
    assert tls.public_bytes(*SPKI) == request.tls_public_key.public_bytes(*SPKI)
    signing = load_signing_key(hospital / "signing.key").public_key()
    assert signing.public_bytes(*RAW) == request.signing_public_key.public_bytes(*RAW)
    again = run("site", "init", "--site", "west-china", "--out", str(hospital))
    assert again.exit_code == 2
    assert "already has keys" in again.stderr
    assert tls.public_bytes(*SPKI) == load_private_key(
        hospital / "site.key"
    ).public_key().public_bytes(*SPKI)


def test_a_tampered_request_is_refused(tmp_path: Path) -> None:
    request = make_site_keys(tmp_path / "h", "west-china")
    der = request.csr.public_bytes(serialization.Encoding.DER)
    raw_signing = request.signing_public_key.public_bytes(*RAW)
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*RAW)
    for altered in (
        der.replace(b"west-china", b"east-china"),  # another site's name
        der.replace(raw_signing, other),  # another message-signing key
    ):
        assert altered != der
        pem = x509.load_der_x509_csr(altered).public_bytes(PEM)
        with pytest.raises(ConfigError, match="signature its TLS key did not make"):
            read_request(pem, where="site.csr")
    with pytest.raises(ConfigError, match="is not a PEM certificate signing request"):
        read_request(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", where="site.csr")


def test_a_wrong_proof_of_possession_is_refused() -> None:
    tls = ec.generate_private_key(ec.SECP256R1())
    signing = ed25519.Ed25519PrivateKey.generate()
    mine = signing.public_key().public_bytes(*RAW)
    good = forge("ruijin", tls, mine, proof_for(signing, "ruijin", tls.public_key()))
    assert read_request(good, where="good.csr").name == "ruijin"
    # A victim's signing key claimed without its private half: the proof is by another key.
    victim = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*RAW)
    other_tls = ec.generate_private_key(ec.SECP256R1()).public_key()
    for bad in (
        forge("ruijin", tls, victim, proof_for(signing, "ruijin", tls.public_key())),
        forge("ruijin", tls, mine, None),
        forge("ruijin", tls, mine, proof_for(signing, "pumch", tls.public_key())),
        forge("ruijin", tls, mine, proof_for(signing, "ruijin", other_tls)),  # replayed proof
    ):
        with pytest.raises(ConfigError, match="no valid proof that its maker holds"):
            read_request(bad, where="bad.csr")
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "coordinator")])
    )
    no_role = builder.sign(tls, hashes.SHA256()).public_bytes(PEM)
    with pytest.raises(ConfigError, match="asks for role"):
        read_request(no_role, where="x.csr")


def test_the_consortium_refuses_a_forged_request_and_writes_nothing(
    consortium: Path, tmp_path: Path
) -> None:
    tls = ec.generate_private_key(ec.SECP256R1())
    victim = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*RAW)
    liar = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "forged.csr"
    path.write_bytes(forge("ruijin", tls, victim, proof_for(liar, "ruijin", tls.public_key())))
    before = sorted(p.name for p in consortium.rglob("*"))
    result = run("consortium", "sign-request", str(consortium), str(path))
    assert result.exit_code == 2
    assert "no valid proof" in result.stderr
    assert "Traceback" not in result.output
    assert sorted(p.name for p in consortium.rglob("*")) == before


def test_a_request_is_certified_and_installed_without_any_key_leaving_the_hospital(
    consortium: Path, tmp_path: Path
) -> None:
    assert not (consortium / "sites").exists()
    hospital = tmp_path / "hospital"
    signed = enrol(consortium, hospital, "west-china")
    assert signed.exit_code == 0, signed.output
    request = read_request_file(hospital / "site.csr")
    assert request.fingerprint in signed.stdout
    root = tomllib.loads((consortium / "consortium.toml").read_text())["ca_fingerprint"]
    assert root in signed.stdout  # read to the hospital, which checks its ca.crt
    reply = consortium / "sites" / "west-china"
    assert sorted(p.name for p in reply.iterdir()) == ["ca.crt", "site.crt", "site.toml"]
    cert = load_certificate(hospital / "site.crt")
    identity = trust_of(consortium).verify(cert, role=Role.SITE, name="west-china")
    assert identity.signing_key.public_bytes(*RAW) == request.signing_public_key.public_bytes(*RAW)
    record = tomllib.loads((consortium / "consortium.toml").read_text())
    assert [(s["id"], s["serial"]) for s in record["site"]] == [
        ("west-china", f"{cert.serial_number:x}")
    ]
    config = tomllib.loads((hospital / "site.toml").read_text())
    assert config["site"] == "west-china"
    assert all((hospital / path).is_file() for path in config["tls"].values())


def test_a_second_request_for_an_issued_site_is_refused(consortium: Path, tmp_path: Path) -> None:
    assert enrol(consortium, tmp_path / "one", "ruijin").exit_code == 0
    impostor = tmp_path / "two"
    assert run("site", "init", "--site", "ruijin", "--out", str(impostor)).exit_code == 0
    result = run("consortium", "sign-request", str(consortium), str(impostor / "site.csr"))
    assert result.exit_code == 2
    assert "already in" in result.stderr
    assert "--rotate" in result.stderr
    ca = CertificateAuthority.load(consortium / "ca")
    with pytest.raises(ConfigError, match="already holds certificate"):
        ca.issue_request(read_request_file(impostor / "site.csr"))
    with pytest.raises(ConfigError, match="holds no valid certificate to rotate"):
        ca.issue_request(make_site_keys(tmp_path / "new", "pumch"), rotation=True)


def test_a_wrong_fingerprint_read_over_the_phone_is_refused(
    consortium: Path, tmp_path: Path
) -> None:
    request = make_site_keys(tmp_path / "h", "ruijin")
    wrong = run(
        "consortium", "sign-request", str(consortium), str(tmp_path / "h" / "site.csr"),
        "--fingerprint", "00" * 32,
    )  # fmt: skip
    assert wrong.exit_code == 2
    assert "do not sign it" in wrong.stderr
    right = run(
        "consortium", "sign-request", str(consortium), str(tmp_path / "h" / "site.csr"),
        "--fingerprint", request.fingerprint.upper(),
    )  # fmt: skip
    assert right.exit_code == 0, right.output


def test_install_cert_refuses_a_certificate_for_other_keys(
    consortium: Path, tmp_path: Path
) -> None:
    assert enrol(consortium, tmp_path / "west", "west-china").exit_code == 0
    mine = tmp_path / "ruijin"
    assert run("site", "init", "--site", "ruijin", "--out", str(mine)).exit_code == 0
    result = run(
        "site", "install-cert", str(consortium / "sites" / "west-china"), "--dir", str(mine)
    )
    assert result.exit_code == 2
    assert "does not bind the keys in" in result.stderr
    assert not (mine / "site.crt").exists()
    stranger = CertificateAuthority.create("elsewhere")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    cert = stranger.issue_request(read_request_file(mine / "site.csr"))
    (foreign / "site.crt").write_bytes(cert.public_bytes(PEM))
    (foreign / "ca.crt").write_bytes(stranger.certificate.public_bytes(PEM))
    (mine / "ca.crt").write_bytes((consortium / "ca" / "ca.crt").read_bytes())
    other = run("site", "install-cert", str(foreign), "--dir", str(mine))
    assert other.exit_code == 2
    assert "another consortium" in other.stderr


def test_key_rotation_keeps_the_site_valid_then_revokes_the_old_certificate(
    consortium: Path, tmp_path: Path
) -> None:
    hospital = tmp_path / "hospital"
    assert enrol(consortium, hospital, "ruijin").exit_code == 0
    old = load_certificate(hospital / "site.crt")
    old_key = (hospital / "site.key").read_bytes()
    trust = trust_of(consortium)
    same = run(
        "consortium", "sign-request", str(consortium), str(hospital / "site.csr"), "--rotate"
    )
    assert same.exit_code == 2
    assert "a rotation needs new keys" in same.stderr
    made = run("site", "init", "--site", "ruijin", "--out", str(hospital), "--rotate")
    assert made.exit_code == 0, made.output
    assert (hospital / "site.key").read_bytes() == old_key  # still running on the old keys
    assert mode(hospital / "site.next.key") == mode(hospital / "signing.next.key") == 0o600
    pending = run("site", "init", "--site", "ruijin", "--out", str(hospital), "--rotate")
    assert pending.exit_code == 2
    assert "already pending" in pending.stderr
    signed = run(
        "consortium", "sign-request", str(consortium), str(hospital / "site.csr"), "--rotate"
    )
    assert signed.exit_code == 0, signed.output
    assert "--previous" in signed.stdout
    trust.verify(old, name="ruijin")  # both valid while the site switches: no downtime
    installed = run(
        "site", "install-cert", str(consortium / "sites" / "ruijin"), "--dir", str(hospital)
    )
    assert installed.exit_code == 0, installed.output
    assert not (hospital / "site.next.key").exists()
    assert (hospital / "site.key").read_bytes() != old_key
    new = load_certificate(hospital / "site.crt")
    assert new.serial_number != old.serial_number
    tls = load_private_key(hospital / "site.key").public_key()
    assert tls.public_bytes(*SPKI) == new.public_key().public_bytes(*SPKI)
    revoked = run("consortium", "revoke-site", str(consortium), "ruijin", "--previous")
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(IntegrityError, match="was revoked on"):
        trust.verify(old)  # the same store re-reads the coordinator's changed CRL
    assert trust.verify(new, name="ruijin").serial == new.serial_number
    record = tomllib.loads((consortium / "consortium.toml").read_text())
    [entry] = [s for s in record["site"] if s["id"] == "ruijin"]
    assert entry["serial"] == f"{new.serial_number:x}"
    assert entry["revoked"] is False
    twice = run("consortium", "revoke-site", str(consortium), "ruijin", "--previous")
    assert twice.exit_code == 2
    assert "rotation is already complete" in twice.stderr


def test_centrally_made_site_keys_are_flagged_as_demo_only(tmp_path: Path) -> None:
    (tmp_path / "sites.toml").write_text(SITES, encoding="utf-8")
    out = tmp_path / "demo"
    made = run(
        "consortium", "init", "demo", "--sites", str(tmp_path / "sites.toml"), "--out", str(out)
    )
    assert made.exit_code == 0, made.output
    assert "one-machine demo" in made.stderr
    assert "--site-requests" in made.stderr
    added = run("consortium", "add-site", str(out), "pumch")
    assert added.exit_code == 0, added.output
    assert "one-machine demo" in added.stderr


def _bad_requests(tmp_path: Path) -> dict[str, bytes]:
    good = make_site_keys(tmp_path / "good", "pumch")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pumch")]))
        .sign(rsa_key, hashes.SHA256())
    )
    tls = ec.generate_private_key(ec.SECP256R1())
    signing = ed25519.Ed25519PrivateKey.generate()
    raw = signing.public_key().public_bytes(*RAW)
    return {
        "empty": b"",
        "random bytes": os.urandom(300),
        "DER, not PEM": good.csr.public_bytes(serialization.Encoding.DER),
        "a certificate": (tmp_path / "consortium" / "ca" / "ca.crt").read_bytes(),
        "a private key": (tmp_path / "good" / "site.key").read_bytes(),
        "truncated": good.pem()[:200],
        "RSA key": rsa_csr.public_bytes(PEM),
        "reserved name": forge(
            "coordinator", tls, raw, proof_for(signing, "coordinator", tls.public_key())
        ),
        "invalid name": forge(
            "West_China", tls, raw, proof_for(signing, "West_China", tls.public_key())
        ),
        "short signing key": forge(
            "pumch", tls, raw[:16], proof_for(signing, "pumch", tls.public_key())
        ),
    }


def test_bad_request_files_are_refused_cleanly(consortium: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in consortium.rglob("*") if p.is_file()}
    for what, data in _bad_requests(tmp_path).items():
        path = tmp_path / "bad.csr"
        path.write_bytes(data)
        result = run("consortium", "sign-request", str(consortium), str(path))
        assert result.exit_code == 2, (what, result.output)
        assert str(path) in result.stderr or "reserved" in result.stderr, (what, result.stderr)
        assert "Traceback" not in result.output, what
    missing = run("consortium", "sign-request", str(consortium), str(tmp_path / "none.csr"))
    assert missing.exit_code == 2
    assert "does not exist" in missing.stderr
    assert {p: p.read_bytes() for p in consortium.rglob("*") if p.is_file()} == before


def test_bad_site_arguments_are_refused_cleanly(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    cases = [
        (("site", "init", "--site", "West_China", "--out", str(tmp_path / "h")), "not a valid"),
        (
            ("site", "init", "--site", "ruijin", "--out", str(tmp_path / "h"), "--rotate"),
            "no installed site.crt",
        ),
        (
            ("site", "install-cert", str(tmp_path / "nowhere"), "--dir", str(tmp_path)),
            "is not a folder",
        ),
        (("site", "install-cert", str(tmp_path), "--dir", str(tmp_path)), "does not exist"),
    ]
    for args, message in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
