"""``alliance diagnose`` and ``alliance evaluate``: the model at work where the patient is.

Both take the model as ``--config site.toml`` (the newest model the hospital received, from its
model store) or ``--model FILE``, and say which model they used with its "research use" notice
(:mod:`alliance.site.received`). ``diagnose`` takes findings as HPO ids or term names
(:mod:`alliance.data.terms`) and shows, for each candidate, the findings for and against it.
``evaluate --config`` reads the hospital's configured data as its agent does
(:mod:`alliance.site.local_evaluation`); ``evaluate --cases FILE`` reads one file by its name.
The commands are registered on the root app by :mod:`alliance.cli.app`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from alliance.cli import common
from alliance.core.errors import ConfigError
from alliance.site.local_evaluation import CaseChoice

if TYPE_CHECKING:
    from alliance.data.ontology import Ontology
    from alliance.models.diagnosis import Candidate
    from alliance.site.received import ModelInUse

__all__ = ["diagnose", "evaluate"]

ModelOption = Annotated[
    Path | None,
    typer.Option(help="A model file (model.alliance), instead of --config's received model."),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="The hospital's site.toml: use the newest model it received (and, for evaluate, "
        "its configured cases).",
    ),
]
_SHOWN_TERMS = 3  # findings listed per cell of the differential; the rest are counted


def _pct(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}"


def _announce(used: ModelInUse, *, to_stderr: bool) -> None:
    """Which model answers, and its notice (on stderr when stdout is JSON)."""
    out = common.err if to_stderr else common.console
    out.print(f"[bold]Model:[/] {escape(used.describe())}", highlight=False)
    out.print(f"[yellow]{escape(used.notice)}[/]", highlight=False)


def _model(model: Path | None, config: Path | None) -> ModelInUse:
    from alliance.site.config import SiteConfig
    from alliance.site.received import model_in_use

    if config is None:
        return model_in_use(model=model, state_dir=None)
    site = SiteConfig.load(config)
    return model_in_use(model=model, state_dir=site.state_dir, choice=site.clinic_model)


def _terms(terms: Sequence[str], onto: Ontology, absent: frozenset[str] = frozenset()) -> str:
    names = [onto.name(t) + (" (absent)" if t in absent else "") for t in terms[:_SHOWN_TERMS]]
    more = len(terms) - _SHOWN_TERMS
    return "; ".join(names) + (f" (+{more} more)" if more > 0 else "") or "—"


def _differential(candidates: Sequence[Candidate], onto: Ontology, excluded: set[str]) -> Table:
    table = Table(title="Differential diagnosis", show_lines=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("Disease", ratio=3, min_width=16)
    table.add_column("Prob.", justify="right", no_wrap=True)
    table.add_column("Supporting findings", ratio=3, min_width=12)
    table.add_column("Against", ratio=2, min_width=12)
    absent = frozenset(excluded)
    for c in candidates:
        table.add_row(
            str(c.rank),
            f"{escape(c.name)}\n[dim]{escape(c.disease_id)}[/]",
            f"{c.probability:.3f}",
            escape(_terms(c.supporting, onto)),
            escape(_terms(c.against, onto, absent)),
        )
    return table


def diagnose(
    hpo: Annotated[
        str,
        typer.Option(
            help="Observed findings, comma-separated: HPO ids or term names, mixed "
            '("seizure, microcephaly, HP:0001263"). A name with a comma: give its id.'
        ),
    ],
    excluded: Annotated[
        str, typer.Option(help="Findings ruled out, comma-separated ids or names.")
    ] = "",
    model: ModelOption = None,
    config: ConfigOption = None,
    top: Annotated[int, typer.Option(min=1, max=100, help="How many candidates.")] = 10,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the candidates as JSON (the model line on stderr)."),
    ] = False,
) -> None:
    """A ranked differential diagnosis for one patient, with the findings for and against each."""
    from alliance.data.terms import TermResolver, split_terms
    from alliance.models.diagnosis import diagnose as rank

    with common.errors():
        used = _model(model, config)
        features = used.loaded.features
        resolver = TermResolver(features.ontology)
        observed = resolver.resolve_all(split_terms(hpo), field="--hpo")
        absent = resolver.resolve_all(split_terms(excluded), field="--excluded")
        candidates = rank(
            used.loaded.model,
            features,
            [t.hpo_id for t in observed],
            [t.hpo_id for t in absent],
            top=top,
        )
    _announce(used, to_stderr=as_json)
    if as_json:
        print(json.dumps([c.__dict__ for c in candidates], default=list))
        return
    shown = ", ".join(f"{t.name} ({t.hpo_id})" for t in observed)
    common.console.print(f"[bold]Findings:[/] {escape(shown)}", highlight=False)
    if absent:
        ruled_out = ", ".join(f"{t.name} ({t.hpo_id})" for t in absent)
        common.console.print(f"[bold]Ruled out:[/] {escape(ruled_out)}", highlight=False)
    common.console.print(_differential(candidates, features.ontology, {t.hpo_id for t in absent}))


def evaluate(
    model: ModelOption = None,
    cases: Annotated[
        Path | None,
        typer.Option(
            help="A file or folder of cases, read by its name (phenopackets, FHIR, JSON-lines, a "
            "table with HPO codes), instead of --config's configured cases."
        ),
    ] = None,
    config: ConfigOption = None,
    on: Annotated[
        CaseChoice | None,
        typer.Option(
            help="With --config: the held-out cases (\\[data] test, the default: the model was "
            "trained on the others) or all the hospital's cases."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Rank diseases for a hospital's cases and print top-1/3/10 accuracy, and what was refused."""
    with common.errors():
        if cases is not None and config is not None:
            raise ConfigError(
                "give --cases FILE or --config site.toml, not both: --config reads the "
                "hospital's configured cases (its adapters and mapping table)"
            )
        if cases is None and config is None:
            raise ConfigError(
                "give the cases: --config site.toml (the hospital's configured cases) or "
                "--cases FILE"
            )
        if cases is not None:
            if on is not None:
                raise ConfigError(
                    "--on chooses among --config's cases; it does not apply to --cases"
                )
            used, report, shown = _evaluate_file(model, cases)
        else:
            assert config is not None
            used, report, shown = _evaluate_config(model, config, on or CaseChoice.HELD_OUT)
    if as_json:
        print(json.dumps({"model": used.as_dict(), **report}))
        return
    _announce(used, to_stderr=False)
    issues: list[str] = report["issues"]
    for line in issues[:20]:
        common.err.print(f"[yellow]warning:[/] {escape(line)}", highlight=False)
    if len(issues) > 20:
        common.err.print(f"[yellow]… and {len(issues) - 20} more issues[/] (use --json to see all)")
    common.console.print(escape(shown), highlight=False)
    why = ", ".join(f"{kind} {n}" for kind, n in report["rejected_by_reason"].items())
    common.console.print(
        f"{report['n']} cases ranked ({report['rejected']} rejected"
        + (f": {why}" if why else "")
        + f"): top-1 {_pct(report['top1'])}%, top-3 {_pct(report['top3'])}%, "
        f"top-10 {_pct(report['top10'])}%",
        highlight=False,
    )


