"""Guardian Alliance: federated learning for hospital consortia.

Patient records never leave a hospital; each site trains locally and sends only model updates
to a coordinator that aggregates them. See the README for the CLI and the Python API.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
