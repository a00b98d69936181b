"""Secure aggregation: the coordinator learns the sum of the sites' updates and nothing else.

A pure library (no networking) of Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning", with the sparse masking graph of SecAgg+ (Bell et al.
2020) as an option. Each site runs a :class:`SecAggClient`, the coordinator a
:class:`SecAggServer`, both built from one :class:`RoundSetup`; the protocol layer carries
their messages (:class:`KeyAdvert`, sealed shares, masked vectors, confirmations,
:class:`UnmaskRequest`, :class:`UnmaskResponse`). A :class:`Quantizer` turns float updates
into the weighted integer vectors that are masked and summed.

Modules, from the bottom: ``context`` (what everything is bound to), ``quantize``, ``prg``
(seed → mask), ``keys`` (X25519 agreement), ``shamir`` (t-of-n shares), ``sealing`` (shares
encrypted for one recipient), ``graph`` (who masks with whom), ``round_setup``, ``messages``,
``client``, ``server``, and ``batched`` (:class:`KeyBatchClient`, :class:`KeyBatchServer`: one
set-up of independent per-round key slots, so that later rounds need only the masked input).
Every refusal or failed round raises :class:`~alliance.core.errors.SecAggAbort`.
"""

from alliance.core.errors import SecAggAbort
from alliance.secagg.batched import MAX_KEY_BATCH, KeyBatchClient, KeyBatchServer, KeyBatchSetup
from alliance.secagg.client import ClientStage, SecAggClient, Sign, Verify
from alliance.secagg.context import RoundContext, canonical_bytes
from alliance.secagg.graph import MaskingGraph, default_threshold
from alliance.secagg.keys import KeyPurpose, agree_key
from alliance.secagg.messages import (
    KeyAdvert,
    UnmaskRequest,
    UnmaskResponse,
    advert_bytes,
    confirmation_bytes,
)
from alliance.secagg.prg import PRG_CIPHER, MaskExpander, MaskPurpose, dtype_for, expand_seed
from alliance.secagg.quantize import MAX_MODULUS_BITS, QuantizedVector, Quantizer
from alliance.secagg.round_setup import RoundSetup
from alliance.secagg.server import AggregateSum, SecAggServer, ServerStage, ShareRouting
from alliance.secagg.shamir import (
    SecretShare,
    combine_shares,
    commit_secret,
    reconstruct_committed,
    split_secret,
)

__all__ = [
    "MAX_KEY_BATCH",
    "MAX_MODULUS_BITS",
    "PRG_CIPHER",
    "AggregateSum",
    "ClientStage",
    "KeyAdvert",
    "KeyBatchClient",
    "KeyBatchServer",
    "KeyBatchSetup",
    "KeyPurpose",
    "MaskExpander",
    "MaskPurpose",
    "MaskingGraph",
    "QuantizedVector",
    "Quantizer",
    "RoundContext",
    "RoundSetup",
    "SecAggAbort",
    "SecAggClient",
    "SecAggServer",
    "SecretShare",
    "ServerStage",
    "ShareRouting",
    "Sign",
    "UnmaskRequest",
    "UnmaskResponse",
    "Verify",
    "advert_bytes",
    "agree_key",
    "canonical_bytes",
    "combine_shares",
    "commit_secret",
    "confirmation_bytes",
    "default_threshold",
    "dtype_for",
    "expand_seed",
    "reconstruct_committed",
    "split_secret",
]
