"""Per-example gradient clipping for DP-SGD: ``Σ_i clip_C(∇ℓ_i)`` over a batch, exactly.

What it computes
----------------
For a batch whose row ``i`` is one example (one patient), with ``ℓ_i`` the loss function
applied to a batch of that one example, :func:`per_sample_clipped_sum` returns, by trainable
parameter, ``Σ_i c_i ∇ℓ_i`` with Opacus' factor ``c_i = min(1, C / (‖∇ℓ_i‖ + 1e-6))``, where
``‖∇ℓ_i‖`` is the L2 norm over all trainable parameters together and ``C = max_grad_norm``:
the quantity :func:`~alliance.privacy.dpsgd.train_privately` adds noise to. :class:`Clipper`
is the engine behind it, kept for a whole training run (its hooks are installed while it is
used as a context). Every :class:`ClipMethod` gives the same sum (up to floating-point
rounding); they differ only in speed and in the modules they handle. Examples must not
interact, so BatchNorm is rejected. A custom ``loss_fn`` must return the *mean* of
per-example losses over the batch.

Ghost clipping (``GHOST``)
--------------------------
Chosen automatically when every trainable parameter belongs to a layer with a rule, this is
ghost clipping (Goodfellow 2015; Li et al. 2022): no per-example gradient is ever built. One
forward pass records each ruled layer's inputs and output; one backward pass of the summed loss
to those outputs gives each example's output gradient ``g_i``; each layer's per-example
gradient norm then has a closed form, and the clipped sum ``Σ_i c_i ∇ℓ_i`` is the layers'
gradient under the weighted output gradients ``c_i g_i`` (rows are independent examples).

Why this is exact: examples do not interact, so the summed loss depends on row ``i`` of a
layer's output only through ``ℓ_i``, and row ``i`` of its gradient *is* ``g_i``; a layer's
per-example parameter gradient is a function of its own input and ``g_i`` alone. Parameters of
different layers are disjoint (a tied parameter disqualifies the model), so ``‖∇ℓ_i‖²`` is the
sum of the layers' per-example squared norms. Where these premises fail the engine does not
guess: a ruled layer called twice in one forward pass (its per-example gradient would be a sum
of outer products) falls back to ``VMAP``; a recorded tensor edited in place downstream (e.g.
``ReLU(inplace=True)``) is recorded again from copies, or else falls back. Rules:

- ``nn.Linear`` — the per-example weight gradient is ``g_i a_iᵀ`` with norm ``‖g_i‖‖a_i‖``
  (the Frobenius norm of a rank-1 matrix; bias: ``‖g_i‖``); for sequence inputs ``(B, T, ·)``
  the gradient is ``Σ_t g_it a_itᵀ``, whose squared norm is exactly the Gram form
  ``Σ_{t,s} (a_it·a_is)(g_it·g_is)``, used when ``T² ≤ d_in·d_out``, else the per-example
  gradient itself is built (whichever is smaller). The clipped weight gradient is
  ``Σ_i c_i g_i a_iᵀ``, one matmul (the book-keeping trick of Bu et al. 2023).
- :class:`~alliance.models.ranker.PhenotypeRanker` — every parameter enters a score through a
  rank-1 term (see its forward), so each per-example gradient is an outer product (or a
  scalar) whose norm factors. With ``A`` the profile matrix, ``x, z`` the case vectors,
  ``c = x Q_obs + z Q_exc`` and ``h = (A P + U)ᵀ g``: ``‖∇U‖ = ‖g‖‖c‖``, ``‖∇P‖ = ‖Aᵀg‖‖c‖``,
  ``‖∇Q_obs‖ = ‖x‖‖h‖``, ``‖∇Q_exc‖ = ‖z‖‖h‖``, ``∇b = g``, ``∇s_obs = (Aᵀg)·x``,
  ``∇s_exc = −(Aᵀg)·z``; the clipped sums are the same products with ``c_i g_i``. One sparse
  product ``Aᵀ G`` per batch (``Aᵀ`` converted to CSR once) replaces autograd's backward
  through the profiles, which re-sorts ``A`` every step. The rule is derived from the
  forward by hand, so the first batch of every run is also differentiated by autograd and
  must agree (:class:`~alliance.core.errors.ModelError` otherwise): a change to the ranker's
  forward cannot silently break the clipping.

Fallbacks
---------
``VMAP`` is the generic fallback (``AUTO`` picks it when some trainable parameter has no rule):
``torch.func`` per-example gradients (``vmap(grad(...))``), in chunks of bounded memory, then
clipped and summed. ``LOOP`` runs one example at a time through autograd; it works for any
module, including ops ``vmap`` does not support (sparse CSR tensors), and is the slowest.
"""

