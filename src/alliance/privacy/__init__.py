"""Differential privacy at the hospital: the patient is the unit of privacy.

- :mod:`~alliance.privacy.noise`: Gaussian noise and Poisson sampling from a CSPRNG;
- :mod:`~alliance.privacy.clipping`: per-patient gradient clipping, with a fast exact
  (ghost-clipping) path for common layers and generic ``torch.func`` and loop fallbacks;
- :mod:`~alliance.privacy.dpsgd`: DP-SGD (Poisson sampling, per-patient clipping, noise);
- :mod:`~alliance.privacy.accountant`: ε of sampled-Gaussian compositions (PLD reported, RDP
  cross-check), noise calibration to a target ε;
- :mod:`~alliance.privacy.ledger`: the hospital's persistent record of every release and its
  budget;
- :mod:`~alliance.privacy.anchor`: the sidecar file that keeps a deleted or replaced ledger
  from silently resetting that record.

The site (:mod:`alliance.site.privatize`) puts them together; the coordinator never sees the
ledger.
"""

from alliance.privacy.accountant import (
    CROSS_CHECK_TOLERANCE,
    PLD_DISCRETIZATION,
    RDP_ORDERS,
    Epsilon,
    EpsilonSource,
    SampledGaussian,
    analytic_gaussian_epsilon,
    calibrate_noise,
    epsilon,
    epsilon_pld,
    epsilon_rdp,
)
from alliance.privacy.clipping import ClipMethod, per_sample_clipped_sum
from alliance.privacy.dpsgd import DPSGDConfig, PrivateResult, train_privately
from alliance.privacy.ledger import (
    BudgetCheck,
    Charge,
    PrivacyLedger,
    ReleaseKind,
    StudySpend,
)
from alliance.privacy.noise import SecureGaussian

__all__ = [
    "CROSS_CHECK_TOLERANCE",
    "PLD_DISCRETIZATION",
    "RDP_ORDERS",
    "BudgetCheck",
    "Charge",
    "ClipMethod",
    "DPSGDConfig",
    "Epsilon",
    "EpsilonSource",
    "PrivacyLedger",
    "PrivateResult",
    "ReleaseKind",
    "SampledGaussian",
    "SecureGaussian",
    "StudySpend",
    "analytic_gaussian_epsilon",
    "calibrate_noise",
    "epsilon",
    "epsilon_pld",
    "epsilon_rdp",
    "per_sample_clipped_sum",
    "train_privately",
]