def _evaluate_file(model: Path | None, cases: Path) -> tuple[ModelInUse, dict[str, Any], str]:
    from collections import Counter

    from alliance.data.loading import load_cases
    from alliance.evaluation.metrics import top_k
    from alliance.evaluation.ranking import rank_dataset
    from alliance.models.ranker import CaseDataset
    from alliance.site.received import model_in_use

    if model is None:
        raise ConfigError("--cases needs --model FILE (or use --config site.toml alone)")
    used = model_in_use(model=model, state_dir=None)
    features = used.loaded.features
    result = load_cases(cases, ontology=features.ontology, catalogue=features.catalogue)
    data = CaseDataset(features.encode(result.cases))
    scores = top_k(rank_dataset(used.loaded.model, data, collate_fn=features.collate))
    refused = Counter(i.kind.value for i in result.issues if i.rejected)
    report = {
        "cases": str(cases),
        **scores.as_dict(),
        "rejected": result.rejected,
        "rejected_by_reason": dict(refused.most_common()),
        "issues": [str(i) for i in result.issues],
    }
    return used, report, f"Cases: every case of {cases}"


def _evaluate_config(
    model: Path | None, config: Path, on: CaseChoice
) -> tuple[ModelInUse, dict[str, Any], str]:
    from alliance.data.loading import DataConfig
    from alliance.site.config import SiteConfig
    from alliance.site.local_evaluation import evaluate_local
    from alliance.site.received import model_in_use

    if model is not None:
        # A given model file needs only the config's [data] (a site.toml or a data.toml).
        data = DataConfig.load(config)
        used = model_in_use(model=model, state_dir=None)
    else:
        site = SiteConfig.load(config)
        data = site.data
        used = model_in_use(model=None, state_dir=site.state_dir, choice=site.clinic_model)
    result = evaluate_local(data, used.loaded, cases=on, where=str(config))
    report = result.as_dict()
    where = ", ".join(result.sources)
    shown = (
        f"Cases: the held-out cases of {config} ([data] test: {where})"
        if on is CaseChoice.HELD_OUT
        else f"Cases: all cases of {config} ({where}), training cases included: the figures "
        "flatter a model this hospital helped train"
    )
    return used, report, shown
