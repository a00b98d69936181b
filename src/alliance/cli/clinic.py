"""``alliance site clinic``: the clinician's page, served at the hospital.

- ``alliance site clinic --config site.toml``: the newest model the hospital received;
- ``alliance site clinic --model model.alliance``: a model file (a researcher with the demo's).

The page and its routes are :mod:`alliance.web.clinic_app`'s. It binds to 127.0.0.1 unless
``--host`` says otherwise: exposing it on the hospital's network is the hospital's choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from alliance.cli.common import console, errors, state
from alliance.cli.deploy import site_app
from alliance.core.logging import configure_logging

__all__: list[str] = []


@site_app.command("clinic")
def site_clinic(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="The hospital's site.toml: serve the newest model it received."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="A model file instead (e.g. alliance-demo/model.alliance)."),
    ] = None,
    host: Annotated[
        str,
        typer.Option(
            help="Address to listen on. The default serves this machine only; a hospital "
            "exposes the page on its own network with --host 0.0.0.0 (or one of its "
            "addresses), at its own choice."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8765,
) -> None:
    """Serve the clinician's page: search findings in English or Chinese, get the differential.

    Nothing typed on the page leaves this machine or is logged, and the page loads nothing
    from any other host, so it works air-gapped.
    """
    from alliance.web.clinic import Clinic, load_clinic_model
    from alliance.web.clinic_app import serve_clinic

    configure_logging(verbose=state["verbose"], service=True)
    with errors():
        clinic = Clinic(load_clinic_model(config=config, model=model))

        def ready(bound: int) -> None:
            shown = f"[{host}]" if ":" in host else host
            console.print(
                f"clinic serving {escape(clinic.model.source)} at "
                f"http://{escape(shown)}:{bound}/ (research use, not a medical device); "
                "Ctrl-C stops it",
                highlight=False,
            )

        serve_clinic(clinic, host=host, port=port, ready=ready)
