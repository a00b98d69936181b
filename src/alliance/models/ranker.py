"""The rare-disease ranker: a public-knowledge prior plus parameters learned from cases.

For a case with observed vector ``x`` and excluded vector ``z`` (see
:mod:`alliance.models.features`) and the disease profile matrix ``A`` (sparse, fixed, public)::

    score(d) = s_obs · cos(x, A_d)  −  s_exc · cos(z, A_d)          knowledge prior
             + (x Q_obs + z Q_exc) · (A_d P + U_d)  +  b_d           learned from cases

- The prior alone ranks every catalogue disease, including those no site has a case of.
- ``P`` embeds phenotype terms; a disease's embedding ``A_d P`` is built from its public profile,
  so what is learned about a phenotype from one disease's cases transfers to every disease that
  shares it, and a disease seen at one hospital becomes rankable everywhere the model goes.
- ``U_d`` and ``b_d`` are per-disease corrections that only cases of ``d`` move.

Learned parameters start small, so an untrained model ranks as the prior does. Only parameters
travel between sites and the coordinator; the profile matrix is rebuilt from the ontology.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from alliance.models.features import (
    CaseBatch,
    CaseCollate,
    CaseItem,
    EncodedCases,
    PhenotypeFeatures,
    SparseProduct,
)

__all__ = ["CaseDataset", "CaseItem", "PhenotypeRanker"]


class PhenotypeRanker(nn.Module):
    """Scores every catalogue disease for a batch of cases.

    Parameters
    ----------
    features
        Vocabulary and disease profiles of the study.
    dim
        Width of the learned phenotype and disease embeddings.
    init_scale
        Standard deviation of the initial embeddings (small: start at the prior).
    seed
        Seed of the initial parameters; the same seed gives the same model.
    """

    def __init__(
        self, features: PhenotypeFeatures, *, dim: int = 32, init_scale: float = 0.01, seed: int = 0
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n_terms, n_diseases = features.n_terms, features.n_diseases
        self.dim = dim
        self.profiles = features.profiles()
        self._profile_product = SparseProduct()
        self.prior_obs = nn.Parameter(torch.tensor(20.0))
        # Starts at 0: in curated cases most excluded terms belong to the true disease's spectrum
        # (a listed feature this patient lacks), so their sign is learned, not assumed.
        self.prior_exc = nn.Parameter(torch.tensor(0.0))
        self.term_obs = nn.Parameter(torch.randn(n_terms, dim, generator=gen) * init_scale)
        self.term_exc = nn.Parameter(torch.randn(n_terms, dim, generator=gen) * init_scale)
        self.term_out = nn.Parameter(torch.randn(n_terms, dim, generator=gen) * init_scale)
        self.disease_emb = nn.Parameter(torch.zeros(n_diseases, dim))
        self.disease_bias = nn.Parameter(torch.zeros(n_diseases))

    def prior(self, observed: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        """The knowledge-prior part of the score, shape ``(batch, n_diseases)``."""
        sim_obs = torch.sparse.mm(self.profiles, observed.T).T
        sim_exc = torch.sparse.mm(self.profiles, excluded.T).T
        prior: torch.Tensor = self.prior_obs * sim_obs - self.prior_exc * sim_exc
        return prior

    def forward(self, observed: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
        """Scores (logits) of shape ``(batch, n_diseases)`` for dense case vectors."""
        case = observed @ self.term_obs + excluded @ self.term_exc
        disease = self._profile_product.mm(self.profiles, self.term_out) + self.disease_emb
        scores: torch.Tensor = self.prior(observed, excluded) + case @ disease.T + self.disease_bias
        return scores


class CaseDataset(Dataset[CaseItem]):
    """Encoded cases as a map-style dataset of sparse rows.

    Items are ``(obs_idx, obs_w, exc_idx, exc_w, label)``. A DataLoader with
    ``collate_fn=features.collate`` (one function for every dataset of the study) yields
    ``((observed, excluded), labels)``, which :func:`alliance.models.training.train_locally`
    passes to the model as ``model(observed, excluded)``.
    """

    def __init__(self, encoded: EncodedCases) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def batcher(self, collate_fn: object) -> Callable[[torch.Tensor], CaseBatch] | None:
        """Batches by index, as ``collate_fn`` builds them from items, for the study's
        :class:`~alliance.models.features.CaseCollate`; ``None`` for another collate_fn."""
        return collate_fn.gatherer(self.encoded) if isinstance(collate_fn, CaseCollate) else None

    def __getitem__(self, i: int) -> CaseItem:
        e = self.encoded
        lo, hi = e.obs_ptr[i], e.obs_ptr[i + 1]
        xlo, xhi = e.exc_ptr[i], e.exc_ptr[i + 1]
        return (
            e.obs_idx[lo:hi],
            e.obs_w[lo:hi],
            e.exc_idx[xlo:xhi],
            e.exc_w[xlo:xhi],
            int(e.labels[i]),
        )
