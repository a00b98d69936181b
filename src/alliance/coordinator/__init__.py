"""The coordinator: rounds, quorum, model versions."""

from alliance.coordinator.rounds import Coordinator, Rejection, RoundRecord

__all__ = ["Coordinator", "Rejection", "RoundRecord"]
