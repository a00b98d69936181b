"""Differential privacy at the hospital: the patient is the unit of privacy.

- :mod:`~alliance.privacy.noise`: Gaussian noise and Poisson sampling from a CSPRNG;
- :mod:`~alliance.privacy.dpsgd`: DP-SGD (per-patient clipping, Poisson sampling, noise) with
  a fast exact clipping path and a generic ``torch.func`` one;
- :mod:`~alliance.privacy.accountant`: ε of sampled-Gaussian compositions (PLD reported, RDP
  cross-check), noise calibration to a target ε;
- :mod:`~alliance.privacy.ledger`: the hospital's persistent record of every release and its
  budget.

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
from alliance.privacy.dpsgd import (
    ClipMethod,
    DPSGDConfig,
    PrivateResult,
    per_sample_clipped_sum,
    train_privately,
)
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
