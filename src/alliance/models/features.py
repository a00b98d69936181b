"""Phenotype features: cases and diseases as IC-weighted vectors over one public vocabulary.

The vocabulary is every HPO term that appears, after propagation to ancestors, in the annotation
of at least one catalogue disease: it is derived from public knowledge only, in a fixed order, so
every site and the coordinator agree on it without looking at any patient.

A case's *observed* vector holds the information content (IC) of each observed term and all its
ancestors (the true-path rule), L2-normalised; its *excluded* vector holds the IC of each
explicitly excluded term. A disease's *profile* is the same kind of vector built from its
annotations. The cosine of a case vector and a profile is the classic phenotype-similarity prior
(Köhler et al. 2009), computed here as one sparse matrix product.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from alliance.data.cases import Case
from alliance.data.ontology import DiseaseCatalogue, Ontology

__all__ = [
    "CaseBatch",
    "CaseCollate",
    "CaseItem",
    "EncodedCases",
    "PhenotypeFeatures",
    "SparseProduct",
]

_MIN_IC = 0.05


@dataclass(frozen=True)
class EncodedCases:
    """Cases as sparse rows over the vocabulary (CSR-style index and weight arrays) and labels."""

    obs_ptr: npt.NDArray[np.int64]
    obs_idx: npt.NDArray[np.int64]
    obs_w: npt.NDArray[np.float32]
    exc_ptr: npt.NDArray[np.int64]
    exc_idx: npt.NDArray[np.int64]
    exc_w: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.labels)


class PhenotypeFeatures:
    """The fixed vocabulary and disease profiles of a study (public knowledge only).

    Parameters
    ----------
    ontology
        The HPO release.
    catalogue
        The candidate diseases (label space).
    """

    def __init__(self, ontology: Ontology, catalogue: DiseaseCatalogue) -> None:
        self.ontology = ontology
        self.catalogue = catalogue
        propagated = [ontology.propagate(d.phenotypes) for d in catalogue.diseases]
        self.terms: tuple[str, ...] = tuple(sorted(set().union(*propagated)))
        self.index = {t: i for i, t in enumerate(self.terms)}
        self.ic = np.array(
            [max(ontology.information_content(t), _MIN_IC) for t in self.terms], dtype=np.float32
        )
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for r, terms in enumerate(propagated):
            idx = np.array(sorted(self.index[t] for t in terms), dtype=np.int64)
            w = self.ic[idx] / np.linalg.norm(self.ic[idx])
            rows.extend([r] * len(idx))
            cols.extend(idx.tolist())
            vals.extend(w.tolist())
        self._profile_rows = np.array(rows, dtype=np.int64)
        self._profile_cols = np.array(cols, dtype=np.int64)
        self._profile_vals = np.array(vals, dtype=np.float32)
        #: The batch builder of every dataset of this study (a DataLoader ``collate_fn``).
        self.collate = CaseCollate(self.n_terms)

    @property
    def n_terms(self) -> int:
        """Size of the vocabulary."""
        return len(self.terms)

    @property
    def n_diseases(self) -> int:
        """Size of the label space."""
        return len(self.catalogue)

    def profiles(self) -> torch.Tensor:
        """Disease profiles as a sparse CSR tensor of shape ``(n_diseases, n_terms)``."""
        crow = np.zeros(self.n_diseases + 1, dtype=np.int64)
        np.add.at(crow, self._profile_rows + 1, 1)
        with warnings.catch_warnings():
            # torch flags every CSR tensor as "beta"; the operations used here are stable.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.from_numpy(np.cumsum(crow)),
                torch.from_numpy(self._profile_cols),
                torch.from_numpy(self._profile_vals),
                size=(self.n_diseases, self.n_terms),
                check_invariants=True,
            )

    def _row(
        self, terms: Sequence[str], *, propagate: bool
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        known = [t for t in terms if t in self.ontology]
        chosen = self.ontology.propagate(known) if propagate else frozenset(known)
        idx = np.array(sorted(self.index[t] for t in chosen if t in self.index), dtype=np.int64)
        w = self.ic[idx]
        norm = float(np.linalg.norm(w))
        return idx, (w / norm if norm > 0 else w).astype(np.float32)

    def encode(self, cases: Sequence[Case], *, labelled: bool = True) -> EncodedCases:
        """Encode cases; with ``labelled`` every case must have a diagnosis in the catalogue."""
        obs: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = []
        exc: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]] = []
        labels = np.full(len(cases), -1, dtype=np.int64)
        for i, case in enumerate(cases):
            obs.append(self._row(case.observed, propagate=True))
            exc.append(self._row(case.excluded, propagate=False))
            if labelled:
                labels[i] = self.catalogue.index(case.disease_ids[0]) if case.disease_ids else -1
        return EncodedCases(*_pack(obs), *_pack(exc), labels)


CaseItem = tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    int,
]
CaseBatch = tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]


class CaseCollate:
    """Batches of encoded cases: dense ``(batch, n_terms)`` observed and excluded matrices and
    the label tensor, ``((observed, excluded), labels)``.

    Called on a list of :class:`~alliance.models.ranker.CaseDataset` items it is a DataLoader
    ``collate_fn``. :meth:`gatherer` builds the very same batches (value for value, so training
    on them gives the same model to the bit) straight from a whole site's encoded cases by
    index, with no Python work per case: the local training loop's fast path.

    Parameters
    ----------
    n_terms
        Width of the vocabulary.
    """

    def __init__(self, n_terms: int) -> None:
        self.n_terms = n_terms

    def __call__(self, batch: Sequence[CaseItem]) -> CaseBatch:
        """The batch of these items."""
        observed = np.zeros((len(batch), self.n_terms), dtype=np.float32)
        excluded = np.zeros((len(batch), self.n_terms), dtype=np.float32)
        for r, (oi, ow, xi, xw, _) in enumerate(batch):
            observed[r, oi] = ow
            excluded[r, xi] = xw
        labels = torch.tensor([item[4] for item in batch], dtype=torch.int64)
        return (torch.from_numpy(observed), torch.from_numpy(excluded)), labels

    def gatherer(self, encoded: EncodedCases) -> Callable[[torch.Tensor], CaseBatch]:
        """A function from case indices (an int64 tensor) to the batch of those cases, equal
        to ``self([item(i) for i in indices])``; the cases are converted once, here."""
        observed = _SparseRows(encoded.obs_ptr, encoded.obs_idx, encoded.obs_w)
        excluded = _SparseRows(encoded.exc_ptr, encoded.exc_idx, encoded.exc_w)
        labels = torch.tensor(encoded.labels, dtype=torch.int64)
        width = self.n_terms

        def gather(indices: torch.Tensor) -> CaseBatch:
            return (observed.dense(indices, width), excluded.dense(indices, width)), labels[indices]

        return gather


class _SparseRows:
    """CSR rows (pointer, column and value arrays) that scatter chosen rows into a dense block."""

    def __init__(
        self, ptr: npt.NDArray[np.int64], idx: npt.NDArray[np.int64], w: npt.NDArray[np.float32]
    ) -> None:
        # Copies: the encoded arrays may be read-only, which torch.from_numpy warns about.
        self.ptr = torch.tensor(ptr, dtype=torch.int64)
        self.idx = torch.tensor(idx, dtype=torch.int64)
        self.w = torch.tensor(w, dtype=torch.float32)

    def dense(self, rows: torch.Tensor, width: int) -> torch.Tensor:
        """Rows ``rows`` as a dense ``(len(rows), width)`` float32 block (zeros elsewhere)."""
        out = torch.zeros(len(rows), width, dtype=torch.float32)
        start = self.ptr[rows]
        length = self.ptr[rows + 1] - start
        total = int(length.sum())
        if total == 0:
            return out
        which = torch.repeat_interleave(torch.arange(len(rows)), length)
        offset = torch.cumsum(length, 0) - length
        pos = torch.arange(total) - offset[which] + start[which]
        # A row's columns are distinct, so the scatter writes each cell at most once.
        out[which, self.idx[pos]] = self.w[pos]
        return out


class SparseProduct:
    """Products ``A @ X`` with a fixed sparse CSR matrix ``A`` (never trained), with autograd.

    ``torch.sparse.mm(A, X)`` rebuilds ``Aᵀ`` as CSR (a sort of every entry) in each backward
    pass, which for the disease profiles costs more than the rest of a ranker's training step.
    Here ``Aᵀ`` is built on the first product that needs a gradient and kept while ``A`` is the
    same tensor; the gradient is the same product on the same CSR, so every number is as
    before, to the bit. A matrix that is not sparse CSR is multiplied as before.

    The kept transpose is derived data: a copy of the owner (``copy.deepcopy``) starts
    without it.
    """

    def __init__(self) -> None:
        self._for: torch.Tensor | None = None
        self._transposed: torch.Tensor | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> SparseProduct:
        return SparseProduct()

    def mm(self, matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``matrix @ dense``; its gradient with respect to ``dense`` is ``matrixᵀ @ grad``."""
        needs_grad = dense.requires_grad and torch.is_grad_enabled()
        if not needs_grad or matrix.layout != torch.sparse_csr:
            plain: torch.Tensor = torch.sparse.mm(matrix, dense)
            return plain
        if self._for is not matrix or self._transposed is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                self._transposed = matrix.t().to_sparse_csr()
            self._for = matrix
        out: torch.Tensor = _FixedProduct.apply(  # type: ignore[no-untyped-call]
            matrix, self._transposed, dense
        )
        return out


class _FixedProduct(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, matrix: torch.Tensor, transposed: torch.Tensor, dense: torch.Tensor
    ) -> torch.Tensor:
        ctx.transposed = transposed
        product: torch.Tensor = torch.sparse.mm(matrix, dense)
        return product

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transposed, grad)


def _pack(
    rows: list[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(i) for i, _ in rows])
    idx = np.concatenate([i for i, _ in rows]) if rows else np.zeros(0, dtype=np.int64)
    w = np.concatenate([w for _, w in rows]) if rows else np.zeros(0, dtype=np.float32)
    return ptr, idx.astype(np.int64), w.astype(np.float32)