from __future__ import annotations

import enum
import logging
import math
import operator
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from alliance.core.errors import ConfigError, ModelError
from alliance.models.ranker import PhenotypeRanker
from alliance.models.training import LossFn, call_model

__all__ = [
    "ClipMethod",
    "Clipper",
    "per_sample_clipped_sum",
]

logger = logging.getLogger(__name__)

_CLIP_EPS = 1e-6  # Opacus: factor = min(1, C / (norm + 1e-6))
_VMAP_BUDGET = 1 << 25  # floats of per-example gradients materialised at once (128 MiB)


class ClipMethod(enum.Enum):
    """How per-example clipped gradients are computed (all give the same sum)."""

    AUTO = "auto"  # GHOST when every trainable parameter has a rule, else VMAP
    GHOST = "ghost"  # closed-form per-example norms, one weighted gradient
    VMAP = "vmap"  # torch.func per-example gradients
    LOOP = "loop"  # one example at a time


def per_sample_clipped_sum(
    model: nn.Module,
    inputs: Any,
    targets: torch.Tensor,
    *,
    max_grad_norm: float,
    loss_fn: LossFn | None = None,
    method: ClipMethod = ClipMethod.AUTO,
) -> dict[str, torch.Tensor]:
    """``Σ_i clip_C(∇ℓ_i)`` over a batch: the quantity DP-SGD adds noise to.

    Parameters
    ----------
    model
        Any module without BatchNorm (its mode, train or eval, is left as it is).
    inputs, targets
        One batch, as a collate function yields it; row ``i`` is example ``i``.
    max_grad_norm
        Clipping bound C (> 0) on each example's gradient over all trainable parameters.
    loss_fn
        Batch mean of per-example losses; cross-entropy by default.
    method
        How to compute it; ``AUTO`` picks the fastest exact method that applies.

    Returns
    -------
    dict of str to torch.Tensor
        By trainable parameter name (as ``named_parameters``), the sum of clipped per-example
        gradients. Parameters' ``.grad`` are not touched.

    Raises
    ------
    ConfigError
        For a bad ``max_grad_norm``, BatchNorm, or ``GHOST`` where no closed form applies.
    ModelError
        If ``torch.func`` cannot differentiate a model that has no closed-form rule (pass
        ``method=ClipMethod.LOOP``), or the ranker's closed form disagrees with autograd.
    """
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm}")
    with Clipper(model, loss_fn=loss_fn, max_grad_norm=max_grad_norm, method=method) as clipper:
        sums, _ = clipper.clipped_sum(inputs, targets)
    return sums


# ------------------------------------------------------------------------------------------------
# Clipping engine
# ------------------------------------------------------------------------------------------------


@dataclass
class _Capture:
    """One ruled layer's call in the forward pass; ``scratch`` carries norms_sq → grads."""

    module: nn.Module
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor
    calls: int = 1
    scratch: dict[str, torch.Tensor] = field(default_factory=dict)
    versions: tuple[int, ...] = ()  # of the output and tensor inputs, to detect in-place edits

    def tensors(self) -> list[torch.Tensor]:
        args = [*self.args, *self.kwargs.values()]
        return [self.output, *(a for a in args if isinstance(a, torch.Tensor))]

    def edited(self) -> bool:
        """Whether a later in-place operation changed what was recorded."""
        return tuple(t._version for t in self.tensors()) != self.versions


