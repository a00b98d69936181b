"""``alliance consortium``: init, add-site, revoke-site and renew-crl on real folders."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from rich.console import Console
from typer.testing import CliRunner, Result

from alliance.cli import common, consortium
from alliance.core.errors import IntegrityError
from alliance.crypto import (
    Role,
    Signer,
    TrustStore,
    client_context,
    load_certificate,
    server_context,
)

SITES = """\
[coordinator]
host = "coord.example.org"   # address sites use to reach the coordinator
port = 9443

[[site]]
id = "west-china"
name = "West China Hospital, Sichuan University"

[[site]]
id = "ruijin"
name = "Hôpital \\"Ruijin\\""

[[site]]
id = "pumch"
"""

EXPECTED_SITE_TOML = """\
# Guardian Alliance site agent of "pumch" in consortium "rare-west".
federation = "rare-west"
site = "pumch"
coordinator = "https://coord.example.org:9443"
# No network connection allowed? transport = "files": tasks arrive as bundles that
# `alliance site import` puts in [files] inbox; replies wait in outbox for `alliance site
# export`; the approved study files go in [files] studies (defaults: folders beside this file).
# transport = "files"

[tls]
certificate = "site.crt"
key = "site.key"
signing_key = "signing.key"
ca = "ca.crt"

[data]
# Fill in: this hospital's cases, a file or a folder (or an OMOP database URL). Formats:
# GA4GH Phenopacket v2 (.json), FHIR R4 Bundles (.json), CSV/TSV/Excel tables (see
# [data.table]), OMOP CDM tables (a folder with person.csv, observation.csv and
# condition_occurrence.csv), JSON lines. `alliance data check --config site.toml` shows how
# they were read, before anything is trained.
train = "cases.train.jsonl"
# Optional held-out cases; only aggregate top-k counts on them ever leave the hospital.
test = ""
# format = "auto"              # or jsonl, phenopacket, fhir, table, omop
# mapping = "local_codes.csv"  # local codes -> HP:/OMIM:/ORPHA: (columns code,target,label);
#                              # `alliance data map --config site.toml` suggests HPO terms
# hpo_release = "hp.obo"       # HPO release file: alternative ids, synonyms, SNOMED/UMLS xrefs
# report_min_count = 5         # counts below this are suppressed in the data-quality report
#
# [data.table]                 # for CSV and Excel files
# layout = "case"              # "case": a row per patient; "finding": a row per finding
# id = "id"                    # column names: id, sex, age, observed, excluded, diagnoses
#                              # (case layout) or id, code, status, kind, label (finding layout)
# code_system = "LOCAL"        # the system of codes written without a prefix (HP, SNOMEDCT...)
# encoding = "utf-8"           # e.g. "gbk" for files saved by Chinese Excel

[policy]
# sha256 of every study file this hospital approved (alliance study hash study.toml).
approved_studies = []
# Refuse to train when fewer local cases than this would be used.
min_cohort = 20

[privacy]
# This hospital's total differential-privacy budget over every study, decided by its privacy
# officer: a round that would take the patients' total past it is declined ("refused: budget").
# Spending is kept in <state dir>/privacy.ledger; `alliance site budget` shows it.
budget_epsilon = 8.0
delta = 1e-5

