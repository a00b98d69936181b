"""A site's side of secure aggregation (Bonawitz et al. 2017), as explicit stages.

Design
------
One :class:`SecAggClient` serves one attempt of one round (its
:class:`~alliance.secagg.context.RoundContext`) and makes fresh keys and a fresh self-mask
seed ``b`` when created, so masks differ in every round even for identical inputs. Its stages,
in order (U1 ⊇ U2 ⊇ U3 are the sites still taking part after each stage)::

    advertise()                 -> KeyAdvert        c_pk, s_pk, commitment to b, signed
    share_keys(adverts U1)      -> {v: sealed}      t-of-n shares of s_sk and b, one per v
    receive_shares({u: sealed})                     the shares the other sites sealed for us
    mask(values, survivors=U2)  -> masked vector    x + PRG(b) + Σ ±PRG(s_uv), mod 2**bits
    confirm(U3)                 -> signature        consistency check: "I saw U3"
    unmask(U3, U2\\U3, sigs)    -> UnmaskResponse   b-shares of U3, s_sk-shares of U2\\U3

Every stage checks what it is given against what the site has already seen and *refuses*,
raising :class:`~alliance.core.errors.SecAggAbort` and changing no state, on anything
inconsistent: a message bound to another attempt, a bad signature, a duplicated key, too few
sites, a survivor list that is not a subset of the previous one, a site listed as both alive
and dropped, a survivor list other than the one this site confirmed, fewer than ``quorum``
valid confirmations, a second unmask request. Since a site answers one unmask request per
attempt, for a survivor list it signed and that enough other sites signed, it never releases
both the ``b``-share and the ``s_sk``-share of any site; a lying coordinator that shows
different lists to different sites cannot gather enough confirmations for both.

Pairwise masks: ``u`` adds ``PRG(s_uv)`` when ``u < v`` and subtracts it otherwise, so the
masks of two surviving sites cancel in the sum.

Signatures are made and checked by callbacks (the site's Ed25519 identity lives in
:mod:`alliance.crypto`, a layer this package does not import): ``sign(data) -> signature``
and ``verify(site, data, signature) -> bool``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from alliance.core.errors import ConfigError, DataError, IntegrityError, SecAggAbort
from alliance.secagg.keys import KeyPurpose, agree_key, private_key_bytes, public_key_bytes
from alliance.secagg.messages import (
    KeyAdvert,
    UnmaskRequest,
    UnmaskResponse,
    advert_bytes,
    confirmation_bytes,
)
from alliance.secagg.prg import SEED_SIZE, MaskExpander, MaskPurpose
from alliance.secagg.round_setup import RoundSetup
from alliance.secagg.sealing import open_shares, seal_shares
from alliance.secagg.shamir import SecretShare, commit_secret, split_secret

__all__ = ["ClientStage", "SecAggClient", "Sign", "Verify"]

#: ``sign(data) -> signature``: the site's signature of ``data``.
Sign = Callable[[bytes], bytes]
#: ``verify(site, data, signature) -> bool``: whether ``signature`` is ``site``'s of ``data``.
Verify = Callable[[str, bytes, bytes], bool]

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


class ClientStage(enum.Enum):
    """The last stage a client completed."""

    CREATED = "created"
    ADVERTISED = "advertised"
    KEYS_SHARED = "keys shared"
    SHARES_RECEIVED = "shares received"
    MASKED = "masked"
    CONFIRMED = "confirmed"
    UNMASKED = "unmasked"


class SecAggClient:
    """One site's secure-aggregation state for one attempt (see the module docstring).

    Parameters
    ----------
    setup
        The attempt's public parameters (the same at every site and at the coordinator).
    site
        This site's id (one of ``setup.sites``).
    sign
        Signs bytes with this site's identity key.
    verify
        Checks another site's signature (``False`` for an invalid one).

    Raises
    ------
    ConfigError
        ``site`` is not in the setup's cohort.
    """

    def __init__(self, setup: RoundSetup, site: str, *, sign: Sign, verify: Verify) -> None:
        if site not in setup.sites:
            raise ConfigError(
                f"site {site!r} is not in the secure-aggregation cohort {setup.sites}"
            )
        self.setup = setup
        self.site = site
        self._sign = sign
        self._verify = verify
        self._graph = setup.graph
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = os.urandom(SEED_SIZE)
        self._stage = ClientStage.CREATED
        self._advert: KeyAdvert | None = None
        self._adverts: dict[str, KeyAdvert] = {}
        self._pair_seeds: dict[str, bytes] = {}
        self._box_keys: dict[str, bytes] = {}
        self._own_seed_share: SecretShare | None = None
        self._held: dict[str, tuple[SecretShare, SecretShare]] = {}
        self._survivors_u2: frozenset[str] = frozenset()
        self._confirmed_u3: frozenset[str] = frozenset()

    @property
    def stage(self) -> ClientStage:
        """The last stage completed."""
        return self._stage

    # -- stage 0: advertise keys ----------------------------------------------------------------

    def advertise(self) -> KeyAdvert:
        """This site's signed key advert (the same advert if asked again before sharing)."""
        self._expect("advertise", ClientStage.CREATED, ClientStage.ADVERTISED)
        if self._advert is None:
            ctx = self.setup.context
            cipher_pk = public_key_bytes(self._cipher_key)
            mask_pk = public_key_bytes(self._mask_key)
            commitment = commit_secret(self._seed, context=ctx, owner=self.site)
            signature = self._sign(advert_bytes(ctx, self.site, cipher_pk, mask_pk, commitment))
            self._advert = KeyAdvert(self.site, ctx, cipher_pk, mask_pk, commitment, signature)
        self._stage = ClientStage.ADVERTISED
        return self._advert

    # -- stage 1: share keys --------------------------------------------------------------------

    def share_keys(self, adverts: Mapping[str, KeyAdvert]) -> dict[str, bytes]:
        """Check the cohort's adverts (U1) and seal shares of ``s_sk`` and ``b`` for each
        neighbour in it.

        Returns
        -------
        dict
            Recipient site → sealed shares, for the coordinator to relay.

        Raises
        ------
        SecAggAbort
            An advert is for another attempt, unsigned or badly signed, from an unknown site,
            this site's own advert is missing or altered, two sites share a key, or too few
            sites advertised.
        """
        self._expect("share keys", ClientStage.ADVERTISED)
        ctx, graph, t = self.setup.context, self._graph, self.setup.share_threshold
        members = self._check_adverts(adverts)
        neighbours = sorted(members & graph.neighbours(self.site))
        try:
            pair_seeds = self._agree(adverts, neighbours, KeyPurpose.PAIRWISE_MASK)
            box_keys = self._agree(adverts, neighbours, KeyPurpose.SHARE_ENCRYPTION)
        except IntegrityError as exc:
            self._refuse("share keys", str(exc))
        n = len(self.setup.sites)
        key_shares = split_secret(private_key_bytes(self._mask_key), threshold=t, count=n)
        seed_shares = split_secret(self._seed, threshold=t, count=n)
        sealed: dict[str, bytes] = {}
        for v in neighbours:
            index = graph.share_index(v) - 1
            sealed[v] = seal_shares(
                box_keys[v],
                context=ctx,
                sender=self.site,
                recipient=v,
                key_share=key_shares[index],
                seed_share=seed_shares[index],
            )
        self._adverts = dict(adverts)
        self._pair_seeds = pair_seeds
        self._box_keys = box_keys
        self._own_seed_share = seed_shares[graph.share_index(self.site) - 1]
        self._stage = ClientStage.KEYS_SHARED
        return sealed

    # -- stage 2: receive shares, mask ----------------------------------------------------------

    def receive_shares(self, sealed: Mapping[str, bytes]) -> None:
        """Open and check the shares other sites sealed for this site.

        Raises
        ------
        SecAggAbort
            A sender is unknown, not a neighbour that advertised, or its ciphertext does not
            open (altered, replayed from another attempt, misaddressed) or carries a share
            index other than this site's.
        """
        self._expect("receive shares", ClientStage.KEYS_SHARED)
        ctx, own_index = self.setup.context, self._graph.share_index(self.site)
        held: dict[str, tuple[SecretShare, SecretShare]] = {}
        for sender, ciphertext in sealed.items():
            if sender not in self._box_keys:
                self._refuse(
                    "receive shares",
                    f"shares from {sender!r}, which is not a neighbour that advertised",
                )
            try:
                shares = open_shares(
                    self._box_keys[sender],
                    ciphertext,
                    context=ctx,
                    sender=sender,
                    recipient=self.site,
                )
            except IntegrityError as exc:
                self._refuse("receive shares", str(exc))
            if shares[0].index != own_index:
                self._refuse(
                    "receive shares",
                    f"{sender!r} sent shares with index {shares[0].index}, expected {own_index}",
                )
            held[sender] = shares
        self._held = held
        self._stage = ClientStage.SHARES_RECEIVED

    def mask(self, values: UIntArray, *, survivors: Sequence[str]) -> UIntArray:
        """Mask this site's encoded vector for the survivors of the share exchange (U2).

        Parameters
        ----------
        values
            The encoded vector: 1-D, ``setup.vector_length`` values of ``setup.dtype``, each
            below ``2**setup.modulus_bits`` (see :meth:`alliance.secagg.Quantizer.encode`).
        survivors
            U2: the sites whose shares were relayed (this site included).

        Returns
        -------
        numpy.ndarray
            ``values + PRG(b) + Σ_v ±PRG(s_uv)`` modulo ``2**modulus_bits``, same type.

        Raises
        ------
        SecAggAbort
            U2 is not a subset of U1, omits this site, is too small, or does not match the
            senders of the shares this site received.
        DataError
            ``values`` has the wrong shape, type or range.
        """
        self._expect("mask", ClientStage.SHARES_RECEIVED)
        u2 = self._site_set("mask", survivors, "survivor list")
        if not u2 <= set(self._adverts):
            self._refuse("mask", f"survivors {sorted(u2 - set(self._adverts))} never advertised")
        self._check_enough("mask", u2, "survived the share exchange")
        expected = u2 & self._graph.neighbours(self.site)
        if expected != set(self._held):
            self._refuse(
                "mask",
                f"the survivor list names neighbours {sorted(expected)} but shares came from "
                f"{sorted(self._held)}",
            )
        self._check_vector(values)
        expander = MaskExpander(
            length=self.setup.vector_length, modulus_bits=self.setup.modulus_bits
        )
        masked = np.array(values, dtype=self.setup.dtype, copy=True)
        expander.add(masked, self._seed, MaskPurpose.SELF_MASK)
        for v in sorted(expected):
            sign = 1 if self.site < v else -1
            expander.add(masked, self._pair_seeds[v], MaskPurpose.PAIRWISE_MASK, sign=sign)
        self._survivors_u2 = u2
        self._stage = ClientStage.MASKED
        return masked

    # -- stage 3: consistency check -------------------------------------------------------------

    def confirm(self, survivors: Sequence[str]) -> bytes:
        """Sign the list U3 of sites whose masked input the coordinator received.

        Raises
        ------
        SecAggAbort
            U3 is not a subset of U2, omits this site, or is too small.
        """
        self._expect("confirm", ClientStage.MASKED)
        u3 = self._site_set("confirm", survivors, "survivor list")
        if not u3 <= self._survivors_u2:
            self._refuse("confirm", f"survivors {sorted(u3 - self._survivors_u2)} are not in U2")
        self._check_enough("confirm", u3, "sent a masked input")
        signature = self._sign(confirmation_bytes(self.setup.context, sorted(u3)))
        self._confirmed_u3 = u3
        self._stage = ClientStage.CONFIRMED
        return signature

    # -- stage 4: unmask ------------------------------------------------------------------------

    def unmask(
        self,
        survivors: Sequence[str],
        dropped: Sequence[str],
        confirmations: Mapping[str, bytes],
    ) -> UnmaskResponse:
        """Release ``b``-shares of the survivors and ``s_sk``-shares of the dropped sites, once.

        Parameters
        ----------
        survivors
            U3, which must be the list this site confirmed.
        dropped
            Exactly U2 \\ U3.
        confirmations
            Site → signature over U3; at least ``setup.quorum`` must be valid and from U3.

        Raises
        ------
        SecAggAbort
            Any inconsistency (see the module docstring), or this site already answered.
        """
        if self._stage is ClientStage.UNMASKED:
            self._refuse(
                "unmask",
                "it already answered an unmask request in this attempt (a second answer could "
                "release both shares of one site)",
            )
        self._expect("unmask", ClientStage.CONFIRMED)
        u3 = self._site_set("unmask", survivors, "survivor list")
        gone = self._site_set("unmask", dropped, "dropped list", with_self=False)
        if u3 & gone:
            self._refuse("unmask", f"sites {sorted(u3 & gone)} are listed both alive and dropped")
        if u3 != self._confirmed_u3:
            self._refuse(
                "unmask",
                f"the survivor list differs from the one this site confirmed (added "
                f"{sorted(u3 - self._confirmed_u3)}, missing {sorted(self._confirmed_u3 - u3)})",
            )
        if gone != self._survivors_u2 - u3:
            self._refuse(
                "unmask",
                f"the dropped list {sorted(gone)} is not U2 \\ U3 = "
                f"{sorted(self._survivors_u2 - u3)}",
            )
        outsiders = set(confirmations) - u3
        if outsiders:
            self._refuse("unmask", f"confirmations from {sorted(outsiders)}, which are not in U3")
        signed = confirmation_bytes(self.setup.context, sorted(u3))
        valid = [s for s, sig in confirmations.items() if self._verify(s, signed, sig)]
        if len(valid) < self.setup.quorum:
            self._refuse(
                "unmask",
                f"only {len(valid)} valid confirmations of the survivor list, "
                f"{self.setup.quorum} needed",
            )
        assert self._own_seed_share is not None
        seed_shares = {
            owner: self._own_seed_share if owner == self.site else self._held[owner][1]
            for owner in sorted(u3 & self._graph.neighbourhood(self.site))
        }
        key_shares = {
            owner: self._held[owner][0]
            for owner in sorted(gone & self._graph.neighbours(self.site))
        }
        self._stage = ClientStage.UNMASKED
        # Nothing held is needed any more; drop it rather than keep secrets around.
        self._held, self._pair_seeds, self._box_keys = {}, {}, {}
        return UnmaskResponse(self.site, self.setup.context, seed_shares, key_shares)

    def answer(self, request: UnmaskRequest) -> UnmaskResponse:
        """:meth:`unmask` for a received :class:`UnmaskRequest` (checks its context first)."""
        if request.context != self.setup.context:
            self._refuse("unmask", f"the request is for {request.context.describe()} (replayed?)")
        return self.unmask(request.survivors, request.dropped, request.confirmations)

    # -- checks ---------------------------------------------------------------------------------

    def _check_adverts(self, adverts: Mapping[str, KeyAdvert]) -> frozenset[str]:
        """U1, once every advert is this attempt's, validly signed, and the keys distinct."""
        ctx = self.setup.context
        for site, advert in adverts.items():
            if advert.site != site:
                self._refuse("share keys", f"the advert listed for {site!r} is {advert.site!r}'s")
            if site not in self._graph.adjacency:
                self._refuse("share keys", f"{site!r} is not in the cohort {self.setup.sites}")
            if advert.context != ctx:
                self._refuse(
                    "share keys",
                    f"the advert of {site!r} is for {advert.context.describe()} (replayed?)",
                )
            if not self._verify(site, advert.signed_bytes(), advert.signature):
                self._refuse("share keys", f"the advert of {site!r} has an invalid signature")
        if adverts.get(self.site) != self._advert:
            self._refuse("share keys", "this site's own advert is missing or was altered")
        keys = [a.cipher_key for a in adverts.values()] + [a.mask_key for a in adverts.values()]
        if len(set(keys)) != len(keys):
            self._refuse("share keys", "two adverts carry the same public key")
        members = frozenset(adverts)
        self._check_enough("share keys", members, "advertised")
        return members

    def _agree(
        self, adverts: Mapping[str, KeyAdvert], sites: Sequence[str], purpose: KeyPurpose
    ) -> dict[str, bytes]:
        private = self._mask_key if purpose is KeyPurpose.PAIRWISE_MASK else self._cipher_key
        return {
            v: agree_key(
                private,
                adverts[v].mask_key
                if purpose is KeyPurpose.PAIRWISE_MASK
                else adverts[v].cipher_key,
                purpose=purpose,
                context=self.setup.context,
                sites=(self.site, v),
            )
            for v in sites
        }

    def _expect(self, action: str, *stages: ClientStage) -> None:
        if self._stage not in stages:
            wanted = " or ".join(s.value for s in stages)
            self._refuse(action, f"it is at stage {self._stage.value!r}, not {wanted!r}")

    def _refuse(self, action: str, reason: str) -> NoReturn:
        raise SecAggAbort(
            f"site {self.site!r} refuses to {action} in {self.setup.context.describe()}: "
            f"{reason}; it released nothing for this request. Start a new attempt if the "
            "coordinator cannot send a consistent one"
        )

    def _site_set(
        self, action: str, sites: Iterable[str], what: str, *, with_self: bool = True
    ) -> frozenset[str]:
        listed = list(sites)
        out = frozenset(listed)
        if len(out) != len(listed):
            self._refuse(action, f"the {what} repeats a site")
        if with_self and self.site not in out:
            self._refuse(action, f"the {what} does not include this site")
        return out

    def _check_enough(self, action: str, members: frozenset[str], what: str) -> None:
        quorum, t = self.setup.quorum, self.setup.share_threshold
        if len(members) < quorum:
            self._refuse(action, f"only {len(members)} sites {what}, threshold {quorum}")
        near = members & self._graph.neighbourhood(self.site)
        if len(near) < t:
            self._refuse(action, f"only {len(near)} of this site's neighbourhood {what}, need {t}")

    def _check_vector(self, values: UIntArray) -> None:
        setup = self.setup
        if not isinstance(values, np.ndarray) or values.shape != (setup.vector_length,):
            shape = values.shape if isinstance(values, np.ndarray) else type(values).__name__
            raise DataError(
                f"masked input of {self.site!r} must be a ({setup.vector_length},) array, got "
                f"{shape}; encode the update with the round's quantiser"
            )
        if values.dtype != setup.dtype:
            raise DataError(
                f"masked input of {self.site!r} must be {setup.dtype}, got {values.dtype}"
            )
        if (
            setup.modulus_bits < 8 * setup.dtype.itemsize
            and values.size
            and int(values.max()) >> setup.modulus_bits
        ):
            raise DataError(f"masked input of {self.site!r} has values >= 2**{setup.modulus_bits}")
