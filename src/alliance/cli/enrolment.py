"""The request flow on the command line: a hospital's keys are made at the hospital.

Design
------
The commands of :mod:`alliance.crypto.enrolment`, in the order they run::

    alliance site init --site ID --out DIR                  keys (0600) and DIR/site.csr
    alliance consortium sign-request CONSORTIUM site.csr    checks the proofs, certifies
    alliance site install-cert REPLY --dir DIR              checks the certificate binds DIR's keys

``sign-request`` writes ``CONSORTIUM/sites/<id>/`` (``site.crt``, ``ca.crt``, ``site.toml``;
never a key) and records the site in ``consortium.toml``; it refuses a site already
certified unless ``--rotate`` is given. ``site init --rotate`` makes the keys of a rotation
beside the keys in use, ``install-cert`` moves them into place when the new certificate
arrives, and ``alliance consortium revoke-site --previous`` retires the old certificate. The
fingerprints printed on both sides are read over another channel (the phone). The commands
are registered on the ``site`` and ``consortium`` groups when :mod:`alliance.cli.app`
imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from rich.text import Text

from alliance.cli import common
from alliance.cli.bundles import Party, save_consortium, write_site_reply
from alliance.cli.common import errors
from alliance.cli.consortium import (
    Days,
    Folder,
    _load_ca,
    _load_consortium,
    _plain,
    _print_parties,
    _site_id,
)
from alliance.cli.consortium import app as consortium_app
from alliance.cli.deploy import site_app
from alliance.core.errors import ConfigError
from alliance.crypto.enrolment import (
    install_certificate,
    key_fingerprint,
    make_site_keys,
    read_request_file,
)
from alliance.crypto.keyfiles import load_certificate, read_file, write_file
from alliance.crypto.pki import fingerprint

__all__ = ["sign_request", "site_init", "site_install_cert"]


def _say(text: str) -> None:
    common.console.print(Text(text), highlight=False)


@site_app.command("init")
def site_init(
    site: Annotated[str, typer.Option("--site", help="This hospital's site id.")],
    out: Annotated[Path, typer.Option("--out", help="The hospital's folder for its keys.")],
    rotate: Annotated[
        bool,
        typer.Option("--rotate", help="New keys for a rotation; the keys in use stay until then."),
    ] = False,
) -> None:
    """Make this hospital's keys and the certificate request to send to the consortium."""
    with errors():
        request = make_site_keys(out, site, rotate=rotate)
    keys = "site.next.key and signing.next.key" if rotate else "site.key and signing.key"
    _say(
        f"made the {'new ' if rotate else ''}keys of site {site!r} in {out} ({keys}, readable "
        "by you only: they never leave this folder)\n"
        f"  request sha256      {request.fingerprint}\n"
        f"  TLS key sha256      {request.tls_key_fingerprint}\n"
        f"  signing key sha256  {request.signing_key_fingerprint}\n"
        f"Next: send {out / 'site.csr'} to the consortium and read it the request sha256 over "
        "the phone; install its answer with 'alliance site install-cert REPLY_FOLDER --dir "
        f"{out}'."
    )


@site_app.command("install-cert")
def site_install_cert(
    reply: Annotated[
        Path, typer.Argument(help="The consortium's answer: a folder with site.crt and ca.crt.")
    ],
    folder: Annotated[Path, typer.Option("--dir", help="The hospital's folder (site init).")],
) -> None:
    """Install the certificate the consortium issued, after checking it binds this folder's keys."""
    with errors():
        if not reply.is_dir():
            raise ConfigError(
                f"{reply} is not a folder; give the folder the consortium sent back "
                "(site.crt, ca.crt, site.toml)"
            )
        done = install_certificate(folder, reply / "site.crt", reply / "ca.crt")
        config = folder / "site.toml"
        wrote_config = not config.exists() and (reply / "site.toml").is_file()
        if wrote_config:
            write_file(config, read_file(reply / "site.toml", "site configuration"))
    cert = done.certificate
    _say(
        f"installed certificate {cert.serial_number:x} of site in {folder / 'site.crt'}, valid "
        f"until {cert.not_valid_after_utc:%Y-%m-%d}"
        + ("; the rotation keys are now site.key and signing.key" if done.rotated else "")
        + f"\nconsortium root sha256 {fingerprint(load_certificate(folder / 'ca.crt'))}: check "
        "it with the consortium, as it checked your request's"
    )
    if done.rotated:
        _say(
            "Restart the site agent so that it uses the new certificate; then tell the "
            "consortium, which revokes the old one ('alliance consortium revoke-site ... "
            "--previous')."
        )
    elif wrote_config:
        _say(f"Next: fill in [data] of {config}, then 'alliance site run --config {config}'.")


