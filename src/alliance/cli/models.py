"""``alliance study model`` and ``alliance site models``: the model that came home.

- ``alliance study model STUDY [--version N] --out model.alliance [--force] --config
  operator.toml`` downloads a finished study's published model and its signed card, verifies the
  card (the coordinator's signature through the consortium CA, the model's SHA-256, the study's
  hash and id, the version) and only then writes the model and, beside it,
  ``model.card.json``; an existing file is kept unless ``--force``.
- ``alliance site models --config site.toml`` lists the models the hospital kept (study,
  version, when it arrived, card revision, the hospitals' evaluation headline, SHA-256 prefix).
"""

from __future__ import annotations

import json
from contextlib import closing
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from alliance.cli.common import console, errors
from alliance.cli.deploy import ConfigOption, site_app, study_app

__all__: list[str] = []


@study_app.command("model")
def study_model(
    study_id: Annotated[str, typer.Argument(help="Study id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the model file.")],
    version: Annotated[
        int | None, typer.Option("--version", min=1, help="A published version (default: newest).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
    config: ConfigOption = Path("operator.toml"),
) -> None:
    """Download a finished study's model and its card, verified, for `alliance diagnose`."""
    from alliance.coordinator.client import OperatorConfig, StudyClient

    with errors(), closing(StudyClient(OperatorConfig.load(config))) as client:
        model, card_path, card = client.download_model(study_id, out, version=version, force=force)
    console.print(
        f"study [bold]{escape(card.study)}[/] model version {card.version} (card revision "
        f"{card.revision}, {escape(card.model_sha256[:19])}…) verified and written to "
        f"{escape(str(model))}; its card: {escape(str(card_path))}",
        highlight=False,
    )
    console.print(f"{escape(_headline(card.evaluation))}", highlight=False)


def _headline(evaluation: Any) -> str:
    """The hospitals' evaluation in one line."""
    overall = evaluation.get("overall") if isinstance(evaluation, dict) else None
    pending = evaluation.get("pending", []) if isinstance(evaluation, dict) else []
    if not overall or overall.get("top1") is None:
        return "not yet evaluated by the hospitals" if pending else "no evaluation"
    head = (
        f"top-1 {overall['top1']:.1%}, top-10 {overall['top10']:.1%} "
        f"on {overall['cases']} held-out cases"
    )
    return head + (f" ({len(pending)} hospital(s) pending)" if pending else "")


@site_app.command("models")
def site_models(
    config: ConfigOption = Path("site.toml"),
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the models this hospital received and kept (newest last)."""
    from alliance.protocol.model_card import read_card
    from alliance.site.config import SiteConfig
    from alliance.site.model_store import ModelStore

    with errors():
        cfg = SiteConfig.load(config)
        rows: list[dict[str, Any]] = []
        for kept in ModelStore(cfg.state_dir).models():
            card, _ = read_card(kept.card_path.read_bytes())
            rows.append(
                {
                    "study": kept.study,
                    "version": kept.version,
                    "received": kept.received_at.isoformat(timespec="seconds"),
                    "card_revision": card.revision,
                    "evaluation": _headline(card.evaluation),
                    "model_sha256": card.model_sha256,
                    "path": str(kept.model_path),
                }
            )
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print(
            f"no model received yet in {escape(str(cfg.state_dir / 'models'))}: a model comes "
            "with the end of a finished study this hospital took part in"
        )
        return
    table = Table(title=f"Models kept by {escape(cfg.site)}")
    for col in ("Study", "Version", "Received (UTC)", "Card", "Evaluation", "SHA-256"):
        table.add_column(col, no_wrap=col != "Evaluation")
    for r in rows:
        table.add_row(
            escape(r["study"]),
            str(r["version"]),
            r["received"][:16].replace("T", " "),
            f"r{r['card_revision']}",
            escape(r["evaluation"]),
            r["model_sha256"][7:19] + "…",
        )
    console.print(table)
