"""What ``alliance consortium`` writes: each party's bundle folder and ``consortium.toml``.

A bundle is the folder a party runs from: its certificate, keys, the root's ``ca.crt`` and its
configuration file, made from the coordinator.toml, site.toml and operator.toml templates here.
A hospital that made its own keys gets a reply instead (:func:`write_site_reply`): its
certificate, the root and its site.toml, and no key.
``consortium.toml`` records who holds which certificate (:class:`Consortium`, :class:`Party`).
Strings go into TOML through :func:`_q`, which escapes them, so a name holding quotes or
backslashes cannot change what a file says. These layouts are kept apart from the commands of
:mod:`alliance.cli.consortium` so that each can be read and reviewed on its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from alliance.crypto import CertificateAuthority, IssuedParty
from alliance.crypto.keyfiles import write_file

__all__ = [
    "Consortium",
    "Party",
    "save_consortium",
    "write_coordinator_bundle",
    "write_operator_bundle",
    "write_site_bundle",
    "write_site_reply",
]

_COORDINATOR_TOML = """\
# Guardian Alliance coordinator of consortium "{name}".
federation = {fed}

[server]
host = "0.0.0.0"
port = {port}

[tls]
certificate = "coordinator.crt"
key = "coordinator.key"
signing_key = "signing.key"
ca = "ca.crt"
crl = "crl.pem"                 # followed while serving: a renewed CRL needs no restart
# crl_warn_days = 7             # log a warning this many days before the CRL expires
# crl_state = "crl-number.json" # highest CRL number relied on (default: beside the audit log)

[store]
# SQLite by default; PostgreSQL: "postgresql+psycopg://user@host:5432/db"
url = "sqlite:///coordinator.db"

[audit]
path = "audit.log"

# Hospitals that allow no network connection exchange signed, encrypted bundles by courier:
# `alliance coordinator export --site ID --to DIR` and `alliance coordinator import DIR`.
# [files]
# dir = "offline"                      # to-<site>/ folders, inbox/, state/
# ttl_days = 14                        # how long a bundle stays valid on its way
# [files.sites]
# "site-id" = "sites/site-id.crt"      # the hospital's site.crt from the consortium folder
"""
_SITE_TOML = """\
# Guardian Alliance site agent of "{display}" in consortium "{name}".
federation = {fed}
site = {site}
coordinator = {url}
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
_OPERATOR_TOML = """\
# Guardian Alliance operator (the consortium's data scientist) of consortium "{name}".
federation = {fed}
operator = "operator"
coordinator = {url}

[tls]
certificate = "operator.crt"
key = "operator.key"
signing_key = "signing.key"
ca = "ca.crt"
"""


@dataclass
class Party:
    """One certificate holder as recorded in ``consortium.toml``."""

    id: str
    name: str
    serial: str
    fingerprint: str
    revoked_at: str | None = None


@dataclass
class Consortium:
    """The contents of ``consortium.toml``: the coordinator's address and every party."""

    name: str
    host: str
    port: int
    ca_fingerprint: str
    coordinator: Party
    operator: Party
    sites: list[Party]

    def url(self) -> str:
        """The coordinator's ``https://`` URL (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        return f"https://{host}:{self.port}"


def _q(text: str) -> str:
    """``text`` as a TOML basic string (JSON's escapes are TOML's; DEL escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _party_toml(header: str, party: Party, extra: str = "") -> str:
    lines = [header, f"id = {_q(party.id)}", f"name = {_q(party.name)}", extra]
    lines += [f"serial = {_q(party.serial)}", f"fingerprint = {_q(party.fingerprint)}"]
    if header == "[[site]]":
        lines.append(f"revoked = {'true' if party.revoked_at else 'false'}")
        if party.revoked_at:
            lines.append(f"revoked_at = {_q(party.revoked_at)}")
    return "\n".join(line for line in lines if line) + "\n"


def save_consortium(folder: Path, c: Consortium) -> Path:
    """Write ``folder/consortium.toml`` from ``c``; return its path."""
    parts = [
        f'# Guardian Alliance consortium "{c.name}": who holds which certificate.\n'
        "# Written by 'alliance consortium'; the CA's own record is ca/state.json.\n"
        f"name = {_q(c.name)}\nca_fingerprint = {_q(c.ca_fingerprint)}\n",
        _party_toml("[coordinator]", c.coordinator, f"host = {_q(c.host)}\nport = {c.port}"),
        _party_toml("[operator]", c.operator),
        *(_party_toml("[[site]]", s) for s in c.sites),
    ]
    path = folder / "consortium.toml"
    write_file(path, "\n".join(parts).encode("utf-8"))
    return path


def _bundle(
    folder: Path, party: IssuedParty, stem: str, ca: CertificateAuthority, toml: str
) -> None:
    party.write(folder, stem=stem)
    write_file(folder / "ca.crt", ca.certificate.public_bytes(serialization.Encoding.PEM))
    write_file(folder / f"{stem}.toml", toml.encode("utf-8"))


def write_coordinator_bundle(
    folder: Path, c: Consortium, ca: CertificateAuthority, party: IssuedParty
) -> None:
    """Write the coordinator's bundle into ``folder/coordinator/``."""
    text = _COORDINATOR_TOML.format(name=c.name, fed=_q(c.name), port=c.port)
    _bundle(folder / "coordinator", party, "coordinator", ca, text)


def write_operator_bundle(
    folder: Path, c: Consortium, ca: CertificateAuthority, party: IssuedParty
) -> None:
    """Write the operator's bundle into ``folder/operator/``."""
    text = _OPERATOR_TOML.format(name=c.name, fed=_q(c.name), url=_q(c.url()))
    _bundle(folder / "operator", party, "operator", ca, text)


def write_site_bundle(
    folder: Path,
    c: Consortium,
    ca: CertificateAuthority,
    party: IssuedParty,
    site: str,
    display: str,
) -> Path:
    """Write site ``site``'s bundle (shown as ``display``) into ``folder/sites/<site>/``."""
    text = _SITE_TOML.format(
        display=display, name=c.name, fed=_q(c.name), site=_q(site), url=_q(c.url())
    )
    _bundle(folder / "sites" / site, party, "site", ca, text)
    return folder / "sites" / site


def write_site_reply(
    folder: Path,
    c: Consortium,
    ca: CertificateAuthority,
    certificate: x509.Certificate,
    display: str,
) -> Path:
    """Write the answer to a site's request: ``site.crt``, ``ca.crt``, ``site.toml``, no key.

    Goes into ``folder/sites/<site>/``, the folder sent back to the hospital.
    """
    site = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert isinstance(site, str)
    where = folder / "sites" / site
    where.mkdir(parents=True, exist_ok=True)
    text = _SITE_TOML.format(
        display=display, name=c.name, fed=_q(c.name), site=_q(site), url=_q(c.url())
    )
    write_file(where / "site.crt", certificate.public_bytes(serialization.Encoding.PEM))
    write_file(where / "ca.crt", ca.certificate.public_bytes(serialization.Encoding.PEM))
    write_file(where / "site.toml", text.encode("utf-8"))
    return where
