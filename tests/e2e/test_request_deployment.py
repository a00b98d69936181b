"""A consortium provisioned by requests: no hospital key ever exists outside its hospital.

The consortium runs ``alliance consortium init --site-requests``; each of two hospitals runs
``alliance site init`` in its own folder, the consortium signs the two ``site.csr`` files
with ``sign-request``, and each hospital installs its answer with ``install-cert``. Every file
the consortium's commands wrote is then scanned for any hospital's private key material, and
the hospitals (real processes) complete a two-round study with the coordinator over HTTPS
with mutual TLS. Then one hospital rotates its keys while the coordinator runs: both
certificates are served until ``revoke-site --previous``, after which the old one is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from tests.e2e.deployment import Deployment, approve, free_port, study_text
from typer.testing import CliRunner, Result

from alliance.cli.app import app
from alliance.crypto.keyfiles import load_private_key, load_signing_key
from alliance.crypto.tls import client_context
from alliance.data.loading import write_jsonl
from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals

pytestmark = pytest.mark.slow

FEDERATION = "guardian"
#: The consortium's own keys: the root's, the coordinator's and the operator's.
CONSORTIUM_KEYS = {
    "ca/ca.key",
    "coordinator/coordinator.key",
    "coordinator/signing.key",
    "operator/operator.key",
    "operator/signing.key",
}


class RequestDeployment(Deployment):
    """Hospitals in their own folders, outside the consortium's."""

    def site_dir(self, site: str) -> Path:
        return self.root / "hospitals" / site


def alliance(*args: str) -> Result:
    result = CliRunner().invoke(app, list(args), env={"ALLIANCE_CA_PASSPHRASE": None})
    assert result.exit_code == 0, result.output
    return result


def provision_by_requests(root: Path, n_sites: int) -> RequestDeployment:
    onto = load_ontology()
    cohorts = generate_consortium(
        onto, onto.catalogue(), scaled_hospitals(0.1), CohortConfig(seed=7, n_diseases=60)
    )[:n_sites]
    port = free_port()
    lines = ["[coordinator]", 'host = "127.0.0.1"', f"port = {port}", ""]
    lines += [f'[[site]]\nid = "{c.hospital.id}"\n' for c in cohorts]
    (root / "sites.toml").write_text("\n".join(lines), encoding="utf-8")
    consortium = root / "consortium"
    alliance(
        "consortium", "init", FEDERATION, "--sites", str(root / "sites.toml"),
        "--out", str(consortium), "--site-requests",
    )  # fmt: skip
    d = RequestDeployment(root, tuple(c.hospital.id for c in cohorts), port)
    for c in cohorts:
        site, hospital = c.hospital.id, d.site_dir(c.hospital.id)
        alliance("site", "init", "--site", site, "--out", str(hospital))
        alliance("consortium", "sign-request", str(consortium), str(hospital / "site.csr"))
        alliance("site", "install-cert", str(consortium / "sites" / site), "--dir", str(hospital))
        write_jsonl(c.train, hospital / "cases.train.jsonl")
        write_jsonl(c.test, hospital / "cases.test.jsonl")
    toml = d.coordinator_dir / "coordinator.toml"
    toml.write_text(
        toml.read_text()
        .replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
        .replace("port = 8443", f"port = {port}")
    )
    return d


def private_material(hospital: Path) -> dict[str, bytes]:
    """Every encoding of a hospital's two private keys that a leak could take."""
    tls = load_private_key(hospital / "site.key")
    signing = load_signing_key(hospital / "signing.key")
    raw = signing.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    scalar = tls.private_numbers().private_value.to_bytes(32, "big")
    der = serialization.Encoding.DER, serialization.PrivateFormat.PKCS8
    return {
        "TLS key PEM": (hospital / "site.key").read_bytes(),
        "signing key PEM": (hospital / "signing.key").read_bytes(),
        "TLS key PKCS#8": tls.private_bytes(*der, serialization.NoEncryption()),
        "signing key PKCS#8": signing.private_bytes(*der, serialization.NoEncryption()),
        "TLS key scalar": scalar,
        "TLS key scalar (hex)": scalar.hex().encode(),
        "signing key seed": raw,
        "signing key seed (hex)": raw.hex().encode(),
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RequestDeployment]:
    d = provision_by_requests(tmp_path_factory.mktemp("requests"), 2)
    yield d
    d.stop()


def test_the_consortium_holds_no_hospital_private_key(deployment: RequestDeployment) -> None:
    consortium = deployment.root / "consortium"
    written = {
        str(p.relative_to(consortium)): p.read_bytes() for p in consortium.rglob("*") if p.is_file()
    }
    assert {f"sites/{s}/site.crt" for s in deployment.sites} <= set(written)
    with_keys = {name for name, data in written.items() if b"PRIVATE KEY" in data}
    assert with_keys == CONSORTIUM_KEYS
    for site in deployment.sites:
        for what, secret in private_material(deployment.site_dir(site)).items():
            for name, data in written.items():
                assert secret not in data, f"{site}'s {what} found in the consortium's {name}"


def test_hospitals_with_their_own_keys_complete_a_study_over_mutual_tls(
    deployment: RequestDeployment,
) -> None:
    d = deployment
    text = study_text("by-requests", list(d.sites), rounds=2, quorum=len(d.sites), timeout_s=120)
    approve(d, text)
    d.start_coordinator()
    d.submit(text)
    for site in d.sites:
        d.start_site(site)
    d.wait_sites(300)
    status = d.status("by-requests")
    assert status["status"] == "finished", status
    assert status["rounds_closed"] == 2
    for record in status["history"]:
        assert sorted(record["sites"]) == sorted(d.sites)
    assert status["rejections"] == 0


#: A poll the coordinator serves: a message waiting for the site (the finished study's end,
#: sent again once its card holds every hospital's evaluation), or none.
SERVED = (200, 204)


def poll(d: RequestDeployment, folder: Path) -> int | str:
    """The coordinator's answer to a site's poll with the certificate and key in ``folder``."""
    context = client_context(
        certificate=folder / "site.crt", key=folder / "site.key", ca=folder / "ca.crt"
    )
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{d.port}", verify=context) as client:
            return client.get("/v1/messages/next", params={"wait": 0}).status_code
    except httpx.TransportError as exc:
        return f"refused at the handshake: {exc}"


def test_a_hospital_rotates_its_keys_without_downtime_and_the_old_certificate_is_refused(
    deployment: RequestDeployment, tmp_path: Path
) -> None:
    d = deployment
    if d.coordinator is None or d.coordinator.poll() is not None:
        d.start_coordinator()
    site, consortium = d.sites[0], d.root / "consortium"
    hospital, old = d.site_dir(site), tmp_path / "old"
    old.mkdir()
    for name in ("site.crt", "site.key", "ca.crt"):
        (old / name).write_bytes((hospital / name).read_bytes())
    assert poll(d, old) in SERVED
    alliance("site", "init", "--site", site, "--out", str(hospital), "--rotate")
    alliance("consortium", "sign-request", str(consortium), str(hospital / "site.csr"), "--rotate")
    alliance("site", "install-cert", str(consortium / "sites" / site), "--dir", str(hospital))
    assert (hospital / "site.key").read_bytes() != (old / "site.key").read_bytes()
    assert poll(d, hospital) in SERVED
    assert poll(d, old) in SERVED  # both served while the site switches
    alliance("consortium", "revoke-site", str(consortium), site, "--previous")
    assert poll(d, old) not in SERVED  # the coordinator re-read its crl.pem
    assert poll(d, hospital) in SERVED
