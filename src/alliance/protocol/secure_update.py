"""The integer vector a site masks under secure aggregation, and how the coordinator reads the sum.

Under secure aggregation the coordinator learns only the sum of the survivors' vectors, so every
number it needs must be inside that vector, summed, not beside it in the clear:

=====================  ==========================================================================
coordinates            content (each modulo the quantiser's power-of-two modulus)
=====================  ==========================================================================
one per parameter      ``w · q(Δ)``: the update, clipped and quantised, times the site's weight
                       ``w = min(num_examples, max_weight)``
1                      ``w`` (the sum is the total weight; no site's size is revealed)
one per count metric   ``eval_n``, ``eval_top1``... (the pooled top-k counts)
1                      the training loss in thousandths, clipped to [0, 10⁶] (unweighted mean)
1                      ``1`` (the sum counts the survivors)
=====================  ==========================================================================

So the weighted mean of the updates, the pooled evaluation and the number of survivors come out
exactly as in a plaintext round (up to the quantisation bound), and nothing else does. The
modulus is the quantiser's (sized so the weighted sum of the update never wraps), widened to at
least 32 bits so the tail's sums cannot wrap either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from alliance.core.errors import IntegrityError
from alliance.protocol.privacy import SecAggPlan
from alliance.secagg import Quantizer

__all__ = ["COUNT_METRICS", "SecureSum", "UpdateLayout"]

#: Integer metrics a site reports, summed under secure aggregation.
COUNT_METRICS = ("eval_n", "eval_top1", "eval_top3", "eval_top10")
_LOSS_SCALE = 1000
#: The modulus is at least this wide, so that the tail's sums (cases, counts, loss) never wrap.
_MIN_MODULUS_BITS = 32
_LOSS_MAX = 1_000_000


@dataclass(frozen=True)
class SecureSum:
    """What the coordinator learns from one secure round."""

    mean_delta: dict[str, npt.NDArray[np.float32]]
    total_weight: int
    sites: int
    metrics: dict[str, float]
    mean_loss: float


class UpdateLayout:
    """The layout of a study's masked vector, the same at every site and at the coordinator.

    Parameters
    ----------
    reference
        The model's parameters by name (names, shapes and sizes fix the layout).
    plan
        The study's secure-aggregation plan (clip range, bits, maximum weight).
    n_sites
        Sites in the round's cohort (sizes the modulus so that the sum never wraps).
    """

    def __init__(
        self, reference: Mapping[str, npt.NDArray[Any]], plan: SecAggPlan, n_sites: int
    ) -> None:
        self.names = sorted(reference)
        self.shapes = {k: tuple(np.asarray(reference[k]).shape) for k in self.names}
        self.sizes = {k: int(np.prod(self.shapes[k], dtype=np.int64)) for k in self.names}
        self.n_params = sum(self.sizes.values())
        sites = max(n_sites, 1)
        self.quantizer = self._quantizer(plan, sites)
        while self.quantizer.modulus_bits < _MIN_MODULUS_BITS:
            # Small cohorts: widen the modulus (uint32 costs no more) so the tail's counts fit.
            sites *= 2
            self.quantizer = self._quantizer(plan, sites)
        self.max_weight = plan.max_weight
        self.length = self.n_params + 1 + len(COUNT_METRICS) + 2

    @staticmethod
    def _quantizer(plan: SecAggPlan, sites: int) -> Quantizer:
        return Quantizer(
            clip_range=plan.clip_range,
            value_bits=plan.value_bits,
            max_sites=sites,
            max_weight=plan.max_weight,
        )

    @property
    def dtype(self) -> np.dtype[Any]:
        """The unsigned integer type of the vector."""
        return np.dtype(self.quantizer.dtype)

    def encode(
        self,
        delta: Mapping[str, npt.NDArray[Any]],
        num_examples: int,
        metrics: Mapping[str, float],
    ) -> tuple[npt.NDArray[Any], int]:
        """The site's vector and how many update coordinates were clipped."""
        weight = min(int(num_examples), self.max_weight)
        flat = np.concatenate(
            [np.asarray(delta[k], dtype=np.float32).reshape(-1) for k in self.names]
        )
        body, clipped = self.quantizer.encode(flat, weight=weight)
        loss = metrics.get("train_loss", 0.0)
        loss_units = int(min(max(loss, 0.0), _LOSS_MAX / _LOSS_SCALE) * _LOSS_SCALE)
        tail = [weight, *(round(metrics.get(m, 0.0)) for m in COUNT_METRICS), loss_units, 1]
        out = np.empty(self.length, dtype=self.dtype)
        out[: self.n_params] = body
        out[self.n_params :] = np.asarray(tail, dtype=np.uint64).astype(self.dtype)
        return out, int(clipped)

    def decode(self, total: npt.NDArray[Any]) -> SecureSum:
        """Read the unmasked sum of the survivors' vectors."""
        total = np.asarray(total)
        if total.shape != (self.length,):
            raise IntegrityError(
                f"secure sum has {total.shape} coordinates, the study's layout has {self.length}"
            )
        tail = [int(v) for v in total[self.n_params :]]
        weight, counts, loss_units, sites = tail[0], tail[1:-2], tail[-2], tail[-1]
        if weight < 1 or sites < 1:
            raise IntegrityError(f"secure sum reports weight {weight} from {sites} sites")
        mean = self.quantizer.decode_sum(total[: self.n_params], total_weight=weight)
        out: dict[str, npt.NDArray[np.float32]] = {}
        offset = 0
        for k in self.names:
            size = self.sizes[k]
            out[k] = np.asarray(mean[offset : offset + size], dtype=np.float32).reshape(
                self.shapes[k]
            )
            offset += size
        metrics = {m: float(c) for m, c in zip(COUNT_METRICS, counts, strict=True)}
        return SecureSum(out, weight, sites, metrics, loss_units / _LOSS_SCALE / sites)
