"""Gaussian noise and Poisson sampling from a cryptographically secure random stream.

Every random number DP-SGD relies on for its guarantee (the Gaussian noise and the choice of
which patients enter a batch) comes from :class:`SecureGaussian`, never from ``torch.randn``,
:mod:`random` or numpy's generators: those are Mersenne Twister or PCG streams whose state can
be recovered from their output, after which the "noise" is known and can be subtracted.

Source of randomness
--------------------
The ChaCha20 keystream of the ``cryptography`` package (OpenSSL), keyed by ``os.urandom(32)``
unless an explicit 32-byte key is given (tests only: a fixed key makes the stream
reproducible, which is exactly what must not happen in production). Each request (one
:meth:`SecureGaussian.sample` or :meth:`SecureGaussian.bernoulli_mask` call) uses its own nonce,
the request's sequence number, with the block counter starting at 0, so no keystream block is
ever used twice and the *i*-th request of a fixed key always gets the same bits.

From bits to normals
--------------------
Each 64-bit word gives a uniform ``u = ((k >> 11) + 1) · 2⁻⁵³`` in (0, 1], exactly
representable in float64. Pairs of uniforms become pairs of independent normals by the
Box–Muller transform, ``r = sqrt(−2 ln u₁)``, ``(r cos 2πu₂, r sin 2πu₂)``, in float64.
Box–Muller is chosen over the inverse normal CDF because it is exact in real arithmetic, needs
only ``log``, ``sqrt``, ``cos`` and ``sin`` (vectorised, accurate to about one float64 ulp) and
treats both tails alike, while ``ndtri(u)`` of a 53-bit uniform resolves the upper tail (where
``1 − u`` is coarse) worse than the lower one unless each tail is handled separately; it is
chosen over the polar method and the Ziggurat because it has no rejection loop, so the amount
of keystream and the running time do not depend on the values drawn (no timing channel on the
noise magnitude, cf. Jin et al., 2022) and are the same for every request of a given size. The
radius is cut at ``sqrt(2 · 53 · ln 2) ≈ 8.57`` standard deviations, which drops a mass of
``2⁻⁵³ ≈ 1.1e−16`` per pair, far below any δ in use.

The floating-point attack
-------------------------
Mironov (2012, "On significance of the least significant bits for differential privacy")
showed that Laplace noise sampled naively in floating point has a porous support: the set of
values ``x + noise`` that can occur depends on ``x``, so the low-order bits of one released
value can reveal ``x`` outright. Holohan & Braghin (2021, "Secure random sampling in
differential privacy") showed that the usual floating-point samplers stay invertible this way
and proposed summing several draws (Opacus' ``secure_mode`` sums four); Jin et al. (2022,
"Are we there yet? Timing and floating-point attacks on differential privacy systems") mounted
the attack on the Gaussian noise of DP-SGD. What this sampler does about it: the noise is drawn
and scaled (``std · z``) in float64 from 53-bit uniforms and only then rounded, once, to the
float32 the model uses. A float32 rounding cell holds about 2²⁹ float64 values, and the float64
samples (whose angle alone is resolved to 2π·2⁻⁵³) land in every cell of the noise's bulk, so
the rounded noise takes each float32 value there with the Gaussian mass of its cell, to within
float64 error, instead of leaving holes whose pattern depends on the secret. It is a
mitigation, not a proof: cells very close to zero (subnormal scale) are finer than the samples,
and the float32 addition of the noise to the clipped gradient sum rounds again. An exact
guarantee needs integer noise on a fixed grid (the discrete Gaussian of Canonne, Kamath &
Steinke, 2020), which the float32 training pipeline does not use today.

Speed
-----
``bench/dpsgd_epoch.py`` measures it on the 2-core development VM (x86_64, torch 2.13 CPU, one
torch thread): 8.1 ms per million float32 normals, against 3.5 ms for ``torch.randn``
(keystream ≈ 1.5 ms; ``log`` and ``sqrt`` in numpy, ``cos`` and ``sin`` in torch's vectorised
kernels). At DP-SGD's one request per step that is under 1 % of a ranker step (1.3M parameters).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from alliance.core.errors import ConfigError

__all__ = ["KEY_BYTES", "SecureGaussian"]

KEY_BYTES = 32
"""Length of a ChaCha20 key in bytes."""

_CHUNK_WORDS = 1 << 16  # 512 KiB of keystream per chunk: stays in cache, bounded memory
_ZEROS = bytes(8 * _CHUNK_WORDS)  # ChaCha20 "encrypts" zeros: the output is the keystream
_MAX_WORDS = 1 << 34  # below the 2³² blocks of 64 bytes that one nonce's counter can address
_TWO_PI = 2.0 * math.pi
_MAX_ABS_NORMAL = math.sqrt(-2.0 * math.log(2.0**-53))  # the largest |z| Box–Muller gives here
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class SecureGaussian:
    """Normal noise and Bernoulli masks from a ChaCha20 keystream.

    Parameters
    ----------
    key
        32-byte ChaCha20 key. ``None`` (the default, and the only choice for real training)
        draws a fresh key from ``os.urandom``. Give a fixed key only in tests: the same key
        gives the same sequence of outputs, request by request.

    Raises
    ------
    ConfigError
        If ``key`` is not 32 bytes.

    Notes
    -----
    Safe to share between threads (requests are numbered under a lock). A request's output
    depends only on the key and its sequence number, so two objects with the same key must not
    both be used for privacy noise.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is None:
            key = os.urandom(KEY_BYTES)
        if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
            got = f"{len(key)} bytes" if isinstance(key, bytes | bytearray) else type(key).__name__
            raise ConfigError(
                f"SecureGaussian key must be {KEY_BYTES} bytes, got {got}; pass None to draw "
                "a fresh key from os.urandom"
            )
        self._key = bytes(key)
        self._requests = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SecureGaussian(requests={self._requests})"  # never show the key

    def sample(self, numel_or_shape: int | Sequence[int], *, std: float) -> torch.Tensor:
        """Independent ``N(0, std²)`` values as a float32 tensor.

        Parameters
        ----------
        numel_or_shape
            Number of values (a 1-d result) or the shape of the result.
        std
            Standard deviation, finite and ≥ 0; ``0`` gives zeros.

        Returns
        -------
        torch.Tensor
            float32, of the requested shape; drawn and scaled in float64, rounded once.

        Raises
        ------
        ConfigError
            For a negative or non-finite ``std``, one so large that the noise would overflow
            float32, or a negative size.
        """
        shape = _shape(numel_or_shape)
        if not math.isfinite(std) or std < 0:
            raise ConfigError(f"noise std must be finite and >= 0, got {std}")
        if std * _MAX_ABS_NORMAL >= _FLOAT32_MAX:
            raise ConfigError(
                f"noise std {std:g} would overflow float32; scale the quantity down first"
            )
        numel = math.prod(shape)
        out = np.empty(numel, dtype=np.float32)
        if numel and std > 0:
            # Box–Muller turns pairs of words into pairs of normals: draw an even count.
            words = numel + (numel & 1)
            done = 0
            for chunk in self._keystream(words):
                z = _normals(chunk)
                z *= std
                take = min(len(z), numel - done)
                out[done : done + take] = z[:take]
                done += take
        else:
            out[:] = 0.0
            self._next_nonce()  # every request consumes a number, so later ones do not shift
        return torch.from_numpy(out).reshape(shape)

    def bernoulli_mask(self, n: int, *, p: float) -> torch.Tensor:
        """``n`` independent Bernoulli(``p``) draws as a bool tensor (Poisson sampling).

        Parameters
        ----------
        n
            Number of draws (≥ 0).
        p
            Inclusion probability in [0, 1], resolved to 2⁻⁵³: each draw is ``True`` when a
            53-bit uniform integer is below ``round(p · 2⁵³)``.

        Returns
        -------
        torch.Tensor
            Bool tensor of shape ``(n,)``.

        Raises
        ------
        ConfigError
            If ``p`` is outside [0, 1] or ``n`` is negative.
        """
        if not isinstance(n, int | np.integer) or n < 0:
            raise ConfigError(f"the number of Bernoulli draws must be an int >= 0, got {n!r}")
        n = int(n)
        if not 0.0 <= p <= 1.0:  # also rejects NaN
            raise ConfigError(f"Bernoulli probability must be in [0, 1], got {p}")
        threshold = np.uint64(round(p * 2.0**53))
        mask = np.empty(n, dtype=np.bool_)
        done = 0
        for chunk in self._keystream(n):
            np.less(chunk >> np.uint64(11), threshold, out=mask[done : done + len(chunk)])
            done += len(chunk)
        return torch.from_numpy(mask)

    def _next_nonce(self) -> bytes:
        with self._lock:
            number = self._requests
            self._requests += 1
        # OpenSSL's 16-byte ChaCha20 IV: 4-byte little-endian block counter, then 12 bytes of
        # nonce. Counter 0, nonce = request number: one fresh keystream per request.
        return (0).to_bytes(4, "little") + number.to_bytes(12, "little")

    def _keystream(self, words: int) -> Iterator[npt.NDArray[np.uint64]]:
        """The next request's keystream as uint64 words, in chunks (one reused buffer)."""
        if words > _MAX_WORDS:
            raise ConfigError(f"one request of {words} random words exceeds {_MAX_WORDS}; split it")
        nonce = self._next_nonce()
        encryptor = Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor()
        buffer = np.empty(min(words, _CHUNK_WORDS), dtype=np.uint64)
        for start in range(0, words, _CHUNK_WORDS):
            chunk = buffer[: min(_CHUNK_WORDS, words - start)]
            encryptor.update_into(memoryview(_ZEROS)[: 8 * len(chunk)], chunk.data.cast("B"))
            yield chunk


