"""``alliance consortium``: provision a consortium's root CA, certificates and config files.

Design
------
Provisioning runs on one trusted machine, ideally offline. ``init`` makes the root CA and a
bundle per party, each a folder that is copied as a whole to where the party runs::

    DIR/consortium.toml   who holds which certificate (serials, fingerprints, revocations)
    DIR/ca/               the root: ca.crt ca.key crl.pem state.json (keep it OFFLINE)
    DIR/coordinator/      coordinator.crt .key signing.key ca.crt crl.pem coordinator.toml
    DIR/operator/         operator.crt .key signing.key ca.crt operator.toml
    DIR/sites/<id>/       site.crt site.key signing.key ca.crt site.toml

Those site bundles hold keys made on this machine, which is right only for the one-machine
demo: with ``init --site-requests`` no site key is made here. Each hospital makes its own
keys and request, and ``sign-request`` certifies them (:mod:`alliance.cli.enrolment`); a key
rotation ends with ``revoke-site --previous``, once the site runs on its new certificate.

``add-site`` issues one more site bundle and touches nothing else; ``revoke-site`` and
``renew-crl`` sign a new CRL into ``ca/`` and ``coordinator/``. The CA key's passphrase is
read from ``ALLIANCE_CA_PASSPHRASE`` and never printed or logged; without it the key is
written unencrypted, with a warning. TOML is read here with :mod:`tomllib`; the bundles and
``consortium.toml`` are written by :mod:`alliance.cli.bundles`. Errors print one line and exit 2
(bad input) or 1; with ``alliance --verbose`` they raise with a traceback.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from alliance.cli import common
from alliance.cli.bundles import (
    Consortium,
    Party,
    save_consortium,
    write_coordinator_bundle,
    write_operator_bundle,
    write_site_bundle,
)
from alliance.core.config import parse_toml
from alliance.core.errors import ConfigError
from alliance.crypto import (
    PASSPHRASE_ENV,
    CertificateAuthority,
    IssuedParty,
    Role,
    check_party_name,
    fingerprint,
)
from alliance.crypto.keyfiles import write_file

__all__ = ["app"]

logger = logging.getLogger(__name__)

app = typer.Typer(
    help="Provision a consortium: root CA, certificates and configuration of every party.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_RESERVED = ("coordinator", "operator")
_CRL_DAYS = 365


def _say(*parts: str | tuple[str, str], stderr: bool = False) -> None:
    """Print text as is: names and paths may hold '[', which rich markup would swallow."""
    (common.err if stderr else common.console).print(Text.assemble(*parts), highlight=False)


def _plain(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a non-empty string, got {value!r}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ConfigError(f"{where} {value!r} contains control characters; remove them")
    return value.strip()


def _site_id(value: Any, where: str) -> str:
    site = check_party_name(value, field=where)
    if site in _RESERVED:
        raise ConfigError(f"{where} {site!r} is reserved; choose another site id")
    return site


def _read_toml(path: Path, what: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    return parse_toml(text, where=f"{what} {path}")


def _coordinator(raw: dict[str, Any], path: Path, default_port: int | None) -> tuple[str, int]:
    table = raw.get("coordinator")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: the [coordinator] table is missing; give its host and port")
    host = _plain(table.get("host"), f"{path}: coordinator.host")
    if any(c.isspace() or c in "/@" for c in host):
        raise ConfigError(f"{path}: coordinator.host {host!r} is not a host name or IP address")
    port = table.get("port", default_port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigError(f"{path}: coordinator.port must be a port 1-65535, got {port!r}")
    return host, port


def _read_sites(path: Path) -> tuple[str, int, list[tuple[str, str]]]:
    """Coordinator host, port and (id, display name) of each site in a sites.toml."""
    raw = _read_toml(path, "sites file")
    for key in raw:
        if key not in ("coordinator", "site"):
            raise ConfigError(f"{path}: unknown key {key!r}; expected [coordinator] and [[site]]")
    host, port = _coordinator(raw, path, 8443)
    entries = raw.get("site")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no [[site]] tables; add one per hospital with its id")
    sites: list[tuple[str, str]] = []
    for i, entry in enumerate(entries):
        where = f"{path}: site[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a [[site]] table")
        for key in entry:
            if key not in ("id", "name"):
                raise ConfigError(f"{where}: unknown field {key!r}; a site has 'id' and 'name'")
        site = _site_id(entry.get("id"), f"{where}.id")
        if site in (s for s, _ in sites):
            raise ConfigError(f"{where}.id {site!r} is given twice; site ids must be unique")
        sites.append((site, _plain(entry.get("name", site), f"{where}.name")))
    return host, port, sites


def _party(raw: Any, where: str) -> Party:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    revoked = raw.get("revoked_at")
    return Party(
        id=check_party_name(raw.get("id"), field=f"{where}.id"),
        name=_plain(raw.get("name", raw.get("id")), f"{where}.name"),
        serial=_plain(raw.get("serial"), f"{where}.serial"),
        fingerprint=_plain(raw.get("fingerprint"), f"{where}.fingerprint"),
        revoked_at=None if revoked is None else _plain(revoked, f"{where}.revoked_at"),
    )


def _load_consortium(folder: Path) -> Consortium:
    path = folder / "consortium.toml"
    raw = _read_toml(path, "consortium file")
    host, port = _coordinator(raw, path, None)
    sites = raw.get("site", [])
    if not isinstance(sites, list):
        raise ConfigError(f"{path}: 'site' must be a list of [[site]] tables")
    return Consortium(
        name=_plain(raw.get("name"), f"{path}: name"),
        host=host,
        port=port,
        ca_fingerprint=_plain(raw.get("ca_fingerprint"), f"{path}: ca_fingerprint"),
        coordinator=_party(raw["coordinator"], f"{path}: coordinator"),
        operator=_party(raw.get("operator"), f"{path}: operator"),
        sites=[_party(s, f"{path}: site[{i}]") for i, s in enumerate(sites)],
    )


def _passphrase() -> bytes | None:
    value = os.environ.get(PASSPHRASE_ENV, "")
    return value.encode("utf-8") if value else None


def _record(party: IssuedParty, party_id: str, name: str | None = None) -> Party:
    return Party(party_id, name or party_id, f"{party.serial:x}", party.fingerprint)


def _site_bundle(
    folder: Path, c: Consortium, ca: CertificateAuthority, site: str, display: str, days: int
) -> Party:
    party = ca.issue(site, Role.SITE, valid_days=days)
    where = write_site_bundle(folder, c, ca, party, site, display)
    logger.info("wrote the bundle of site %r to %s", site, where)
    return _record(party, site, display)


def _publish_crl(
    folder: Path, ca: CertificateAuthority, days: int, passphrase: bytes | None = None
) -> str:
    """Save the CA with a new CRL, copied to coordinator/; say where and until when."""
    crl = ca.crl(valid_days=days)
    ca.save(folder / "ca", passphrase=passphrase)
    write_file(folder / "coordinator" / "crl.pem", (folder / "ca" / "crl.pem").read_bytes())
    return (
        f"new CRL (valid until {crl.next_update_utc:%Y-%m-%d}) written to "
        f"{folder / 'ca' / 'crl.pem'} and {folder / 'coordinator' / 'crl.pem'}"
    )


def _load_ca(folder: Path, c: Consortium) -> CertificateAuthority:
    ca = CertificateAuthority.load(folder / "ca", passphrase=_passphrase())
    if fingerprint(ca.certificate) != c.ca_fingerprint:
        raise ConfigError(
            f"{folder / 'ca' / 'ca.crt'} is not the root named in {folder / 'consortium.toml'} "
            "(ca_fingerprint differs); give the ca/ folder of this consortium"
        )
    return ca


def _print_parties(c: Consortium, title: str, *, only: str | None = None) -> None:
    table = Table(title=Text(title), title_justify="left")
    for column in ("party", "name", "serial", "sha256 fingerprint", "status"):
        table.add_column(column, overflow="fold")
    rows = [("coordinator", c.coordinator), ("operator", c.operator)]
    rows += [(f"sites/{s.id}", s) for s in c.sites]
    for label, p in rows:
        if only is None or label == f"sites/{only}":
            status = f"revoked {p.revoked_at}" if p.revoked_at else "valid"
            cells = (label, p.name, p.serial[:16], p.fingerprint[:32], status)
            table.add_row(*(Text(cell) for cell in cells))
    common.console.print(table)


def _warn_site_keys_made_here() -> None:
    _say(
        ("warning: ", "yellow"),
        "the site keys were made on this machine: whoever holds or copies these bundles can "
        "sign as those hospitals and open what is sealed to them. Only for a one-machine "
        "demo; for a real consortium run init with --site-requests and let each hospital make "
        "its keys ('alliance site init', then 'alliance consortium sign-request').",
        stderr=True,
    )


Folder = Annotated[Path, typer.Argument(help="The consortium folder made by init.")]
Days = Annotated[int, typer.Option(min=1, help="Days each new certificate is valid.")]
CrlDays = Annotated[int, typer.Option(min=1, help="Days the new CRL is valid; renew before.")]


@app.command()
def init(
    name: Annotated[str, typer.Argument(help="Consortium name, e.g. 'rare-disease-west'.")],
    sites: Annotated[
        Path, typer.Option(help="sites.toml: \\[coordinator] and one \\[\\[site]] each.")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write the consortium into.")],
    valid_days: Days = 825,
    ca_valid_days: Annotated[int, typer.Option(min=1, help="Days the root CA is valid.")] = 3650,
    crl_days: CrlDays = _CRL_DAYS,
    site_requests: Annotated[
        bool,
        typer.Option(
            "--site-requests",
            help="Recommended for a real consortium: make no site key here; each hospital "
            "makes its own and sends a request (alliance site init, consortium sign-request).",
        ),
    ] = False,
) -> None:
    """Create the root CA and the bundles of the coordinator, the operator and every site."""
    with common.errors():
        host, port, plan = _read_sites(sites)
        if (out / "ca").exists():
            raise ConfigError(
                f"{out / 'ca'} already exists: {out} holds a consortium; add sites with "
                "'alliance consortium add-site', or choose another --out"
            )
        passphrase = _passphrase()
        ca = CertificateAuthority.create(name, valid_days=ca_valid_days)
        hosts = list(dict.fromkeys([host, "localhost", "127.0.0.1"]))
        coordinator = ca.issue("coordinator", Role.COORDINATOR, hosts=hosts, valid_days=valid_days)
        operator = ca.issue("operator", Role.OPERATOR, valid_days=valid_days)
        records = (_record(coordinator, "coordinator"), _record(operator, "operator"))
        c = Consortium(name, host, port, fingerprint(ca.certificate), *records, sites=[])
        for site, display in [] if site_requests else plan:
            c.sites.append(_site_bundle(out, c, ca, site, display, valid_days))
        write_coordinator_bundle(out, c, ca, coordinator)
        write_operator_bundle(out, c, ca, operator)
        _publish_crl(out, ca, crl_days, passphrase)  # the CA folder last: init can be re-run
        save_consortium(out, c)
    _print_parties(c, f'Consortium "{name}" written to {out}/')
    _say(f"coordinator certificate hosts: {', '.join(hosts)}")
    if passphrase is None:
        _say(
            ("warning: ", "yellow"),
            f"{PASSPHRASE_ENV} is not set, so {out / 'ca' / 'ca.key'} is NOT encrypted. "
            "Move ca/ offline now.",
            stderr=True,
        )
    if site_requests:
        _say(
            ("\nNext steps\n", "bold"),
            f"  1. Move {out / 'ca'}/ to offline storage; bring it back only to sign requests.\n"
            f"  2. Copy {out / 'coordinator'}/ to the coordinator machine ({c.url()}).\n"
            f"  3. Each hospital ({', '.join(s for s, _ in plan)}) runs 'alliance site init "
            "--site ID --out DIR' and sends you DIR/site.csr; check its fingerprint with the "
            f"hospital by phone, then 'alliance consortium sign-request {out} site.csr'.\n"
            f"  4. Give {out / 'operator'}/ to the consortium's data scientist.",
        )
        return
    _warn_site_keys_made_here()
    _say(
        ("\nNext steps\n", "bold"),
        f"  1. Move {out / 'ca'}/ to offline storage, off this machine and never onto the "
        "coordinator: it is needed only to add or revoke sites.\n"
        f"  2. Copy {out / 'coordinator'}/ to the coordinator machine ({c.url()}).\n"
        f"  3. Send each {out / 'sites'}/<id>/ to that hospital over a trusted channel (it "
        "holds its private keys); the hospital fills in [data] of site.toml.\n"
        f"  4. Give {out / 'operator'}/ to the consortium's data scientist.",
    )


@app.command("add-site")
def add_site(
    folder: Folder,
    site: Annotated[str, typer.Argument(help="The new site's id, e.g. 'huaxi-2'.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    valid_days: Days = 825,
) -> None:
    """Demo only: issue one more site bundle, keys made here (real sites: sign-request)."""
    with common.errors():
        c = _load_consortium(folder)
        site = _site_id(site, "site id")
        previous = next((s for s in c.sites if s.id == site), None)
        if previous is not None and previous.revoked_at is None:
            raise ConfigError(
                f"site {site!r} is already in {folder / 'consortium.toml'}; to give it new keys, "
                f"first run 'alliance consortium revoke-site {folder} {site}'"
            )
        display = _plain(name or (previous.name if previous else site), "--name")
        ca = _load_ca(folder, c)
        entry = _site_bundle(folder, c, ca, site, display, valid_days)
        ca.save(folder / "ca")
        c.sites = [s for s in c.sites if s.id != site] + [entry]
        save_consortium(folder, c)
    _print_parties(c, f'Site {site!r} added to consortium "{c.name}"', only=site)
    _warn_site_keys_made_here()
    _say(
        f"Next: send {folder / 'sites' / site}/ to {display} over a trusted channel, and "
        f"move {folder / 'ca'}/ back offline."
    )


@app.command("revoke-site")
def revoke_site(
    folder: Folder,
    site: Annotated[str, typer.Argument(help="The id of the site to revoke.")],
    crl_days: CrlDays = _CRL_DAYS,
    previous: Annotated[
        bool,
        typer.Option(
            "--previous",
            help="Last step of a key rotation: revoke only the certificates the site held "
            "before its newest one.",
        ),
    ] = False,
) -> None:
    """Revoke a site's certificate and write the new revocation list."""
    with common.errors():
        c = _load_consortium(folder)
        entry = next((s for s in c.sites if s.id == site), None)
        if entry is None:
            known = ", ".join(s.id for s in c.sites) or "none"
            raise ConfigError(
                f"site {site!r} is not in {folder / 'consortium.toml'}; sites: {known}"
            )
        ca = _load_ca(folder, c)
        keep = int(entry.serial, 16) if previous else None
        serials = ca.revoke(site, role=Role.SITE, keep=keep)
        where = _publish_crl(folder, ca, crl_days)
        if not previous:
            when = ca.revoked_at(serials[0]) or datetime.now(UTC)
            entry.revoked_at = f"{when:%Y-%m-%dT%H:%M:%SZ}"
        save_consortium(folder, c)
    _say(
        f"revoked {'the previous certificate of ' if previous else ''}site {site!r} "
        f"(certificate serial {', '.join(f'{s:x}' for s in serials)})\n"
        f"{where}.\nCopy crl.pem to the coordinator's [tls] crl path now: it re-reads the "
        "file when it changes and refuses "
        + ("that certificate" if previous else "this site's connections and messages")
        + " from then on."
    )


@app.command("renew-crl")
def renew_crl(folder: Folder, crl_days: CrlDays = _CRL_DAYS) -> None:
    """Re-sign the revocation list before it expires (an expired one refuses every site)."""
    with common.errors():
        c = _load_consortium(folder)
        where = _publish_crl(folder, _load_ca(folder, c), crl_days)
    _say(
        f"{where}; copy it to the coordinator's [tls] crl path (and to each hospital that sets "
        "one): a running coordinator uses it from the next connection on, no restart needed."
    )
