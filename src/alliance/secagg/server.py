"""The coordinator's side of secure aggregation: collect, route, check, and unmask only the sum.

Design
------
:class:`SecAggServer` mirrors the stages of :class:`~alliance.secagg.client.SecAggClient`.
Each stage has ``receive_*`` calls (one per site message; a malformed, duplicate, late or
unknown-site message is rejected with a :class:`~alliance.core.errors.ProtocolError` and
changes nothing) and one ``close_*`` call that ends the stage with the sites that answered in
time; the sites that did not are dropped, never waited for::

    receive_advert(advert) ...           close_adverts()        -> {site: KeyAdvert}   U1
    receive_shares(site, {v: sealed}) .. close_shares()         -> ShareRouting        U2
    receive_masked(site, vector) ...     close_masked()         -> U3
    receive_confirmation(site, sig) ...  close_confirmations()  -> UnmaskRequest
    receive_unmask(response) ...         result()               -> AggregateSum

The server sees only public keys, sealed shares, masked vectors, signatures and, at the end,
the shares it needs: ``b`` of every survivor (checked against its commitment) and ``s_sk`` of
every site that dropped after sharing (checked against its advertised ``s_pk``). It keeps one
running sum of the masked vectors, never a site's vector on its own, and removes the masks::

    sum = Σ_{u∈U3} y_u − Σ_{u∈U3} PRG(b_u) + Σ_{d∈U2\\U3} Σ_{u∈U3∩N(d)} ±PRG(s_ud)

When too few sites remain at any stage (``quorum`` overall, ``share_threshold`` in a
neighbourhood) the round cannot complete: :class:`~alliance.core.errors.SecAggAbort` names the
stage, how many sites remain and the threshold, and the server stays aborted. Honest sites
release fewer than ``share_threshold`` shares of any secret in an aborted attempt, and never
both shares of one site, so an abort reveals nothing.

Timings on the development machine (2 shared cores, AES-256-CTR key stream ~3 GB/s), median
of 3, 12 sites, threshold 8, complete graph. A site's ``mask`` adds 1 self mask and 11 pairwise
masks; the server's ``result`` reconstructs the seeds (and keys) with pycryptodome, about 6 ms
per secret, then removes 12 self masks, or 8 self masks and 4 x 8 pairwise masks when 4 sites
dropped after sharing keys. ``uint32`` holds moduli up to 32 bits; the study default (20-bit
values, weights up to 65536, 12 sites) needs 41 bits, hence ``uint64``:

==========================================  =========  =========  =========  =========
operation                                   1M, u32    10M, u32   1M, u64    10M, u64
==========================================  =========  =========  =========  =========
one site: ``mask``                          16 ms      127 ms     29 ms      346 ms
server: ``result``, 12 survivors            94 ms      188 ms     90 ms      358 ms
server: ``result``, 8 survivors, 4 dropped  96 ms      470 ms     135 ms     1027 ms
==========================================  =========  =========  =========  =========
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple, NoReturn

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from alliance.core.errors import IntegrityError, ProtocolError, SecAggAbort
from alliance.secagg.keys import KeyPurpose, agree_key, private_key_from_bytes, public_key_bytes
from alliance.secagg.messages import KeyAdvert, UnmaskRequest, UnmaskResponse, confirmation_bytes
from alliance.secagg.prg import MaskExpander, MaskPurpose
from alliance.secagg.round_setup import RoundSetup
from alliance.secagg.sealing import MAX_SEALED_SIZE
from alliance.secagg.shamir import SecretShare, combine_shares, reconstruct_committed

__all__ = ["AggregateSum", "SecAggServer", "ServerStage"]

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


class ServerStage(enum.Enum):
    """The stage the server is collecting messages for."""

    ADVERTISE = "advertise"
    SHARE_KEYS = "share exchange"
    MASKED_INPUT = "masked input"
    CONSISTENCY = "consistency check"
    UNMASK = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


class ShareRouting(NamedTuple):
    """What the coordinator sends after the share exchange (unpacks as ``sealed, survivors``).

    Parameters
    ----------
    sealed
        Recipient → {sender → sealed shares}, for every recipient in U2 (senders in U2 only).
    survivors
        U2: the sites whose shares are relayed, sorted; each site masks for this list.
    """

    sealed: dict[str, dict[str, bytes]]
    survivors: tuple[str, ...]


class AggregateSum(NamedTuple):
    """The outcome of a secure round (unpacks as ``values, survivors``).

    Parameters
    ----------
    values
        The exact sum modulo ``2**modulus_bits`` of the survivors' vectors.
    survivors
        U3: the sites whose vectors are in the sum (sorted).
    """

    values: UIntArray
    survivors: tuple[str, ...]


class SecAggServer:
    """The coordinator's state for one secure-aggregation attempt (see the module docstring).

    Parameters
    ----------
    setup
        The attempt's public parameters (the same as the sites').
    verify
        Optional ``verify(site, data, signature) -> bool``: when given, adverts and
        confirmations with invalid signatures are rejected on receipt, so that one bad site
        cannot make the honest sites refuse a whole stage.
    """

    def __init__(
        self, setup: RoundSetup, *, verify: Callable[[str, bytes, bytes], bool] | None = None
    ) -> None:
        self.setup = setup
        self._verify = verify
        self._graph = setup.graph
        self._stage = ServerStage.ADVERTISE
        self._adverts: dict[str, KeyAdvert] = {}
        self._sealed: dict[str, dict[str, bytes]] = {}
        self._u1: frozenset[str] = frozenset()
        self._u2: frozenset[str] = frozenset()
        self._u3: frozenset[str] = frozenset()
        self._total: UIntArray | None = None
        self._received: set[str] = set()
        self._confirmations: dict[str, bytes] = {}
        self._responses: dict[str, UnmaskResponse] = {}
        self._result: AggregateSum | None = None
        self._aborted_at = ServerStage.ADVERTISE

    @property
    def stage(self) -> ServerStage:
        """The stage being collected (or ``DONE``/``ABORTED``)."""
        return self._stage

    @property
    def dropped(self) -> tuple[str, ...]:
        """U2 \\ U3 once the masked-input stage is closed: sites whose masks were removed."""
        return tuple(sorted(self._u2 - self._u3)) if self._u3 else ()

    # -- stage 0: adverts -----------------------------------------------------------------------

    def receive_advert(self, advert: KeyAdvert) -> None:
        """Accept one site's key advert."""
        self.check_advert(advert)
        self._adverts[advert.site] = advert

    def check_advert(self, advert: KeyAdvert) -> None:
        """Raise what :meth:`receive_advert` would raise for ``advert``, accepting nothing (a key
        batch checks every slot's advert before it accepts any)."""
        self._expect(ServerStage.ADVERTISE, f"key advert of {advert.site!r}")
        self._check_context(advert.context, f"key advert of {advert.site!r}")
        self._check_member(advert.site, self.setup.sites, "key advert")
        if advert.site in self._adverts:
            raise ProtocolError(f"second key advert from {advert.site!r}; the first one stands")
        keys = {k for a in self._adverts.values() for k in (a.cipher_key, a.mask_key)}
        if advert.cipher_key == advert.mask_key or {advert.cipher_key, advert.mask_key} & keys:
            raise IntegrityError(f"key advert of {advert.site!r} reuses a public key; rejected")
        if self._verify and not self._verify(advert.site, advert.signed_bytes(), advert.signature):
            raise IntegrityError(f"key advert of {advert.site!r} has an invalid signature")

    def close_adverts(self) -> dict[str, KeyAdvert]:
        """End the advert stage; the returned adverts (U1) go to every site in U1."""
        self._expect(ServerStage.ADVERTISE, "closing the advert stage")
        self._u1 = self._viable(ServerStage.ADVERTISE, frozenset(self._adverts))
        self._stage = ServerStage.SHARE_KEYS
        return {s: self._adverts[s] for s in sorted(self._u1)}

    # -- stage 1: sealed shares -----------------------------------------------------------------

    def receive_shares(self, sender: str, sealed: Mapping[str, bytes]) -> None:
        """Accept the sealed shares ``sender`` addresses to each of its neighbours in U1."""
        self.check_shares(sender, sealed)
        self._sealed[sender] = dict(sealed)

    def check_shares(self, sender: str, sealed: Mapping[str, bytes]) -> None:
        """Raise what :meth:`receive_shares` would raise, accepting nothing."""
        self._expect(ServerStage.SHARE_KEYS, f"shares of {sender!r}")
        self._check_member(sender, self._u1, "shares")
        if sender in self._sealed:
            raise ProtocolError(f"second set of shares from {sender!r}; the first one stands")
        expected = self._u1 & self._graph.neighbours(sender)
        if set(sealed) != expected:
            raise IntegrityError(
                f"shares of {sender!r} are addressed to {sorted(sealed)}, expected "
                f"{sorted(expected)}"
            )
        for recipient, box in sealed.items():
            if not isinstance(box, bytes) or len(box) > MAX_SEALED_SIZE:
                raise IntegrityError(f"shares of {sender!r} for {recipient!r} are malformed")

    def close_shares(self) -> ShareRouting:
        """End the share exchange: the sealed shares for each site of U2, and U2 itself (the
        list each site masks for)."""
        self._expect(ServerStage.SHARE_KEYS, "closing the share exchange")
        self._u2 = self._viable(ServerStage.SHARE_KEYS, frozenset(self._sealed))
        self._stage = ServerStage.MASKED_INPUT
        return ShareRouting(
            {v: self.shares_for(v) for v in sorted(self._u2)}, tuple(sorted(self._u2))
        )

    def shares_for(self, recipient: str) -> dict[str, bytes]:
        """The sealed shares addressed to ``recipient`` by the sites of U2."""
        self._expect(ServerStage.MASKED_INPUT, f"routing shares to {recipient!r}")
        self._check_member(recipient, self._u2, "share routing")
        return {
            sender: self._sealed[sender][recipient]
            for sender in sorted(self._u2)
            if recipient in self._sealed[sender]
        }

    # -- stage 2: masked inputs -----------------------------------------------------------------

    def receive_masked(self, site: str, vector: UIntArray) -> None:
        """Add ``site``'s masked vector to the running sum."""
        self._expect(ServerStage.MASKED_INPUT, f"masked input of {site!r}")
        self._check_member(site, self._u2, "masked input")
        if site in self._received:
            raise ProtocolError(f"second masked input from {site!r}; the first one stands")
        setup = self.setup
        if not isinstance(vector, np.ndarray) or vector.shape != (setup.vector_length,):
            shape = vector.shape if isinstance(vector, np.ndarray) else type(vector).__name__
            raise IntegrityError(
                f"masked input of {site!r} has shape {shape}, expected ({setup.vector_length},)"
            )
        if vector.dtype != setup.dtype:
            raise IntegrityError(
                f"masked input of {site!r} is {vector.dtype}, expected {setup.dtype}"
            )
        if (
            setup.modulus_bits < 8 * setup.dtype.itemsize
            and vector.size
            and int(vector.max()) >> setup.modulus_bits
        ):
            raise IntegrityError(f"masked input of {site!r} has values >= 2**{setup.modulus_bits}")
        if self._total is None:
            self._total = np.array(vector, dtype=setup.dtype, copy=True)
        else:
            np.add(self._total, vector, out=self._total)
        self._received.add(site)

    def close_masked(self) -> tuple[str, ...]:
        """End the masked-input stage; returns U3, the list each site of U3 is asked to sign."""
        self._expect(ServerStage.MASKED_INPUT, "closing the masked-input stage")
        u3 = frozenset(self._received)
        self._check_recoverable(ServerStage.MASKED_INPUT, u3, u3, self._u2 - u3)
        self._u3 = u3
        self._stage = ServerStage.CONSISTENCY
        return tuple(sorted(u3))

    def recoverable_by(self, holders: Collection[str]) -> bool:
        """Whether the sites ``holders`` (of U3) can complete the round without the others: at
        least ``quorum`` of them, and ``share_threshold`` holders of each survivor's seed and of
        each dropped site's key. The coordinator asks only them to confirm and unmask when it
        would rather not wait for the rest (sites on files); meaningful once the masked-input
        stage is closed (``False`` before)."""
        if self._stage not in (ServerStage.CONSISTENCY, ServerStage.UNMASK):
            return False
        return self._unrecoverable(frozenset(holders), self._u3, self._u2 - self._u3) is None

    # -- stage 3: consistency check -------------------------------------------------------------

    def receive_confirmation(self, site: str, signature: bytes) -> None:
        """Accept ``site``'s signature over U3."""
        self._expect(ServerStage.CONSISTENCY, f"confirmation of {site!r}")
        self._check_member(site, self._u3, "confirmation")
        if site in self._confirmations:
            raise ProtocolError(f"second confirmation from {site!r}; the first one stands")
        if not isinstance(signature, bytes) or not signature:
            raise IntegrityError(f"confirmation of {site!r} is not a signature")
        signed = confirmation_bytes(self.setup.context, sorted(self._u3))
        if self._verify and not self._verify(site, signed, signature):
            raise IntegrityError(f"confirmation of {site!r} has an invalid signature")
        self._confirmations[site] = signature

    def close_confirmations(self) -> UnmaskRequest:
        """End the consistency check; the request goes to every site that confirmed."""
        self._expect(ServerStage.CONSISTENCY, "closing the consistency check")
        confirmers = frozenset(self._confirmations)
        self._check_recoverable(ServerStage.CONSISTENCY, confirmers, self._u3, self._u2 - self._u3)
        self._stage = ServerStage.UNMASK
        return UnmaskRequest(
            self.setup.context,
            tuple(sorted(self._u3)),
            tuple(sorted(self._u2 - self._u3)),
            dict(sorted(self._confirmations.items())),
        )

    # -- stage 4: unmasking ---------------------------------------------------------------------

    def receive_unmask(self, response: UnmaskResponse) -> None:
        """Accept one site's shares of survivors' seeds and dropped sites' keys."""
        site = response.site
        self._expect(ServerStage.UNMASK, f"unmask response of {site!r}")
        self._check_context(response.context, f"unmask response of {site!r}")
        self._check_member(site, self._confirmations, "unmask response")
        if site in self._responses:
            raise ProtocolError(f"second unmask response from {site!r}; the first one stands")
        seeds_expected = self._u3 & self._graph.neighbourhood(site)
        keys_expected = (self._u2 - self._u3) & self._graph.neighbours(site)
        if set(response.seed_shares) != seeds_expected or set(response.key_shares) != keys_expected:
            raise IntegrityError(
                f"unmask response of {site!r} holds seed shares of {sorted(response.seed_shares)} "
                f"and key shares of {sorted(response.key_shares)}, expected "
                f"{sorted(seeds_expected)} and {sorted(keys_expected)}"
            )
        index = self._graph.share_index(site)
        shares = (*response.seed_shares.values(), *response.key_shares.values())
        if any(share.index != index for share in shares):
            raise IntegrityError(f"unmask response of {site!r} carries another site's share index")
        self._responses[site] = response

    def result(self) -> AggregateSum:
        """End the unmasking stage: reconstruct the needed secrets, remove every mask and
        return the exact sum (the same object if called again).

        Raises
        ------
        SecAggAbort
            Too few unmask responses to reconstruct a secret, or a reconstruction fails its
            check (a forged share); the sum is withheld.
        """
        if self._result is not None:
            return self._result
        self._expect(ServerStage.UNMASK, "computing the result")
        t = self.setup.share_threshold
        dropped = self._u2 - self._u3
        seed_shares = self._collect("seed", self._u3, lambda r: r.seed_shares)
        key_shares = self._collect("key", dropped, lambda r: r.key_shares)
        ctx = self.setup.context
        try:
            seeds = {
                s: reconstruct_committed(
                    seed_shares[s],
                    threshold=t,
                    commitment=self._adverts[s].seed_commitment,
                    context=ctx,
                    owner=s,
                )
                for s in sorted(self._u3)
            }
            mask_keys = {d: self._mask_key_of(d, key_shares[d]) for d in sorted(dropped)}
        except IntegrityError as exc:
            self._abort(ServerStage.UNMASK, len(self._responses), str(exc))
        assert self._total is not None
        total = self._total
        expander = MaskExpander(
            length=self.setup.vector_length, modulus_bits=self.setup.modulus_bits
        )
        for seed in seeds.values():
            expander.add(total, seed, MaskPurpose.SELF_MASK, sign=-1)
        for d, key in mask_keys.items():
            for s in sorted(self._u3 & self._graph.neighbours(d)):
                pair = agree_key(
                    key,
                    self._adverts[s].mask_key,
                    purpose=KeyPurpose.PAIRWISE_MASK,
                    context=ctx,
                    sites=(s, d),
                )
                # s added +PRG when s < d and -PRG otherwise; undo it.
                expander.add(total, pair, MaskPurpose.PAIRWISE_MASK, sign=-1 if s < d else 1)
        expander.reduce(total)
        self._total = None
        self._stage = ServerStage.DONE
        self._result = AggregateSum(total, tuple(sorted(self._u3)))
        return self._result

    # -- helpers --------------------------------------------------------------------------------

    def _mask_key_of(self, site: str, shares: list[SecretShare]) -> X25519PrivateKey:
        raw = combine_shares(shares, threshold=self.setup.share_threshold)
        key = private_key_from_bytes(raw)
        if not hmac.compare_digest(public_key_bytes(key), self._adverts[site].mask_key):
            raise IntegrityError(
                f"the mask key of dropped site {site!r} reconstructed from "
                f"{self.setup.share_threshold} shares does not match its advertised public key: "
                "a share is forged or corrupt"
            )
        return key

    def _collect(
        self,
        what: str,
        owners: Collection[str],
        pick: Callable[[UnmaskResponse], Mapping[str, SecretShare]],
    ) -> dict[str, list[SecretShare]]:
        t = self.setup.share_threshold
        out: dict[str, list[SecretShare]] = {o: [] for o in owners}
        for response in self._responses.values():
            for owner, share in pick(response).items():
                out[owner].append(share)
        short = sorted(o for o, shares in out.items() if len(shares) < t)
        if short:
            self._abort(
                ServerStage.UNMASK,
                len(self._responses),
                f"{len(out[short[0]])} {what} shares of site {short[0]!r} arrived"
                + (f" (and too few for {short[1:]})" if short[1:] else ""),
            )
        return out

    def _viable(self, stage: ServerStage, members: frozenset[str]) -> frozenset[str]:
        """``members`` less any site whose neighbourhood within them is below the threshold."""
        t, graph = self.setup.share_threshold, self._graph
        if len(members) < self.setup.quorum:
            self._abort(stage, len(members), f"{len(self.setup.sites)} sites in the cohort")
        viable = set(members)
        changed = True
        while changed:
            thin = {s for s in viable if len(graph.neighbourhood(s) & viable) < t}
            viable -= thin
            changed = bool(thin)
        if len(viable) < self.setup.quorum:
            self._abort(
                stage,
                len(viable),
                f"{len(members)} sites answered, {len(members) - len(viable)} of them with fewer "
                f"than {t} of their neighbourhood",
            )
        return frozenset(viable)

    def _check_recoverable(
        self,
        stage: ServerStage,
        holders: frozenset[str],
        survivors: frozenset[str],
        dropped: frozenset[str],
    ) -> None:
        """Abort unless ``holders`` can reveal every survivor's seed and dropped site's key."""
        missing = self._unrecoverable(holders, survivors, dropped)
        if missing is not None:
            self._abort(stage, len(holders), missing)

    def _unrecoverable(
        self, holders: frozenset[str], survivors: frozenset[str], dropped: frozenset[str]
    ) -> str | None:
        """Why ``holders`` cannot reveal every survivor's seed and dropped site's key, or
        ``None`` when they can."""
        t, graph = self.setup.share_threshold, self._graph
        if len(holders) < self.setup.quorum:
            return f"{len(self._u2)} sites shared keys"
        for site in sorted(survivors):
            if len(graph.neighbourhood(site) & holders) < t:
                return f"too few holders of {site!r}'s seed shares"
        for site in sorted(dropped):
            if len(graph.neighbours(site) & holders) < t:
                return f"too few holders of {site!r}'s key shares"
        return None

    def _abort(self, stage: ServerStage, remaining: int, detail: str) -> NoReturn:
        self._stage = ServerStage.ABORTED
        self._total = None
        self._aborted_at = stage
        raise SecAggAbort(
            f"secure aggregation of {self.setup.context.describe()} aborted at stage "
            f"{stage.value!r}: {remaining} sites remain, threshold {self.setup.quorum} "
            f"(shares needed per secret: {self.setup.share_threshold}; {detail}). No site's "
            "input was revealed; start a new attempt"
        )

    def _expect(self, stage: ServerStage, what: str) -> None:
        if self._stage is ServerStage.ABORTED:
            raise SecAggAbort(
                f"secure aggregation of {self.setup.context.describe()} was aborted at stage "
                f"{self._aborted_at.value!r}; {what} is ignored. Start a new attempt"
            )
        if self._stage is not stage:
            raise ProtocolError(
                f"{what} belongs to stage {stage.value!r} of secure aggregation, but the "
                f"coordinator is at {self._stage.value!r} of {self.setup.context.describe()}"
            )

    def _check_context(self, context: Any, what: str) -> None:
        if context != self.setup.context:
            desc = context.describe() if hasattr(context, "describe") else repr(context)
            raise IntegrityError(
                f"{what} is bound to {desc}, not {self.setup.context.describe()} (replayed?)"
            )

    @staticmethod
    def _check_member(site: str, members: Collection[str], what: str) -> None:
        if site not in members:
            raise ProtocolError(f"{what} from {site!r}, which is not taking part at this stage")