def _check_new_keys(last: Path, tls_key_fingerprint: str) -> None:
    """A rotation must bring new keys: refuse the keys of the certificate last sent back."""
    if last.is_file() and key_fingerprint(_tls_key(load_certificate(last))) == tls_key_fingerprint:
        raise ConfigError(
            f"the request carries the keys of {last}, the certificate in use; a rotation needs "
            "new keys: the hospital runs 'alliance site init --rotate' and sends that site.csr"
        )


def _tls_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("a site certificate without an ECDSA key; restore the consortium folder")
    return key


@consortium_app.command("sign-request")
def sign_request(
    folder: Folder,
    request: Annotated[Path, typer.Argument(help="The site.csr a hospital sent.")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="The site is rotating its keys: keep its old cert.")
    ] = False,
    expect: Annotated[
        str | None,
        typer.Option("--fingerprint", help="The request's sha256 the hospital read to you."),
    ] = None,
    valid_days: Days = 825,
) -> None:
    """Certify a hospital's own keys from its request; no private key is made or seen here."""
    with errors():
        c = _load_consortium(folder)
        asked = read_request_file(request)
        _say(
            f"request {request} from site {asked.name!r}\n"
            f"  request sha256      {asked.fingerprint}\n"
            f"  TLS key sha256      {asked.tls_key_fingerprint}\n"
            f"  signing key sha256  {asked.signing_key_fingerprint}"
        )
        if expect is not None and expect.strip().lower().replace(":", "") != asked.fingerprint:
            raise ConfigError(
                f"{request}: its sha256 is {asked.fingerprint}, not the {expect!r} the hospital "
                "gave; do not sign it, and ask the hospital where its request went"
            )
        site = _site_id(asked.name, f"{request}: site name")
        previous = next((s for s in c.sites if s.id == site), None)
        if previous is not None and previous.revoked_at is None and not rotate:
            raise ConfigError(
                f"site {site!r} is already in {folder / 'consortium.toml'} (certificate serial "
                f"{previous.serial[:16]}…); if it is rotating its keys give --rotate, otherwise "
                f"revoke it first with 'alliance consortium revoke-site {folder} {site}'"
            )
        display = _plain(name or (previous.name if previous else site), "--name")
        if rotate:
            _check_new_keys(folder / "sites" / site / "site.crt", asked.tls_key_fingerprint)
        ca = _load_ca(folder, c)
        cert = ca.issue_request(asked, rotation=rotate, valid_days=valid_days)
        where = write_site_reply(folder, c, ca, cert, display)
        ca.save(folder / "ca")
        entry = Party(site, display, f"{cert.serial_number:x}", fingerprint(cert))
        c.sites = [s for s in c.sites if s.id != site] + [entry]
        save_consortium(folder, c)
    _print_parties(c, f'Site {site!r} certified in consortium "{c.name}"', only=site)
    _say(
        f"Next: send {where}/ (certificate, ca.crt, site.toml; no key) back to {display}, and "
        f"give it the root's sha256 {c.ca_fingerprint} to check."
    )
    if rotate:
        _say(
            "Its old certificate stays valid until the site runs on the new one; then run "
            f"'alliance consortium revoke-site {folder} {site} --previous'."
        )
