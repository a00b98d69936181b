"""Whole federations in one process, over the same site and coordinator code."""

from alliance.sim.simulation import Simulation, SimulationResult, as_dataset

__all__ = ["Simulation", "SimulationResult", "as_dataset"]
