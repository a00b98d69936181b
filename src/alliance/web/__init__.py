"""Pages served to people: the clinician's page at a hospital (:mod:`alliance.web.clinic`,
served by :mod:`alliance.web.clinic_app`), with its assets shipped in the package and nothing
fetched from any other host."""

from alliance.web.clinic import Clinic, ClinicModel, TermMatch, load_clinic_model
from alliance.web.clinic_app import create_clinic_app, serve_clinic

__all__ = [
    "Clinic",
    "ClinicModel",
    "TermMatch",
    "create_clinic_app",
    "load_clinic_model",
    "serve_clinic",
]
