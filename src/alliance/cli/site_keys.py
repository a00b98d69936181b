"""``alliance site init`` and ``alliance site install-cert``: a hospital's keys, made at home.

Design
------
The hospital's side of the request flow of :mod:`alliance.crypto.enrolment`::

    alliance site init --site ID --out DIR        keys (0600) and DIR/site.csr; send site.csr
    alliance consortium sign-request ...          (at the consortium, offline)
    alliance site install-cert REPLY --dir DIR    checks the certificate binds DIR's keys

``init --rotate`` makes the keys of a rotation beside the keys in use, and ``install-cert``
moves them into place when the new certificate arrives. Both print the fingerprints the
consortium reads back over another channel. The commands are registered on the ``site``
group of :mod:`alliance.cli.deploy` when :mod:`alliance.cli.app` imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from alliance.cli.common import console, errors
from alliance.cli.deploy import site_app
from alliance.core.errors import ConfigError
from alliance.crypto.enrolment import install_certificate, make_site_keys
from alliance.crypto.keyfiles import load_certificate, read_file, write_file
from alliance.crypto.pki import fingerprint

__all__ = ["site_init", "site_install_cert"]


def _say(text: str) -> None:
    console.print(Text(text), highlight=False)


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
