"""Persistence: trained model files (coordinator state follows with the networked deployment)."""

from alliance.store.modelfile import FORMAT, LoadedModel, load_model, save_model

__all__ = ["FORMAT", "LoadedModel", "load_model", "save_model"]
