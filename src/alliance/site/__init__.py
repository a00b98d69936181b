"""The hospital side of a federation: the site that trains, and the hospital core around it
(policy, cohort, audit) that the agent and the simulation share."""

from alliance.site.agent import Site
from alliance.site.hospital import ApprovedHashes, Cohort, Hospital
from alliance.site.outcome import Action, Outcome, Refused
from alliance.site.simulated import ApprovedSpecs, simulated_hospital

__all__ = [
    "Action",
    "ApprovedHashes",
    "ApprovedSpecs",
    "Cohort",
    "Hospital",
    "Outcome",
    "Refused",
    "Site",
    "simulated_hospital",
]