class _Rule(Protocol):
    """Closed-form per-example norms and clipped gradients of one layer type."""

    def applies(self, module: nn.Module) -> bool: ...

    def norms_sq(self, cap: _Capture, g: torch.Tensor) -> torch.Tensor: ...

    def grads(
        self, cap: _Capture, g: torch.Tensor, factor: torch.Tensor
    ) -> dict[str, torch.Tensor]: ...


class Clipper:
    """Per-example clipping for one model; hooks are installed while it is used as a context."""

    def __init__(
        self,
        model: nn.Module,
        *,
        loss_fn: LossFn | None,
        max_grad_norm: float,
        method: ClipMethod = ClipMethod.AUTO,
    ) -> None:
        for name, module in model.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                raise ConfigError(
                    f"{name or 'the model'} is a {type(module).__name__}, which mixes the "
                    "examples of a batch, so per-patient gradients are undefined; replace it "
                    "with GroupNorm (opacus.validators.ModuleValidator.fix does this)"
                )
        self.model = model
        self.loss_fn = loss_fn
        self.max_grad_norm = max_grad_norm
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.rules = _assign_rules(model, self.named)
        if method is ClipMethod.GHOST and self.rules is None:
            raise ConfigError(
                "ClipMethod.GHOST needs every trainable parameter to belong to an nn.Linear or "
                "a PhenotypeRanker, untied; use ClipMethod.AUTO to fall back to torch.func"
            )
        if method is ClipMethod.AUTO:
            method = ClipMethod.GHOST if self.rules is not None else ClipMethod.VMAP
        self.method = method
        self._prefix = {m: f"{n}." if n else "" for n, m in model.named_modules()}
        self._captures: dict[nn.Module, _Capture] = {}
        self._recording = False
        # Set when a layer's output is edited in place downstream (e.g. ReLU(inplace=True)):
        # from then on the hook hands the rest of the model a copy and keeps the original.
        self._copy_outputs = False
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> Clipper:
        if self.method is ClipMethod.GHOST and self.rules is not None:
            self._handles = [
                m.register_forward_hook(self._record, with_kwargs=True) for m in self.rules
            ]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._captures.clear()

    def _record(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        if not self._recording:
            return None
        if module in self._captures:
            self._captures[module].calls += 1
        elif isinstance(output, torch.Tensor):
            cap = _Capture(module, args, kwargs, output)
            cap.versions = tuple(t._version for t in cap.tensors())
            self._captures[module] = cap
            if self._copy_outputs:
                return output.clone()
        return None

    def clipped_sum(
        self, inputs: Any, targets: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], float]:
        """The sum of clipped per-example gradients and the batch's (unclipped) mean loss."""
        if self.method is ClipMethod.GHOST:
            try:
                result = self._ghost(inputs, targets)
            finally:
                self._captures.clear()
            if result is not None:
                return result
            logger.debug("a layer ran more than once in a forward pass; using torch.func")
        if self.method is ClipMethod.LOOP:
            return _loop_clipped_sum(self, inputs, targets)
        try:
            return _vmap_clipped_sum(self, inputs, targets)
        except (RuntimeError, NotImplementedError) as exc:
            raise ModelError(
                f"torch.func cannot compute per-example gradients of {type(self.model).__name__} "
                f"({str(exc).splitlines()[0]}); train with clip_method=ClipMethod.LOOP, which "
                "handles any module one example at a time"
            ) from exc

    def _ghost(
        self, inputs: Any, targets: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], float] | None:
        assert self.rules is not None
        batch = len(targets)
        self._captures.clear()
        self._recording = True
        try:
            out = call_model(self.model, inputs)
        finally:
            self._recording = False
        if self.loss_fn is None:
            summed = nn.functional.cross_entropy(out, targets, reduction="sum")
        else:  # a batch mean of per-example losses, times the batch: their sum
            summed = self.loss_fn(out, targets) * batch
        caps = [c for c in self._captures.values() if c.output.requires_grad]
        if any(c.calls > 1 for c in caps):
            return None  # per-example gradients of a reused layer are sums of outer products
        if any(c.edited() for c in caps):
            if self._copy_outputs or not any(c.output._version != c.versions[0] for c in caps):
                return None  # an input was edited in place: nothing recorded can be trusted
            self._copy_outputs = True
            logger.debug("a layer's output is edited in place downstream; recording copies")
            return self._ghost(inputs, targets)
        grads_out = torch.autograd.grad(
            summed, [c.output for c in caps], retain_graph=True, allow_unused=True
        )
        used = [(c, g) for c, g in zip(caps, grads_out, strict=True) if g is not None]
        with torch.no_grad():
            norms_sq = sum(self.rules[c.module].norms_sq(c, g.detach()) for c, g in used)
            norms = torch.as_tensor(norms_sq, dtype=out.dtype).sqrt()
            factor = (self.max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
        sums: dict[str, torch.Tensor] = {}
        for cap, g in used:
            for local, grad in self.rules[cap.module].grads(cap, g.detach(), factor).items():
                sums[self._prefix[cap.module] + local] = grad.detach()
        for name, p in self.named:  # a layer unused in this forward pass
            if name not in sums:
                sums[name] = torch.zeros_like(p)
        return sums, float(summed.detach()) / batch


def _assign_rules(
    model: nn.Module, named: list[tuple[str, nn.Parameter]]
) -> dict[nn.Module, _Rule] | None:
    """A rule for every layer that owns trainable parameters, or None if one has none."""
    rules: dict[nn.Module, _Rule] = {}
    covered: list[int] = []
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        rule = next((r for r in (_LinearRule(), _RankerRule()) if r.applies(module)), None)
        if rule is None:
            return None
        rules[module] = rule
        covered.extend(id(p) for p in own)
    # A parameter tied into two layers has per-example gradients that are sums across them.
    if sorted(covered) != sorted(id(p) for _, p in named):
        return None
    return rules


def _rows(factor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``factor`` of shape (B,) shaped to scale the rows of ``like`` (B, ...)."""
    return factor.view((-1,) + (1,) * (like.dim() - 1))


class _LinearRule:
    """``nn.Linear``: per-example weight gradients are ``g aᵀ``, summed over any time axis."""

    def applies(self, module: nn.Module) -> bool:
        return type(module) is nn.Linear

    def norms_sq(self, cap: _Capture, g: torch.Tensor) -> torch.Tensor:
        m = cap.module
        assert isinstance(m, nn.Linear)
        a = _linear_input(cap)
        with_bias = m.bias is not None and m.bias.requires_grad
        if g.dim() == 2:
            g_sq: torch.Tensor = torch.linalg.vecdot(g, g)
            if not m.weight.requires_grad:
                return g_sq
            a_sq = torch.linalg.vecdot(a, a)
            return torch.addcmul(g_sq, g_sq, a_sq) if with_bias else g_sq * a_sq
        a, g = a.flatten(1, -2), g.flatten(1, -2)  # (B, T, ·)
        total = torch.zeros(g.shape[0], dtype=g.dtype)
        if m.weight.requires_grad:
            if a.shape[1] ** 2 <= a.shape[2] * g.shape[2]:  # Gram trick: B·T² instead of B·d·p
                total += ((a @ a.transpose(1, 2)) * (g @ g.transpose(1, 2))).sum((1, 2))
            else:
                total += torch.einsum("bto,bti->boi", g, a).square().sum((1, 2))
        if with_bias:
            total += g.sum(1).square().sum(1)
        return total

    def grads(
        self, cap: _Capture, g: torch.Tensor, factor: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        m = cap.module
        assert isinstance(m, nn.Linear)
        weighted = (g * _rows(factor, g)).reshape(-1, m.out_features)
        out: dict[str, torch.Tensor] = {}
        if m.weight.requires_grad:
            out["weight"] = weighted.T @ _linear_input(cap).reshape(-1, m.in_features)
        if m.bias is not None and m.bias.requires_grad:
            out["bias"] = weighted.sum(0)
        return out


def _linear_input(cap: _Capture) -> torch.Tensor:
    a = cap.args[0] if cap.args else cap.kwargs["input"]
    assert isinstance(a, torch.Tensor)
    return a.detach()


class _RankerRule:
    """:class:`PhenotypeRanker`, in closed form (module docstring), checked against autograd.

    The first batch's clipped gradient is also computed by autograd; if they disagree (the
    ranker's forward changed and this rule did not), :class:`ModelError` is raised.
    """

    _PARAMS = frozenset(
        {
            "prior_obs",
            "prior_exc",
            "term_obs",
            "term_exc",
            "term_out",
            "disease_emb",
            "disease_bias",
        }
    )

    def __init__(self) -> None:
        self._profiles: torch.Tensor | None = None
        self._profiles_t: torch.Tensor | None = None
        self._checked = False

    def applies(self, module: nn.Module) -> bool:
        return (
            type(module) is PhenotypeRanker
            and {n for n, _ in module.named_parameters()} == self._PARAMS
            and module.profiles.layout in (torch.sparse_csr, torch.strided)
        )

    def _transposed(self, profiles: torch.Tensor) -> torch.Tensor:
        """``Aᵀ`` as CSR, converted once (a CSC product re-sorts the matrix on every call)."""
        if profiles is not self._profiles or self._profiles_t is None:
            if profiles.layout == torch.strided:
                self._profiles_t = profiles.t()
            else:
                with warnings.catch_warnings():
                    # torch flags every CSR tensor as "beta"; this conversion is stable.
                    warnings.filterwarnings("ignore", message="Sparse CSR tensor support")
                    self._profiles_t = profiles.t().to_sparse_csr()
            self._profiles = profiles
        return self._profiles_t

    def norms_sq(self, cap: _Capture, g: torch.Tensor) -> torch.Tensor:
        m = cap.module
        assert isinstance(m, PhenotypeRanker)
        bound = dict(zip(("observed", "excluded"), cap.args, strict=False)) | cap.kwargs
        x, z = bound["observed"].detach(), bound["excluded"].detach()
        at_g = torch.sparse.mm(self._transposed(m.profiles), g.T).T  # rows: Aᵀ g_i
        case = x @ m.term_obs.detach() + z @ m.term_exc.detach()
        h = at_g @ m.term_out.detach() + g @ m.disease_emb.detach()  # rows: (A P + U)ᵀ g_i
        cap.scratch.update(x=x, z=z, at_g=at_g, case=case)
        g_sq, case_sq, h_sq = g.square().sum(1), case.square().sum(1), h.square().sum(1)
        terms = {
            "prior_obs": (at_g * x).sum(1).square(),
            "prior_exc": (at_g * z).sum(1).square(),
            "term_obs": x.square().sum(1) * h_sq,
            "term_exc": z.square().sum(1) * h_sq,
            "term_out": at_g.square().sum(1) * case_sq,
            "disease_emb": g_sq * case_sq,
            "disease_bias": g_sq,
        }
        trainable = [terms[n] for n, p in m.named_parameters() if p.requires_grad]
        return torch.stack(trainable).sum(0)

    def grads(
        self, cap: _Capture, g: torch.Tensor, factor: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        m = cap.module
        assert isinstance(m, PhenotypeRanker)
        s = cap.scratch
        w = g * factor[:, None]  # clipped output gradients
        at_w = s["at_g"] * factor[:, None]  # Aᵀ is linear: Aᵀ (c_i g_i) = c_i Aᵀ g_i
        h_w = at_w @ m.term_out.detach() + w @ m.disease_emb.detach()
        full = {
            "prior_obs": (at_w * s["x"]).sum(),
            "prior_exc": -(at_w * s["z"]).sum(),
            "term_obs": s["x"].T @ h_w,
            "term_exc": s["z"].T @ h_w,
            "term_out": at_w.T @ s["case"],
            "disease_emb": w.T @ s["case"],
            "disease_bias": w.sum(0),
        }
        grads = {n: full[n] for n, p in m.named_parameters() if p.requires_grad}
        if not self._checked:
            self._check(cap, w, grads)
        return grads

    def _check(self, cap: _Capture, w: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
        params = [p for n, p in cap.module.named_parameters() if n in grads]
        with torch.enable_grad():
            reference = torch.autograd.grad(
                cap.output, params, grad_outputs=w, retain_graph=True, allow_unused=True
            )
        for (name, mine), ref in zip(grads.items(), reference, strict=True):
            ref_t = torch.zeros_like(mine) if ref is None else ref
            if (mine - ref_t).norm() > 1e-3 * ref_t.norm() + 1e-6:
                raise ModelError(
                    f"the closed-form DP-SGD gradient of PhenotypeRanker.{name} disagrees with "
                    "autograd: the ranker's forward changed; update clipping._RankerRule, or "
                    "train with ClipMethod.LOOP meanwhile"
                )
        self._checked = True


# ------------------------------------------------------------------------------------------------
# Generic fallbacks
# ------------------------------------------------------------------------------------------------


def _map_batch(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Any) -> Any:
    """Apply ``fn`` to every tensor in a batch's (nested tuple/list/mapping) inputs."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, tuple | list):
        return type(inputs)(_map_batch(fn, x) for x in inputs)
    if isinstance(inputs, Mapping):
        return {k: _map_batch(fn, v) for k, v in inputs.items()}
    return inputs


def _loss_of(clipper: Clipper) -> LossFn:
    return clipper.loss_fn or nn.functional.cross_entropy


def _clip_and_add(
    sums: dict[str, torch.Tensor], per_example: dict[str, torch.Tensor], max_grad_norm: float
) -> None:
    """Clip per-example gradients ``(b, *shape)`` as Opacus does and add them to ``sums``."""
    norms = torch.stack([g.reshape(len(g), -1).norm(2, dim=1) for g in per_example.values()])
    norms = norms.norm(2, dim=0)
    factor = (max_grad_norm / (norms + _CLIP_EPS)).clamp(max=1.0)
    for name, g in per_example.items():
        sums[name] += torch.einsum("b,b...->...", factor, g)


class _Stateless(nn.Module):
    """``model`` with parameters substituted (torch.func), callable through ``call_model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.state: dict[str, torch.Tensor] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.inner, self.state, args, kwargs)


def _vmap_clipped_sum(
    clipper: Clipper, inputs: Any, targets: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    params = {n: p.detach() for n, p in clipper.named}
    stateless = _Stateless(clipper.model)
    loss_of = _loss_of(clipper)

    def one(p: dict[str, torch.Tensor], x: Any, y: torch.Tensor) -> torch.Tensor:
        stateless.state = p  # frozen parameters and buffers come from the module itself
        return loss_of(call_model(stateless, _map_batch(lambda t: t.unsqueeze(0), x)), y[None])

    per_example = torch.func.vmap(
        torch.func.grad_and_value(one), in_dims=(None, 0, 0), randomness="different"
    )
    sums = {n: torch.zeros_like(p) for n, p in clipper.named}
    chunk = max(1, _VMAP_BUDGET // max(1, sum(p.numel() for p in params.values())))
    total = 0.0
    for start in range(0, len(targets), chunk):
        part = slice(start, start + chunk)
        grads, losses = per_example(
            params, _map_batch(operator.itemgetter(part), inputs), targets[part]
        )
        _clip_and_add(sums, grads, clipper.max_grad_norm)
        total += float(losses.sum())
    return sums, total / max(len(targets), 1)


def _loop_clipped_sum(
    clipper: Clipper, inputs: Any, targets: torch.Tensor
) -> tuple[dict[str, torch.Tensor], float]:
    sums = {n: torch.zeros_like(p) for n, p in clipper.named}
    params = [p for _, p in clipper.named]
    loss_of = _loss_of(clipper)
    total = 0.0
    for i in range(len(targets)):
        one = _map_batch(operator.itemgetter(slice(i, i + 1)), inputs)
        loss = loss_of(call_model(clipper.model, one), targets[i : i + 1])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        per_example = {
            n: (g if g is not None else torch.zeros_like(p)).unsqueeze(0)
            for (n, p), g in zip(clipper.named, grads, strict=True)
        }
        _clip_and_add(sums, per_example, clipper.max_grad_norm)
        total += float(loss.detach())
    return sums, total / max(len(targets), 1)
