"""Key batches: one secure-aggregation set-up serves several rounds, so that a hospital on files
answers each later round with a single message.

Design
------
**The problem.** An attempt of Bonawitz et al. (2017) asks each site for five messages: key
advert, shares, masked input, confirmation, unmask shares (:mod:`alliance.secagg.client`). A
hospital on files pays a courier trip for each one, so a secure round costs it five trips where a
plaintext round costs one.

**Why not one key per study.** Deriving every round's masks from one study-level key pair is
unsound with dropouts: when a site drops in round *r* the coordinator legitimately rebuilds its
mask-agreement secret key to remove its pairwise masks, and that key then removes the same site's
pairwise masks in every round where it survived, while the self-mask seeds of those rounds are
revealed as usual. Its inputs of those rounds would be in the clear.

**Key batches.** At set-up each site of the cohort advertises, in one message, ``R`` independent
*slots*: per slot a fresh X25519 key pair for share encryption (``c``), a fresh one for mask
agreement (``s``) and a commitment to a fresh self-mask seed ``b``, each slot's advert signed as
today (:class:`~alliance.secagg.messages.KeyAdvert`). In its next message it seals, for each
neighbour and each slot, the Shamir shares of that slot's ``s_sk`` and ``b``. The coordinator
routes the shares of all slots at once, with each slot's survivor list U2. Slot ``j`` is bound to
the context of the set-up attempt with ``slot = j``
(:meth:`~alliance.secagg.context.RoundContext.with_slot`): its keys, agreed keys, masks,
commitments, sealed shares and signatures verify nowhere else.

A slot *is* one attempt of the per-round protocol, with its first two stages done in advance:
:class:`KeyBatchClient` and :class:`KeyBatchServer` hold one
:class:`~alliance.secagg.client.SecAggClient` and one
:class:`~alliance.secagg.server.SecAggServer` per slot and add only the bookkeeping of the batch.
Every later round (and every retried attempt) is handed the next unused slot; its train task
names the slot, and the site trains, masks with that slot for the slot's U2 and answers with its
masked input: one message in, one out, as in a round without secure aggregation. The slot's
consistency check and unmasking then run as in any attempt, with the sites of U3 the coordinator
asks; it need not ask the sites on files when the others hold enough shares
(:meth:`~alliance.secagg.server.SecAggServer.recoverable_by`).

**Why it is sound.**

1. *A slot is used once.* A site's slot passes through the stages of ``SecAggClient`` exactly
   once: it masks one input, confirms one survivor list and answers one unmask request; a
   second use is refused (:meth:`KeyBatchClient.mask` names the slot as spent). Whatever the
   coordinator does with slot ``j`` (declares a site dropped and rebuilds its ``s_sk``, hands the
   slot to another round, asks twice, skips it), it faces the per-attempt protocol with its
   guarantee and the same bound on colluding sites: it never gets both the seed ``b`` and the
   key ``s_sk`` of one site in one slot, so no single input is unmasked. (Handing slot ``j`` to
   a site after the slot's unmasking is the per-attempt case of a share routing delayed to that
   site, covered by the same bound.)
2. *Slots are independent.* Each slot's keys and seed are fresh randomness, and no key of one
   slot is derived from another's; rebuilding the ``s_sk`` of a site that dropped in slot ``j``
   says nothing about its other slots. A dropout in round *r* affects round *r* only.
3. *Early sharing changes when shares move, not what they are.* The shares of slot ``j``
   travel sealed under that slot's share-encryption keys, which the coordinator does not hold,
   and between set-up and use they are held by the honest sites, as they are between the mask
   and unmask stages of one attempt. They leave a site only in the unmask stage of slot ``j``,
   under that slot's consistency check.
4. *Asking fewer sites to unmask is a scheduling choice, not a new protocol.* The coordinator
   may always close the consistency check without a slow site, and the per-attempt analysis
   already lets a lying coordinator split the honest sites into two groups asked about two
   survivor lists (each list needs ``quorum`` signatures, so the groups can overlap only in
   colluders: at least ``2t - n`` are needed). The threshold still counts: unmasking needs
   ``share_threshold`` shares of each secret and ``quorum`` confirmations, so a coordinator that
   asks only the online sites needs at least that many of them.

**What it costs, honestly.**

- Set-up: 2 exchanges per batch on top of the round's own (advert, shares). Then a site on
  files answers one message per round; an online site three (masked input, confirmation,
  unmask shares), so without sites on files a batch saves the two set-up stages only.
- A site must be in the cohort at set-up and receive the share routing. A site that joins later,
  refuses the set-up or misses its routing sits the batch out (the coordinator sets up a new
  batch early when fewer than ``quorum`` of a round's participants hold the current one).
- An aborted attempt burns its slot; the retry takes the next one, and when none is left the
  retry sets up a new batch. A set-up that fails at any slot fails as a whole.
- A site keeps ``R`` slots' private keys and seeds, and the shares it holds for the others, until
  each slot is used: whoever steals a site's state during a batch learns that site's keys of the
  rounds still to come (with the coordinator's view, its future inputs), where the per-round
  protocol exposes one round. Choose ``R`` with that in mind.
- The coordinator's batch state is not durable: a restarted coordinator sets up a new batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import numpy.typing as npt

from alliance.core.errors import ConfigError, IntegrityError, ProtocolError, SecAggAbort
from alliance.secagg.client import SecAggClient, Sign, Verify
from alliance.secagg.context import RoundContext
from alliance.secagg.messages import KeyAdvert
from alliance.secagg.round_setup import RoundSetup
from alliance.secagg.server import SecAggServer, ShareRouting

__all__ = ["MAX_KEY_BATCH", "KeyBatchClient", "KeyBatchServer", "KeyBatchSetup"]

#: Most slots one set-up may advertise (bounds message sizes: a slot costs a site about 250
#: bytes of advert and 200 bytes of sealed shares per neighbour).
MAX_KEY_BATCH = 100

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


@dataclass(frozen=True)
class KeyBatchSetup:
    """The public parameters of a key batch: one :class:`RoundSetup` per slot.

    Parameters
    ----------
    context
        The set-up attempt (without a slot); slot ``j`` is ``context.with_slot(j)``, and the
        only slot of a batch of one is ``context`` itself (per-round keys).
    size
        Number of slots, ``1..MAX_KEY_BATCH``; 1 is one attempt of the per-round protocol.
    sites, vector_length, modulus_bits, threshold, neighbours
        As for :class:`~alliance.secagg.round_setup.RoundSetup`, the same for every slot.

    Raises
    ------
    ConfigError
        A parameter is invalid, or ``context`` already names a slot.
    """

    context: RoundContext
    size: int
    sites: tuple[str, ...]
    vector_length: int
    modulus_bits: int
    threshold: int | None = None
    neighbours: int | None = None
    slots: tuple[RoundSetup, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.context, RoundContext) or self.context.slot is not None:
            raise ConfigError("a key batch is set up in an attempt's context, without a slot")
        size = self.size
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_KEY_BATCH:
            raise ConfigError(
                f"a key batch has 1 to {MAX_KEY_BATCH} slots, got {size!r}; set "
                "[secure_aggregation] key_batch accordingly"
            )
        # A batch of one slot is per-round keys: its slot is the attempt itself, so its keys,
        # signatures and messages are those of an attempt without key batches.
        slots = tuple(
            RoundSetup(
                context=self.context if size == 1 else self.context.with_slot(j),
                sites=self.sites,
                vector_length=self.vector_length,
                modulus_bits=self.modulus_bits,
                threshold=self.threshold,
                neighbours=self.neighbours,
            )
            for j in range(size)
        )
        object.__setattr__(self, "sites", slots[0].sites)
        object.__setattr__(self, "slots", slots)

    @property
    def quorum(self) -> int:
        """Fewest sites every slot needs (the same in every slot)."""
        return self.slots[0].quorum


class KeyBatchClient:
    """One site's key batch: a :class:`SecAggClient` per slot (see the module docstring).

    Set-up, in order: :meth:`advertise`, :meth:`share_keys`, :meth:`receive_shares`; then, once
    per slot, :meth:`mask`, and the slot's own :meth:`SecAggClient.confirm` and
    :meth:`SecAggClient.answer` through :meth:`slot`. A slot the site refused at set-up (a bad
    advert or share in that slot) is listed in :attr:`refused` and never used.

    Parameters
    ----------
    setup
        The batch's public parameters (the same at every site and at the coordinator).
    site
        This site's id.
    sign, verify
        As for :class:`SecAggClient`.
    """

    def __init__(self, setup: KeyBatchSetup, site: str, *, sign: Sign, verify: Verify) -> None:
        self.setup = setup
        self.site = site
        self._slots = tuple(SecAggClient(s, site, sign=sign, verify=verify) for s in setup.slots)
        self._shared: set[int] = set()
        self._survivors: dict[int, tuple[str, ...]] = {}
        self._spent: set[int] = set()
        #: Slots this site refused at set-up, and why; they are never used.
        self.refused: dict[int, str] = {}

    @property
    def usable(self) -> tuple[int, ...]:
        """Slots set up at this site and not yet used to mask."""
        return tuple(sorted(set(self._survivors) - self._spent))

    def slot(self, index: int) -> SecAggClient:
        """The client of slot ``index`` (its consistency check and unmasking)."""
        self._check_index("use", index)
        return self._slots[index]

    def advertise(self) -> tuple[KeyAdvert, ...]:
        """Every slot's signed key advert, in slot order (the same if asked again)."""
        return tuple(client.advertise() for client in self._slots)

    def share_keys(
        self, adverts: Sequence[Mapping[str, KeyAdvert]]
    ) -> list[dict[str, bytes] | None]:
        """Check each slot's adverts (its U1) and seal that slot's shares for its neighbours.

        Returns
        -------
        list
            Per slot, recipient → sealed shares; ``None`` for a slot this site is not in or
            refused (see :attr:`refused`).

        Raises
        ------
        SecAggAbort
            The list does not have one entry per slot, or every slot was refused.
        """
        self._check_count("share keys", adverts)
        if self._shared or self.refused:
            self._refuse("share keys", "it already answered the share exchange of this batch")
        out: list[dict[str, bytes] | None] = []
        for j, (client, listed) in enumerate(zip(self._slots, adverts, strict=True)):
            if self.site not in listed:
                out.append(None)
                continue
            try:
                out.append(client.share_keys(listed))
            except SecAggAbort as exc:
                self.refused[j] = str(exc)
                out.append(None)
                continue
            self._shared.add(j)
        if not self._shared:
            self._refuse("share keys", "it refused or is not in every slot")
        return out

    def receive_shares(
        self, routed: Sequence[tuple[Mapping[str, bytes], Sequence[str]] | None]
    ) -> None:
        """Open the shares sealed for this site in each slot and keep each slot's U2.

        Parameters
        ----------
        routed
            Per slot, the sealed shares addressed to this site (sender → bytes) and U2, or
            ``None`` for a slot this site is not in. A slot whose shares are refused is listed in
            :attr:`refused` and not used.

        Raises
        ------
        SecAggAbort
            The list does not have one entry per slot, or no slot can be used.
        """
        self._check_count("receive shares", routed)
        if self._survivors:
            self._refuse("receive shares", "it already holds this batch's shares")
        for j, entry in enumerate(routed):
            if entry is None or j not in self._shared or j in self._survivors:
                continue
            sealed, survivors = entry
            try:
                self._slots[j].receive_shares(sealed)
            except SecAggAbort as exc:
                self.refused[j] = str(exc)
                continue
            self._survivors[j] = tuple(survivors)
        if not self._survivors:
            self._refuse("receive shares", "no slot could be set up")

    def mask(self, index: int, values: UIntArray) -> UIntArray:
        """Mask ``values`` with slot ``index`` for that slot's U2; the slot is then spent.

        Raises
        ------
        SecAggAbort
            The slot does not exist, was not set up at this site, or already masked an input
            (a second input under one slot's keys could be unmasked); or the slot's client
            refuses (see :meth:`SecAggClient.mask`).
        DataError
            ``values`` has the wrong shape, type or range.
        """
        self._check_index("mask", index)
        if index in self._spent:
            self._refuse(
                "mask",
                f"slot {index} is spent: it masked an input already, and a second input under "
                "the same keys could be unmasked",
            )
        if index not in self._survivors:
            reason = self.refused.get(index, "this site did not receive its shares")
            self._refuse("mask", f"slot {index} was not set up ({reason})")
        masked = self._slots[index].mask(values, survivors=self._survivors[index])
        self._spent.add(index)
        return masked

    def _check_index(self, action: str, index: int) -> None:
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < len(self._slots)
        ):
            self._refuse(action, f"there is no slot {index!r} in a batch of {len(self._slots)}")

    def _check_count(self, action: str, entries: Sequence[Any]) -> None:
        if len(entries) != len(self._slots):
            self._refuse(action, f"{len(entries)} entries for a batch of {len(self._slots)} slots")

    def _refuse(self, action: str, reason: str) -> NoReturn:
        raise SecAggAbort(
            f"site {self.site!r} refuses to {action} for the key batch set up in "
            f"{self.setup.context.describe()}: {reason}; it released nothing for this request"
        )