def _shape(numel_or_shape: int | Sequence[int]) -> tuple[int, ...]:
    shape = (
        (numel_or_shape,)
        if isinstance(numel_or_shape, int)
        else tuple(int(s) for s in numel_or_shape)
    )
    if any(s < 0 for s in shape):
        raise ConfigError(f"a sample size must be >= 0 in every dimension, got {shape}")
    return shape


def _normals(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.float64]:
    """Box–Muller: an even number of keystream words → as many independent N(0, 1) in float64."""
    u = (words >> np.uint64(11)).astype(np.float64)
    u += 1.0
    u *= 2.0**-53  # (0, 1], every value exact: log(u) is finite
    half = len(u) // 2
    r = np.log(u[:half])
    r *= -2.0
    np.sqrt(r, out=r)
    theta = u[half:]
    theta *= _TWO_PI
    # torch's float64 cos/sin are vectorised (SLEEF), numpy's call libm value by value:
    # 2.5-4x faster at every size measured (2.6k to 500k values, 1 or 2 threads).
    angle = torch.from_numpy(theta)
    z = np.empty(len(u), dtype=np.float64)
    torch.cos(angle, out=torch.from_numpy(z[:half]))
    torch.sin(angle, out=torch.from_numpy(z[half:]))
    z[:half] *= r
    z[half:] *= r
    return z
