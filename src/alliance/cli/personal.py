"""``alliance site personalise``: the hospital's personalised model, built on its own cases.

``alliance site personalise --config site.toml`` takes the newest model the hospital received,
derives its personalised model from it on ``[data] train`` (:mod:`alliance.site.personalise`),
keeps it beside the received one, records the hospital's ``[clinic] model`` choice and says
what was chosen on the validation split of the training cases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from alliance.cli.common import console, errors
from alliance.cli.deploy import ConfigOption, site_app

__all__ = ["print_personalised"]


@site_app.command("personalise")
def site_personalise(config: ConfigOption = Path("site.toml")) -> None:
    """Build the personalised model of the newest received model on this hospital's cases."""
    from alliance.core.errors import ModelError
    from alliance.data.ontology import load_ontology
    from alliance.site.config import SiteConfig
    from alliance.site.model_store import ModelStore
    from alliance.site.personalise import personalise_received, record_choice
    from alliance.store.audit import AuditLog

    with errors():
        site = SiteConfig.load(config)
        stored = ModelStore(site.state_dir).newest()
        if stored is None:
            raise ModelError(
                f"this hospital has received no model yet ({site.state_dir / 'models'} holds "
                "none); a model arrives when a study it took part in finishes"
            )
        audit = AuditLog(site.state_dir / "audit.log", actor=site.site)
        built = personalise_received(stored, site.data, ontology=load_ontology(), audit=audit)
        record_choice(site.state_dir, site.clinic_model, audit=audit)
    fit = built.fit
    setting = ", ".join(f"{k} {v:g}" for k, v in fit.setting.items())
    best = fit.validation.get(",".join(f"{k}={v:g}" for k, v in fit.setting.items()))
    base = next(iter(fit.validation.values()), None)
    console.print(
        f"study [bold]{escape(stored.study)}[/] version {stored.version}: personalised model "
        f"written to {escape(str(built.path))}",
        highlight=False,
    )
    if base is not None and best is not None:
        console.print(
            f"chosen on {fit.n_validation} of {fit.n_train} training cases held for validation: "
            f"{setting} (top-1 {base[0]:.1%} → {best[0]:.1%}, top-10 {base[1]:.1%} → "
            f"{best[1]:.1%} against the federated model)"
            + ("" if fit.personalised else "; the federated model is kept as it is"),
            highlight=False,
        )
    else:
        console.print("too few training cases to choose on: the federated model is kept")
    console.print(
        f"clinicians use the [bold]{site.clinic_model.value}[/] model ([clinic] model in "
        f"{escape(str(site.path))})",
        highlight=False,
    )


def print_personalised(m: dict[str, Any]) -> None:
    """``alliance demo``'s table: each hospital's own, federated and personalised models."""
    personal = m.get("personalised")
    if not personal:
        return
    table = Table(title="Personalised models on each hospital's held-out cases (%)")
    table.add_column(
        "Hospital",
        no_wrap=True,
        overflow="ellipsis",
        max_width=max(12, min(34, console.width - 100)),
    )
    methods = [k for k in next(iter(personal.values())) if k != "chosen"]
    heads = ["local", "fed", *methods]
    for head in heads:
        for k in ("1", "10"):
            table.add_column(f"{head}\ntop-{k}", justify="right", no_wrap=True, min_width=6)
    table.add_column("chosen\nsetting", no_wrap=True)
    table.add_column("vs best\n1 / 10", no_wrap=True)
    for s in m["sites"]:
        own, runs = m["per_site"][s["id"]], personal[s["id"]]
        cells = [own["local"], own["federated"], *(runs[name] for name in methods)]
        verdict = runs["chosen"]["verdict"]
        table.add_row(
            s["name"],
            *(_pct(c[k]) for c in cells for k in ("top1", "top10")),
            _setting(runs["chosen"]["fit"]),
            f"{_MARK[verdict['top1']]} / {_MARK[verdict['top10']]}",
        )
    console.print(table)
    console.print(
        "chosen: the first method's model, set on a validation split of the hospital's "
        "training cases (prior: strength of the case-mix correction; own: weight of the "
        "hospital's own model). vs best: against the better of local and federated, ≥ at "
        "least as good, ≈ within the 95 % Wilson interval, < below",
        highlight=False,
    )


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}"


_MARK = {"at least": "≥", "within CI": "≈", "below": "<"}
_SHORT = {"strength": "prior", "local": "own", "epochs": "epochs", "drop": "drop"}


def _setting(fit: dict[str, Any]) -> str:
    shown = [f"{_SHORT.get(k, k)} {v:g}" for k, v in fit["setting"].items() if v]
    return ", ".join(shown) or "federated"