class KeyBatchServer:
    """The coordinator's key batch: a :class:`SecAggServer` per slot (see the module docstring).

    Set-up: :meth:`receive_adverts` per site, :meth:`close_adverts`, :meth:`receive_shares` per
    site, :meth:`close_shares`. Then each attempt :meth:`take` s the next slot and runs that
    slot's :class:`SecAggServer` from its masked-input stage on. A failed set-up (any slot
    aborts) fails the batch: :attr:`aborted` says why and a new batch is needed.

    Parameters
    ----------
    setup
        The batch's public parameters.
    verify
        As for :class:`SecAggServer`: rejects badly signed adverts and confirmations on receipt.
    """

    def __init__(
        self, setup: KeyBatchSetup, *, verify: Callable[[str, bytes, bytes], bool] | None = None
    ) -> None:
        self.setup = setup
        self._servers = tuple(SecAggServer(s, verify=verify) for s in setup.slots)
        self._members: tuple[frozenset[str], ...] = ()
        self._taken = 0
        #: Why the set-up failed (``None`` while it stands).
        self.aborted: str | None = None

    @property
    def ready(self) -> bool:
        """Whether the set-up is complete (every slot's shares routed) and stands."""
        return bool(self._members) and self.aborted is None

    @property
    def remaining(self) -> int:
        """Slots not yet handed to an attempt."""
        return len(self._servers) - self._taken

    def members(self, index: int) -> frozenset[str]:
        """U2 of slot ``index``: the sites that can mask with it (empty before set-up ends)."""
        return self._members[index] if self._members else frozenset()

    def take(self) -> int:
        """Hand the next unused slot to an attempt; it is never handed out again.

        Raises
        ------
        SecAggAbort
            The set-up failed or every slot is taken.
        """
        if self.aborted is not None:
            raise SecAggAbort(f"the key batch failed ({self.aborted}); set up a new one")
        if not self.remaining:
            raise SecAggAbort(
                f"every slot of the key batch set up in {self.setup.context.describe()} is "
                "spent; set up a new one"
            )
        self._taken += 1
        return self._taken - 1

    def server(self, index: int) -> SecAggServer:
        """The server of slot ``index``."""
        return self._servers[index]

    def receive_adverts(self, site: str, adverts: Sequence[KeyAdvert]) -> None:
        """Accept ``site``'s adverts, one per slot, all or none.

        Raises
        ------
        ProtocolError, IntegrityError
            Not one advert per slot, an advert of another site, a public key used twice, or
            any slot's server refuses its advert; nothing was accepted.
        """
        if len(adverts) != len(self._servers):
            raise ProtocolError(
                f"key batch adverts of {site!r}: {len(adverts)} for {len(self._servers)} slots"
            )
        keys = [k for a in adverts for k in (a.cipher_key, a.mask_key)]
        if len(set(keys)) != len(keys):
            raise IntegrityError(f"key batch adverts of {site!r} use a public key twice; rejected")
        for server, advert in zip(self._servers, adverts, strict=True):
            if advert.site != site:
                raise ProtocolError(f"key batch adverts of {site!r} hold {advert.site!r}'s")
            server.check_advert(advert)
        for server, advert in zip(self._servers, adverts, strict=True):
            server.receive_advert(advert)

    def close_adverts(self) -> list[dict[str, KeyAdvert]]:
        """End the advert stage of every slot; per slot, the adverts (U1) to send every site.

        Raises
        ------
        SecAggAbort
            A slot has too few sites; the batch failed.
        """
        return self._all_slots(lambda s: s.close_adverts())

    def receive_shares(self, site: str, sealed: Sequence[Mapping[str, bytes] | None]) -> None:
        """Accept ``site``'s sealed shares, one map per slot (``None`` for a slot it is not
        in), all or none.

        Raises
        ------
        ProtocolError, IntegrityError
            Not one entry per slot, shares for no slot, or a slot's server refuses them.
        """
        if len(sealed) != len(self._servers):
            raise ProtocolError(
                f"key batch shares of {site!r}: {len(sealed)} entries for "
                f"{len(self._servers)} slots"
            )
        given = [(srv, box) for srv, box in zip(self._servers, sealed, strict=True) if box]
        if not given:
            raise ProtocolError(f"key batch shares of {site!r} are for no slot")
        for server, box in given:
            server.check_shares(site, box)
        for server, box in given:
            server.receive_shares(site, box)

    def close_shares(self) -> list[ShareRouting]:
        """End the share exchange of every slot: per slot, the routed shares and U2.

        Raises
        ------
        SecAggAbort
            A slot has too few sites; the batch failed.
        """
        routing = self._all_slots(lambda s: s.close_shares())
        self._members = tuple(frozenset(r.survivors) for r in routing)
        return routing

    def _all_slots(self, close: Callable[[SecAggServer], Any]) -> list[Any]:
        if self.aborted is not None:
            raise SecAggAbort(f"the key batch failed ({self.aborted}); set up a new one")
        try:
            return [close(server) for server in self._servers]
        except SecAggAbort as exc:
            self.aborted = str(exc)
            raise