[state]
dir = "state"
"""

BUNDLE_FILES = {"ca.crt", "signing.key"}
SITE_IDS = ("west-china", "ruijin", "pumch")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """No line wrapping, so that messages can be matched whole."""
    monkeypatch.setattr(common, "console", Console(width=400))
    monkeypatch.setattr(common, "err", Console(width=400, stderr=True))


def run(*args: str, passphrase: str | None = None) -> Result:
    env = {"ALLIANCE_CA_PASSPHRASE": passphrase}
    return CliRunner().invoke(consortium.app, list(args), env=env)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def sites_file(tmp_path: Path) -> Path:
    path = tmp_path / "sites.toml"
    path.write_text(SITES, encoding="utf-8")
    return path


@pytest.fixture
def out(tmp_path: Path, sites_file: Path) -> Path:
    folder = tmp_path / "rare-west"
    result = run("init", "rare-west", "--sites", str(sites_file), "--out", str(folder))
    assert result.exit_code == 0, result.output
    assert "NOT encrypted" in result.stderr
    assert "Next steps" in result.stdout
    assert "offline" in result.stdout
    return folder


def trust_of(out: Path) -> TrustStore:
    return TrustStore.load(out / "coordinator" / "ca.crt", out / "coordinator" / "crl.pem")


def test_init_writes_every_bundle(out: Path) -> None:
    files = set(snapshot(out))
    expected = {"consortium.toml", "ca/ca.crt", "ca/ca.key", "ca/crl.pem", "ca/state.json"}
    expected |= {f"coordinator/{n}" for n in BUNDLE_FILES | {"crl.pem"}}
    expected |= {f"coordinator/coordinator.{x}" for x in ("crt", "key", "toml")}
    expected |= {f"operator/{n}" for n in BUNDLE_FILES}
    expected |= {f"operator/operator.{x}" for x in ("crt", "key", "toml")}
    for site in SITE_IDS:
        expected |= {f"sites/{site}/{n}" for n in BUNDLE_FILES}
        expected |= {f"sites/{site}/site.{x}" for x in ("crt", "key", "toml")}
    assert files == expected
    for name in files:
        path = out / name
        private = name.endswith(".key")
        assert mode(path) == (0o600 if private else 0o644), name
    assert (out / "coordinator" / "crl.pem").read_bytes() == (out / "ca" / "crl.pem").read_bytes()
    assert (out / "sites" / "pumch" / "site.toml").read_text() == EXPECTED_SITE_TOML
    west = (out / "sites" / "west-china" / "site.toml").read_text().splitlines()[0]
    assert west == (
        '# Guardian Alliance site agent of "West China Hospital, Sichuan University" in '
        'consortium "rare-west".'
    )


def test_issued_certificates_verify_with_the_right_role_and_name(out: Path) -> None:
    trust = trust_of(out)
    assert trust.consortium == "rare-west"
    parties = [("coordinator", Role.COORDINATOR, out / "coordinator", "coordinator")]
    parties.append(("operator", Role.OPERATOR, out / "operator", "operator"))
    parties += [(s, Role.SITE, out / "sites" / s, "site") for s in SITE_IDS]
    for name, role, folder, stem in parties:
        identity = trust.verify(load_certificate(folder / f"{stem}.crt"), role=role, name=name)
        signer = Signer.from_files(folder / f"{stem}.crt", folder / "signing.key")
        assert signer.name == name == identity.name
    coordinator = load_certificate(out / "coordinator" / "coordinator.crt")
    san = coordinator.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_config_files_parse_and_point_at_their_bundle(out: Path) -> None:
    coordinator = tomllib.loads((out / "coordinator" / "coordinator.toml").read_text())
    assert coordinator["federation"] == "rare-west"
    assert coordinator["server"] == {"host": "0.0.0.0", "port": 9443}
    assert coordinator["store"]["url"] == "sqlite:///coordinator.db"
    operator = tomllib.loads((out / "operator" / "operator.toml").read_text())
    assert operator["coordinator"] == "https://coord.example.org:9443"
    ruijin = tomllib.loads((out / "sites" / "ruijin" / "site.toml").read_text())
    assert ruijin["site"] == "ruijin"
    assert ruijin["policy"] == {"approved_studies": [], "min_cohort": 20}
    for folder, config in ((out / "coordinator", coordinator), (out / "operator", operator)):
        for path in config["tls"].values():
            assert (folder / path).is_file(), path
    tls = {k: out / "coordinator" / v for k, v in coordinator["tls"].items()}
    server_context(certificate=tls["certificate"], key=tls["key"], ca=tls["ca"], crl=tls["crl"])
    tls = {k: out / "sites" / "ruijin" / v for k, v in ruijin["tls"].items()}
    client_context(certificate=tls["certificate"], key=tls["key"], ca=tls["ca"])
    record = tomllib.loads((out / "consortium.toml").read_text())
    assert record["name"] == "rare-west"
    assert record["coordinator"]["host"] == "coord.example.org"
    assert [s["id"] for s in record["site"]] == list(SITE_IDS)
    assert record["site"][1]["name"] == 'Hôpital "Ruijin"'
    assert record["site"][2]["name"] == "pumch"
    cert = load_certificate(out / "sites" / "west-china" / "site.crt")
    assert record["site"][0]["serial"] == f"{cert.serial_number:x}"
    assert not any(s["revoked"] for s in record["site"])


def test_add_site_changes_no_other_file(out: Path) -> None:
    before = snapshot(out)
    result = run("add-site", str(out), "huaxi-2", "--name", "Huaxi second campus")
    assert result.exit_code == 0, result.output
    assert "sites/huaxi-2" in result.stdout
    after = snapshot(out)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"consortium.toml", "ca/state.json"}
    assert set(after) - set(before) == {
        f"sites/huaxi-2/{n}" for n in ("ca.crt", "signing.key", "site.crt", "site.key", "site.toml")
    }
    trust_of(out).verify(
        load_certificate(out / "sites" / "huaxi-2" / "site.crt"), role=Role.SITE, name="huaxi-2"
    )
    record = tomllib.loads((out / "consortium.toml").read_text())
    assert record["site"][-1]["id"] == "huaxi-2"
    assert record["site"][-1]["name"] == "Huaxi second campus"
    again = run("add-site", str(out), "huaxi-2")
    assert again.exit_code == 2
    assert "revoke-site" in again.stderr


def test_revoke_site_then_reissue(out: Path) -> None:
    old = load_certificate(out / "sites" / "ruijin" / "site.crt")
    trust = trust_of(out)
    trust.verify(old)
    result = run("revoke-site", str(out), "ruijin")
    assert result.exit_code == 0, result.output
    assert "re-reads" in result.stdout
    assert f"{old.serial_number:x}" in result.stdout
    assert (out / "coordinator" / "crl.pem").read_bytes() == (out / "ca" / "crl.pem").read_bytes()
    with pytest.raises(IntegrityError, match="of site 'ruijin' was revoked on"):
        trust.verify(old)  # the same store: it re-read the changed CRL file
    trust.verify(load_certificate(out / "sites" / "pumch" / "site.crt"), name="pumch")
    record = tomllib.loads((out / "consortium.toml").read_text())
    ruijin = next(s for s in record["site"] if s["id"] == "ruijin")
    assert ruijin["revoked"] is True
    assert ruijin["revoked_at"].endswith("Z")
    twice = run("revoke-site", str(out), "ruijin")
    assert twice.exit_code == 2
    assert "no unrevoked site certificate" in twice.stderr
    reissued = run("add-site", str(out), "ruijin")
    assert reissued.exit_code == 0, reissued.output
    new = load_certificate(out / "sites" / "ruijin" / "site.crt")
    assert trust.verify(new, name="ruijin").serial != old.serial_number
    record = tomllib.loads((out / "consortium.toml").read_text())
    assert [s["name"] for s in record["site"] if s["id"] == "ruijin"] == ['Hôpital "Ruijin"']
    unknown = run("revoke-site", str(out), "nowhere")
    assert unknown.exit_code == 2
    assert "'nowhere' is not in" in unknown.stderr


def test_renew_crl_publishes_a_newer_crl(out: Path) -> None:
    before = trust_of(out).crl
    assert before is not None
    result = run("renew-crl", str(out), "--crl-days", "30")
    assert result.exit_code == 0, result.output
    after = trust_of(out).crl
    assert after is not None
    assert after.last_update_utc > before.last_update_utc
    assert (out / "coordinator" / "crl.pem").read_bytes() == (out / "ca" / "crl.pem").read_bytes()


def test_init_refuses_an_existing_consortium(out: Path, sites_file: Path) -> None:
    before = snapshot(out)
    result = run("init", "rare-west", "--sites", str(sites_file), "--out", str(out))
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert snapshot(out) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[site]]\nid = 'a'\n", "the [coordinator] table is missing"),
        ("[coordinator]\nhost = ''\n[[site]]\nid = 'a'\n", "coordinator.host must be"),
        ("[coordinator]\nhost = 'h'\nport = 70000\n[[site]]\nid='a'\n", "coordinator.port"),
        ("[coordinator]\nhost = 'h'\n", "no [[site]] tables"),
        ("[coordinator]\nhost = 'h'\n[[site]]\nid = 'a'\n[[site]]\nid = 'a'\n", "site[1].id 'a'"),
        ("[coordinator]\nhost = 'h'\n[[site]]\nid = 'A b'\n", "site[0].id 'A b' is not a valid"),
        ("[coordinator]\nhost = 'h'\n[[site]]\nid = 'operator'\n", "site[0].id 'operator'"),
        ("[coordinator]\nhost = 'h'\n[[site]]\nid = 'a'\nnmae = 'x'\n", "unknown field 'nmae'"),
        ("[coordinator]\nhost = 'h'\n[[site]]\nid = 'a'\nname = \"x\\ny\"\n", "site[0].name"),
        ("[coordinator\n", ": not valid TOML"),
    ],
)
def test_bad_sites_file_exits_2_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(text, encoding="utf-8")
    result = run("init", "x", "--sites", str(path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert str(path) in result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_sites_file_and_bad_names(tmp_path: Path, sites_file: Path) -> None:
    result = run("init", "x", "--sites", str(tmp_path / "no.toml"), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr
    result = run("init", "bad/name", "--sites", str(sites_file), "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "consortium name 'bad/name' is invalid" in result.stderr
    result = run("add-site", str(tmp_path / "o"), "x")
    assert result.exit_code == 2
    assert "consortium.toml does not exist" in result.stderr


def test_encrypted_ca_needs_the_passphrase_from_the_environment(
    tmp_path: Path, sites_file: Path
) -> None:
    out = tmp_path / "secret"
    secret = "s3cret passphrase"
    result = run(
        "init", "rare-west", "--sites", str(sites_file), "--out", str(out), passphrase=secret
    )
    assert result.exit_code == 0, result.output
    assert "NOT encrypted" not in result.output
    assert secret not in result.output
    assert b"ENCRYPTED PRIVATE KEY" in (out / "ca" / "ca.key").read_bytes()
    refused = run("add-site", str(out), "new-site")
    assert refused.exit_code == 2
    assert "encrypted and no passphrase" in refused.stderr
    assert "ALLIANCE_CA_PASSPHRASE" in refused.stderr
    wrong = run("add-site", str(out), "new-site", passphrase="guess")
    assert wrong.exit_code == 2
    assert "wrong passphrase" in wrong.stderr
    assert not (out / "sites" / "new-site").exists()
    ok = run("add-site", str(out), "new-site", passphrase=secret)
    assert ok.exit_code == 0, ok.output
    assert b"ENCRYPTED PRIVATE KEY" in (out / "ca" / "ca.key").read_bytes()
    revoked = run("revoke-site", str(out), "new-site", passphrase=secret)
    assert revoked.exit_code == 0, revoked.output


def test_the_site_toml_template_loads_as_written(out: Path) -> None:
    from alliance.site.runner import SiteConfig

    folder = out / "sites" / "pumch"
    (folder / "cases.train.jsonl").write_text("", encoding="utf-8")  # [data] train filled in
    config = SiteConfig.load(folder / "site.toml")
    assert config.site == "pumch"
    assert config.data.test is None  # test = "" in the template: no held-out cases
