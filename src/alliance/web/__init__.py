"""Pages served to people: the clinician's page at a hospital (:mod:`alliance.web.clinic`,
served by :mod:`alliance.web.clinic_app`) and the consortium dashboard served by the
coordinator (:mod:`alliance.web.dashboard_app`; as one static file for ``alliance demo``,
:mod:`alliance.web.dashboard_static`), with their assets shipped in the package and nothing
fetched from any other host."""

from alliance.web.clinic import Clinic, ClinicModel, TermMatch, load_clinic_model
from alliance.web.clinic_app import create_clinic_app, serve_clinic
from alliance.web.dashboard_app import add_dashboard
from alliance.web.dashboard_static import demo_document, write_static_dashboard

__all__ = [
    "Clinic",
    "ClinicModel",
    "TermMatch",
    "add_dashboard",
    "create_clinic_app",
    "demo_document",
    "load_clinic_model",
    "serve_clinic",
    "write_static_dashboard",
]
