"""Fixed-point encoding of model updates as integers modulo a power of two, weighted, summable.

Design
------
Secure aggregation adds vectors modulo ``2**modulus_bits``; model updates are floats. A
:class:`Quantizer` bridges the two:

1. clip every value to ``[-clip_range, clip_range]`` (the caller logs how many were clipped);
2. scale by ``levels / clip_range`` with ``levels = 2**(value_bits - 1) - 1`` and round to the
   nearest integer (ties to even: deterministic, the same at every site), giving a signed
   integer of ``value_bits`` bits;
3. multiply by the site's integer weight ``w`` (its number of training examples, at most
   ``max_weight``) in the integer domain, exactly;
4. store modulo ``2**modulus_bits`` (two's complement), as ``uint32`` when ``modulus_bits <=
   32``, else ``uint64`` (half the memory and pseudorandom bytes for small moduli).

The modulus is sized so that the sum over ``max_sites`` sites never wraps::

    modulus_bits = value_bits + ceil(log2(max_sites * max_weight)) + 1      (at most 62)

since ``|sum| <= max_sites * max_weight * levels < 2**(modulus_bits - 2)``. Decoding reads
the sum back as a signed integer and divides by ``total_weight * scale``: the weighted mean of
the clipped updates, off by at most :meth:`Quantizer.error_bound` per coordinate (half a
quantisation step, plus float32 rounding of the result).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from alliance.core.errors import ConfigError, DataError, IntegrityError
from alliance.secagg.prg import dtype_for

__all__ = ["MAX_MODULUS_BITS", "QuantizedVector", "Quantizer"]

#: Largest modulus supported: products and sums stay exact in int64 and float64 headroom.
MAX_MODULUS_BITS = 62

UIntArray = npt.NDArray[np.unsignedinteger[Any]]


class QuantizedVector(NamedTuple):
    """An encoded update and how many of its coordinates were clipped.

    Unpacks as ``values, clipped = quantizer.encode(...)``.
    """

    values: UIntArray
    clipped: int


@dataclass(frozen=True, kw_only=True)
class Quantizer:
    """Clip, round and weight float updates into integers modulo ``2**modulus_bits``.

    Parameters
    ----------
    clip_range
        Every coordinate is clipped to ``[-clip_range, clip_range]`` (finite, ``> 0``).
    value_bits
        Bits of each signed quantised value (``>= 2``); ``2**(value_bits-1) - 1`` levels per
        side.
    max_sites
        Most sites whose vectors are ever summed (``>= 1``).
    max_weight
        Largest weight of one site (``>= 1``); callers cap a site's number of examples at it.

    Raises
    ------
    ConfigError
        A parameter is invalid, or the modulus would exceed :data:`MAX_MODULUS_BITS` bits.
    """

    clip_range: float
    value_bits: int = 16
    max_sites: int
    max_weight: int = 1

    def __post_init__(self) -> None:
        c = self.clip_range
        if not isinstance(c, int | float) or isinstance(c, bool) or not math.isfinite(c) or c <= 0:
            raise ConfigError(f"clip_range must be a finite number > 0, got {c!r}")
        for name, low in (("value_bits", 2), ("max_sites", 1), ("max_weight", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.modulus_bits > MAX_MODULUS_BITS:
            headroom = MAX_MODULUS_BITS - 1 - self.value_bits
            raise ConfigError(
                f"quantiser needs a {self.modulus_bits}-bit modulus (value_bits "
                f"{self.value_bits} + ceil(log2({self.max_sites} sites * max_weight "
                f"{self.max_weight})) + 1), more than {MAX_MODULUS_BITS}; lower value_bits, or "
                f"keep max_sites * max_weight <= 2**{max(headroom, 0)}"
            )

    @property
    def modulus_bits(self) -> int:
        """Bits of the modulus: ``value_bits + ceil(log2(max_sites * max_weight)) + 1``."""
        return self.value_bits + (self.max_sites * self.max_weight - 1).bit_length() + 1

    @property
    def dtype(self) -> type[np.unsignedinteger[Any]]:
        """``numpy.uint32`` when ``modulus_bits <= 32``, else ``numpy.uint64``."""
        return dtype_for(self.modulus_bits)

    @property
    def levels(self) -> int:
        """Largest magnitude of a quantised value: ``2**(value_bits - 1) - 1``."""
        return (1 << (self.value_bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Quantisation steps per unit: ``levels / clip_range``."""
        return self.levels / float(self.clip_range)

    def error_bound(self) -> float:
        """Largest per-coordinate error of a decoded weighted mean.

        The distance between :meth:`decode_sum` of summed encodings and the exact weighted
        mean of the clipped inputs is at most half a quantisation step, ``0.5 / scale``, plus
        float32 rounding of a value of magnitude ``<= clip_range``.
        """
        return 0.5 / self.scale + float(self.clip_range) * 2.0**-23

    def encode(self, values: npt.NDArray[np.floating[Any]], *, weight: int) -> QuantizedVector:
        """Encode one site's update.

        Parameters
        ----------
        values
            The flat update (1-D, floating point, finite).
        weight
            The site's weight, in ``[1, max_weight]``.

        Returns
        -------
        QuantizedVector
            ``weight * round(clip(values) * scale)`` modulo ``2**modulus_bits`` as
            :attr:`dtype`, and the number of clipped coordinates.

        Raises
        ------
        DataError
            ``values`` is not a 1-D float array or holds NaN or infinite values.
        ConfigError
            ``weight`` is out of range.
        """
        x = np.asarray(values)
        if x.ndim != 1 or x.dtype.kind != "f":
            raise DataError(
                f"quantiser input must be a flat float array, got shape {x.shape} {x.dtype}; "
                "flatten the update first"
            )
        if not isinstance(weight, int | np.integer) or isinstance(weight, bool):
            raise ConfigError(f"weight must be an integer, got {weight!r}")
        if not 1 <= int(weight) <= self.max_weight:
            raise ConfigError(
                f"weight {weight} is outside [1, {self.max_weight}]; cap the number of "
                "examples at max_weight"
            )
        finite = np.isfinite(x)
        if not finite.all():
            first = int(np.argmin(finite))
            raise DataError(
                f"update has {x.size - int(np.count_nonzero(finite))} NaN or infinite values "
                f"(first at index {first}); local training diverged, the update cannot be sent"
            )
        c = float(self.clip_range)
        clipped = int(np.count_nonzero(x > c)) + int(np.count_nonzero(x < -c))
        if self._fits_32_bits and x.dtype == np.float32:
            return QuantizedVector(self._encode_32(x, c, int(weight)), clipped)
        scaled = x.astype(np.float64)
        np.clip(scaled, -c, c, out=scaled)
        scaled *= self.scale
        np.rint(scaled, out=scaled)
        integers = scaled.astype(np.int64)
        integers *= int(weight)
        words = integers.view(np.uint64)
        np.bitwise_and(words, np.uint64((1 << self.modulus_bits) - 1), out=words)
        return QuantizedVector(words.astype(self.dtype), clipped)

    @property
    def _fits_32_bits(self) -> bool:
        """Whether ``weight · level`` fits int32 and the modulus uint32 (the fast path)."""
        return self.modulus_bits <= 32 and self.levels * self.max_weight < 2**31

    def _encode_32(self, x: npt.NDArray[np.float32], c: float, weight: int) -> UIntArray:
        """:meth:`encode` in 32-bit arithmetic: four passes over the update instead of eight.

        ``x · scale`` in float32 differs from the float64 product by at most
        ``levels · 2**-24`` steps, i.e. ``clip_range · 2**-24`` in value, which
        :meth:`error_bound` already allows for.
        """
        scaled = np.clip(x, np.float32(-c), np.float32(c))
        scaled *= np.float32(self.scale)
        np.rint(scaled, out=scaled)
        integers = scaled.astype(np.int32)
        integers *= np.int32(weight)
        words = integers.view(np.uint32)
        if self.modulus_bits < 32:
            np.bitwise_and(words, np.uint32((1 << self.modulus_bits) - 1), out=words)
        return words

    def decode_sum(self, summed: UIntArray, *, total_weight: int) -> npt.NDArray[np.float32]:
        """The weighted mean of the updates whose encodings add up to ``summed``.

        Parameters
        ----------
        summed
            Sum of encodings modulo ``2**modulus_bits`` (1-D, unsigned integers).
        total_weight
            Sum of the weights of the summed encodings.

        Raises
        ------
        IntegrityError
            A value is not below the modulus, ``total_weight`` is out of range, or a value is
            larger than any sum of that total weight could be (the sum wrapped or is corrupt).
        """
        s = np.asarray(summed)
        if s.ndim != 1 or s.dtype.kind != "u":
            raise IntegrityError(
                f"summed vector must be a flat unsigned integer array, got {s.shape} {s.dtype}"
            )
        limit = self.max_sites * self.max_weight
        if (
            not isinstance(total_weight, int | np.integer)
            or isinstance(total_weight, bool)
            or not 1 <= int(total_weight) <= limit
        ):
            raise IntegrityError(
                f"total weight {total_weight!r} is outside [1, {limit}] (max_sites * max_weight)"
            )
        modulus = 1 << self.modulus_bits
        signed = s.astype(np.uint64)
        if s.size and int(signed.max()) >= modulus:
            raise IntegrityError(
                f"summed vector has values >= 2**{self.modulus_bits}; it was not reduced "
                "modulo the quantiser's modulus"
            )
        centred = signed.view(np.int64)
        centred[centred >= modulus // 2] -= modulus
        bound = int(total_weight) * self.levels
        if s.size and int(np.abs(centred).max()) > bound:
            raise IntegrityError(
                f"summed vector has a value beyond {bound} = total weight {total_weight} * "
                f"{self.levels} levels: the sum wrapped, or the total weight is wrong"
            )
        mean = centred.astype(np.float64)
        mean /= int(total_weight) * self.scale
        return mean.astype(np.float32)
