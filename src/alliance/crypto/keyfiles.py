"""Reading and writing the PEM files of a consortium bundle, with errors naming the file.

Design
------
Every loader raises :class:`~alliance.core.errors.ConfigError` naming the file and what to do
(missing, unreadable, not PEM, wrong key type, passphrase missing or wrong), so callers never
see a bare ``ValueError`` from ``cryptography``. :func:`write_file` writes atomically (a
temporary file in the same folder, then a rename) and creates the file with its final mode,
so a private key is never readable by others, not even while it is being written.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from alliance.core.errors import ConfigError

__all__ = [
    "PASSPHRASE_ENV",
    "load_certificate",
    "load_private_key",
    "load_signing_key",
    "read_file",
    "write_file",
]

#: Environment variable the command line reads the CA key's passphrase from (never logged).
PASSPHRASE_ENV = "ALLIANCE_CA_PASSPHRASE"  # noqa: S105 - a variable's name, not a secret


def read_file(path: Path, what: str) -> bytes:
    """The bytes of ``path``; :class:`ConfigError` naming it (as ``what``) if unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist; check the path") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None


def load_certificate(path: Path) -> x509.Certificate:
    """Read a PEM certificate; :class:`ConfigError` naming the file if that fails."""
    try:
        return x509.load_pem_x509_certificate(read_file(path, "certificate"))
    except ValueError:
        raise ConfigError(
            f"certificate file {path} is not a PEM certificate; copy it again from the "
            "consortium bundle"
        ) from None


def _load_key(path: Path, what: str, passphrase: bytes | None) -> object:
    data = read_file(path, what)
    try:
        return serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        if passphrase is None:
            raise ConfigError(
                f"{what} file {path} is encrypted and no passphrase was given; give its "
                f"passphrase (the alliance command reads it from {PASSPHRASE_ENV})"
            ) from None
        raise ConfigError(
            f"{what} file {path} is not encrypted but a passphrase was given; give none "
            f"(unset {PASSPHRASE_ENV})"
        ) from None
    except ValueError:
        if passphrase is not None:
            raise ConfigError(
                f"cannot decrypt {what} file {path}: wrong passphrase, or not a PEM private "
                f"key; check {PASSPHRASE_ENV}"
            ) from None
        raise ConfigError(
            f"{what} file {path} is not a PEM private key; copy it again from the bundle"
        ) from None


def load_private_key(path: Path, *, passphrase: bytes | None = None) -> ec.EllipticCurvePrivateKey:
    """Read a PEM ECDSA private key (a TLS key, or the CA key with its passphrase).

    Raises
    ------
    ConfigError
        The file is missing, unreadable, encrypted without a passphrase, or not an EC key.
    """
    key = _load_key(path, "private key", passphrase)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"private key file {path} holds a {type(key).__name__}, not an EC key")
    return key


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """Read a PEM (PKCS#8) Ed25519 message-signing key; :class:`ConfigError` if that fails."""
    key = _load_key(path, "signing key", None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(
            f"signing key file {path} holds a {type(key).__name__}, not an Ed25519 key; "
            "use the signing.key of the party's bundle"
        )
    return key


def write_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, then rename) with ``mode``.

    A private key is never readable by others, not even while being written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}; check the folder") from None
