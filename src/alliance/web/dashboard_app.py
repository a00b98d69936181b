"""The consortium dashboard's page, served by the coordinator beside its API.

==================================  ===================================================
``GET /dashboard``                  the page (``static/dashboard.html``)
``GET /dashboard/static/{name}``    its script and style, and the vendored chart library
``GET /v1/dashboard``               its data (:mod:`alliance.transport.http`), polled
==================================  ===================================================

:func:`add_dashboard` adds the page's routes to the coordinator's app
(:func:`alliance.transport.http.create_app`'s ``pages``), so the page shares the API's
process, TLS and identities: a browser presents a consortium certificate like any client,
an operator's or a hospital's, and the data route cuts what a hospital sees
(:func:`alliance.coordinator.visibility.site_dashboard`). The page needs a certificate too,
though it holds no figure, so that nothing at all is served to an unknown caller.

Nothing is fetched from another host: the chart library (uPlot, MIT licence, version in
``static/NOTICE``) ships in the package, and every response of the page carries a
Content-Security-Policy that lets it load and call only its own origin.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from alliance.transport.http import CoordinatorEndpoints, error_responses, identify_caller

__all__ = ["DASHBOARD_ASSETS", "add_dashboard", "dashboard_asset"]

#: Files the page loads, with their media types.
DASHBOARD_ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uplot.min.js": "text/javascript; charset=utf-8",
    "uplot.min.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_HTML = "text/html; charset=utf-8"


def dashboard_asset(name: str) -> str:
    """The text of a packaged file of the page (``dashboard.html`` or one of the assets)."""
    return resources.files("alliance.web").joinpath("static", name).read_text(encoding="utf-8")


def add_dashboard(app: FastAPI, service: CoordinatorEndpoints) -> None:
    """Add the dashboard's page and assets to the coordinator's ``app``."""
    page = dashboard_asset("dashboard.html")
    assets = {name: dashboard_asset(name) for name in DASHBOARD_ASSETS}

    @app.get(
        "/dashboard",
        summary="The consortium dashboard (a page; its data is /v1/dashboard)",
        response_class=Response,
        responses={200: {"content": {_HTML: {}}}, **error_responses(400, 403)},
    )
    async def dashboard_page(request: Request) -> Response:
        await identify_caller(service, request, "operator", "site")
        return Response(page, media_type=_HTML, headers=HEADERS)

    @app.get(
        "/dashboard/static/{name}",
        summary="A script or style of the dashboard, shipped in the package",
        response_class=Response,
        responses={
            200: {"content": {"text/javascript": {}, "text/css": {}}},
            **error_responses(400, 403, 404),
        },
    )
    async def dashboard_static(request: Request, name: str) -> Response:
        await identify_caller(service, request, "operator", "site")
        if name not in assets:
            return JSONResponse(
                {"error": "NotFoundError", "detail": f"the dashboard has no file {name!r}"},
                status_code=404,
                headers=HEADERS,
            )
        return Response(assets[name], media_type=DASHBOARD_ASSETS[name], headers=HEADERS)
