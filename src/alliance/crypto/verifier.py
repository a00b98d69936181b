"""Checking a signed message's signer against the consortium: the codec's ``SignatureVerifier``.

A signed message carries its signer's certificate. :class:`MessageVerifier` accepts it only if
the consortium CA issued it, it is valid now, not revoked, of the expected role, names the
claimed signer, and the Ed25519 key it binds verifies the signature.
"""

from __future__ import annotations

from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.signing import verify_signature

__all__ = ["MessageVerifier"]


class MessageVerifier:
    """Verifies signers of one role (``None``: any role) against a trust store."""

    def __init__(self, trust: TrustStore, *, role: Role | None) -> None:
        self.trust = trust
        self.role = role

    def __call__(self, signer: str, certificate_der: bytes, data: bytes, signature: bytes) -> None:
        """Raise ``IntegrityError`` unless ``signature`` over ``data`` is ``signer``'s."""
        identity = self.trust.verify(certificate_der, role=self.role, name=signer)
        verify_signature(identity, data, signature)
