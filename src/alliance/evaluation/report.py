"""Self-contained HTML report of a federated run, for consortium data scientists and hospital staff.

The input is the mapping the federated demo writes to ``metrics.json`` (schema
``alliance.demo.metrics/1``). The output is a single HTML page with inline CSS and the plots
embedded as base64 PNG data URIs: it references nothing outside itself, so it opens offline in a
hospital. Optional parts of the metrics (``local_on_union``, ``single_site_diseases``,
``unseen_diseases``, ``run.privacy``, ``run.attribution``, the runs with hospitals on files
``offline`` and ``offline_async``) are shown only when present.

This module reads and checks the metrics and assembles the page; :mod:`alliance.evaluation.plots`
draws the plots from the numbers read here.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from alliance.core.errors import DataError
from alliance.core.files import write_atomically
from alliance.evaluation.plots import Image, rounds_plot, sites_plot, union_plot

__all__ = ["SCHEMA", "render_report", "write_report"]

SCHEMA = "alliance.demo.metrics/1"

_MODELS = {
    "prior": "Prior (no hospital data)",
    "local_best": "Best single hospital",
    "local_elsewhere": "Other hospitals' own models (mean)",
    "federated": "Federated",
    "pooled": "Pooled (all data in one place)",
}


@dataclass(frozen=True)
class _SiteView:
    """One hospital's facts and scores, as the plots and tables need them."""

    id: str
    name: str
    city: str
    n_train: int | None
    n_test: int | None
    local: Mapping[str, Any] | None
    federated: Mapping[str, Any] | None
    pooled: Mapping[str, Any] | None
    on_union: Mapping[str, Any] | None


def render_report(metrics: Mapping[str, Any]) -> str:
    """Render the HTML report of a federated run.

    Parameters
    ----------
    metrics
        The parsed ``metrics.json`` of a run, schema ``alliance.demo.metrics/1``.

    Returns
    -------
    str
        A complete HTML document with no external resources.

    Raises
    ------
    DataError
        If the schema is another one, or a required section or number is missing or malformed.
    """
    if metrics.get("schema") != SCHEMA:
        raise DataError(f"metrics schema is {metrics.get('schema')!r}; expected {SCHEMA!r}")
    run = _mapping(metrics, "run")
    overall = _mapping(metrics, "overall")
    sites = _site_views(metrics)
    best_id = (_optional_mapping(overall, "local_best", "overall") or {}).get("site")
    names = {site.id: site.name for site in sites}
    best_name = None if best_id is None else names.get(str(best_id), str(best_id))
    rounds = _rounds(metrics)
    attribution = run.get("attribution")
    template = _environment().get_template("report.html")
    return template.render(
        schema=SCHEMA,
        facts=_run_facts(run),
        attribution=str(attribution) if attribution else None,
        headline=_headline(overall, best_name),
        overall_rows=_model_rows(overall, "overall", best_name),
        privacy_rows=_privacy_rows(metrics, overall),
        data_rows=_data_rows(metrics, names),
        offline=_offline(metrics, overall, names),
        offline_async=_offline_async(metrics, overall, names),
        sites=sites,
        round_rows=[_round_row(r) for r in rounds],
        subsets=_subsets(metrics),
        rounds_png=_rounds_image(rounds, overall) if rounds else None,
        sites_png=_sites_image(sites) if sites else None,
        union_png=_union_image(sites, overall) if _has_union(sites) else None,
    )


def write_report(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """Render the report and write it atomically (temporary file, then rename) to ``path``.

    Parameters
    ----------
    metrics
        The parsed ``metrics.json`` of a run, schema ``alliance.demo.metrics/1``.
    path
        Where to write the HTML file; missing parent folders are created.

    Returns
    -------
    Path
        The path written.
    """
    target = Path(path)
    html = render_report(metrics)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A report is meant to be shared: readable by all, unlike the private default.
    write_atomically(target, html.encode("utf-8"), permissions=0o644)
    return target


# --- reading the metrics -------------------------------------------------------------------------


def _mapping(parent: Mapping[str, Any], key: str, where: str = "metrics") -> Mapping[str, Any]:
    value = parent.get(key)
    if not isinstance(value, Mapping):
        raise DataError(f"{where}.{key} is missing or not an object")
    return value


def _optional_mapping(parent: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any] | None:
    value = parent.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise DataError(f"{where}.{key} is not an object")
    return value


def _number(scores: Mapping[str, Any] | None, key: str) -> float | None:
    """A number from ``scores``, ``None`` when absent; anything else non-numeric is an error."""
    value = None if scores is None else scores.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"{key} is {value!r}; expected a finite number")
    return float(value)


def _count(record: Mapping[str, Any], key: str) -> int | None:
    number = _number(record, key)
    return None if number is None else int(number)


def _site_views(metrics: Mapping[str, Any]) -> list[_SiteView]:
    """Hospitals, largest training set first (ties by name), with their scores attached."""
    sites = metrics.get("sites")
    if not isinstance(sites, Sequence) or isinstance(sites, str):
        raise DataError("metrics.sites is missing or not a list")
    per_site = _mapping(metrics, "per_site")
    on_union = _optional_mapping(metrics, "local_on_union", "metrics") or {}
    views = []
    for site in sites:
        if not isinstance(site, Mapping) or "id" not in site:
            raise DataError(f"metrics.sites entry {site!r} is not an object with an id")
        sid = str(site["id"])
        scores = _optional_mapping(per_site, sid, "metrics.per_site") or {}
        views.append(
            _SiteView(
                id=sid,
                name=str(site.get("name") or sid),
                city=str(site.get("city") or ""),
                n_train=_count(site, "n_train"),
                n_test=_count(site, "n_test"),
                local=_optional_mapping(scores, "local", f"metrics.per_site.{sid}"),
                federated=_optional_mapping(scores, "federated", f"metrics.per_site.{sid}"),
                pooled=_optional_mapping(scores, "pooled", f"metrics.per_site.{sid}"),
                on_union=_optional_mapping(on_union, sid, "metrics.local_on_union"),
            )
        )
    return sorted(views, key=lambda v: (-(v.n_train or 0), v.name))


def _rounds(metrics: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    rounds = metrics.get("rounds") or []
    if not isinstance(rounds, Sequence) or not all(isinstance(r, Mapping) for r in rounds):
        raise DataError("metrics.rounds is not a list of objects")
    return sorted(rounds, key=lambda r: _number(r, "round") or 0.0)


def _has_union(sites: Sequence[_SiteView]) -> bool:
    return any(site.on_union is not None for site in sites)


# --- text for the page ---------------------------------------------------------------------------


def _percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.1f}%"


def _cases(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _runtime(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"


def _privacy(privacy: Any) -> str:
    if privacy is None:
        return "none recorded"
    if isinstance(privacy, Mapping):
        return ", ".join(f"{key}: {value}" for key, value in privacy.items())
    return str(privacy)


def _run_facts(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    return [
        ("Data", str(run.get("data") or "—")),
        ("Seed", str(run.get("seed", "—"))),
        ("Rounds", str(run.get("rounds", "—"))),
        ("Strategy", str(run.get("strategy") or "—")),
        ("HPO version", str(run.get("hpo_version") or "—")),
        ("Candidate diseases", _cases(_count(run, "n_diseases"))),
        ("Runtime", _runtime(_number(run, "seconds"))),
        ("Differential privacy", _privacy(run.get("privacy"))),
    ]


def _gap(value: float, reference: float) -> str:
    points = round((value - reference) * 100, 1)
    if points == 0:
        return "level with"
    return f"{abs(points):.1f} points {'above' if points > 0 else 'below'}"


def _headline(overall: Mapping[str, Any], best_name: str | None) -> dict[str, str] | None:
    """Pieces of the headline sentence; the template puts them together."""
    federated = _number(_optional_mapping(overall, "federated", "overall"), "top10")
    if federated is None:
        return None
    local = _number(_optional_mapping(overall, "local_best", "overall"), "top10")
    pooled = _number(_optional_mapping(overall, "pooled", "overall"), "top10")
    parts = {"federated": _percent(federated)}
    if local is not None:
        parts |= {"local": _percent(local), "local_gap": _gap(federated, local)}
        parts["local_name"] = best_name or "unnamed"
    if pooled is not None:
        parts |= {"pooled": _percent(pooled), "pooled_gap": _gap(federated, pooled)}
    return parts


def _score_row(label: str, scores: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {
        "label": label,
        "key": key,
        "cells": [_percent(_number(scores, k)) for k in ("top1", "top3", "top10")],
        "n": _cases(_count(scores, "n")),
    }


def _privacy_rows(metrics: Mapping[str, Any], overall: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The federated model without DP, then one row per private run (``--epsilon``)."""
    runs = metrics.get("privacy")
    if not isinstance(runs, list) or not runs:
        return []
    rows = []
    federated = _optional_mapping(overall, "federated", "overall")
    if federated is not None:
        rows.append({**_score_row("No differential privacy", federated, "federated"), "spent": "—"})
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping):
            raise DataError(f"metrics privacy[{i}] must be an object")
        scores = _mapping(run, "overall", f"privacy[{i}]")
        target = _number(run, "target_epsilon")
        delta = _number(run, "delta")
        spent = run.get("epsilon_spent") or {}
        worst = max((float(v) for v in spent.values()), default=None) if spent else None
        label = f"ε = {target:g}, δ = {delta:g}" if target is not None and delta else "private"
        rows.append(
            {
                **_score_row(label, scores, "private"),
                "spent": "—" if worst is None else f"{worst:.2f}",
            }
        )
    return rows


def _offline(
    metrics: Mapping[str, Any], overall: Mapping[str, Any], names: Mapping[str, str]
) -> dict[str, Any] | None:
    """The run with hospitals on files next to the all-online one, when there was one."""
    run = _optional_mapping(metrics, "offline", "metrics")
    if run is None:
        return None
    sites = run.get("sites")
    if not isinstance(sites, list) or not sites:
        raise DataError("metrics offline.sites must be a non-empty list")
    online = _mapping(overall, "federated", "overall")
    mixed = _mapping(run, "overall", "offline")
    sizes = _optional_mapping(run, "bundle_bytes", "offline") or {}
    return {
        "sites": ", ".join(names.get(str(s), str(s)) for s in sites),
        "rows": [
            _score_row("All hospitals online", online, "federated"),
            _score_row(f"{len(sites)} hospitals on files", mixed, "offline"),
        ],
        "same": bool(run.get("same_weights_as_online")),
        "megabytes": f"{sum(float(v) for v in sizes.values()) / 1e6:,.1f}",
    }


def _offline_async(
    metrics: Mapping[str, Any], overall: Mapping[str, Any], names: Mapping[str, str]
) -> dict[str, Any] | None:
    """The asynchronous run with hospitals on files next to the all-online one, and each late
    reply: when it counted, how late, and how much."""
    run = _optional_mapping(metrics, "offline_async", "metrics")
    if run is None:
        return None
    sites = run.get("sites")
    if not isinstance(sites, list) or not sites:
        raise DataError("metrics offline_async.sites must be a non-empty list")
    late = run.get("late_updates") or []
    if not isinstance(late, list) or not all(isinstance(u, Mapping) for u in late):
        raise DataError("metrics offline_async.late_updates must be a list of objects")
    exponent = _number(run, "staleness_exponent")
    return {
        "sites": ", ".join(names.get(str(s), str(s)) for s in sites),
        "rows": [
            _score_row(
                "All hospitals online (synchronous)", _mapping(overall, "federated"), "federated"
            ),
            _score_row(
                f"{len(sites)} hospitals on files, asynchronous",
                _mapping(run, "overall", "offline_async"),
                "offline",
            ),
        ],
        "late_rows": [
            [
                names.get(str(u.get("site")), str(u.get("site"))),
                _cases(_count(u, "model_version")),
                _cases(_count(u, "staleness")),
                "—" if _number(u, "discount") is None else f"×{_number(u, 'discount'):.2f}",
                _percent(_number(u, "share")),
            ]
            for u in late
        ],
        "buffer": _cases(_count(run, "buffer")),
        "exponent": "—" if exponent is None else f"{exponent:g}",
        "delay": _cases(_count(run, "courier_delay")),
        "versions": _cases(_count(run, "versions")),
    }


def _data_rows(metrics: Mapping[str, Any], names: Mapping[str, str]) -> list[list[str]]:
    """How each hospital kept its cases (``site_files``), when the run recorded it."""
    entries = metrics.get("site_files") or []
    if not isinstance(entries, list):
        raise DataError("metrics site_files must be a list")
    rows: list[list[str]] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise DataError(f"metrics site_files[{i}] must be an object")
        read = _mapping(entry, "cases_read", f"site_files[{i}]")
        site = str(entry.get("site", "?"))
        rows.append(
            [
                names.get(site, site),
                str(entry.get("format", "?")),
                _cases(_count(read, "train")),
                _cases(_count(read, "test")),
                _cases(_count(entry, "rejected")),
            ]
        )
    return rows


def _round_row(entry: Mapping[str, Any]) -> list[str]:
    """Round, top-1/3/10, training loss (absent in some runs) and time."""
    loss = _number(entry, "train_loss")
    scores = [_percent(_number(entry, key)) for key in ("top1", "top3", "top10")]
    return [str(entry.get("round", "—")), *scores, "—" if loss is None else f"{loss:.3f}",
            _runtime(_number(entry, "seconds"))]  # fmt: skip


def _model_rows(
    section: Mapping[str, Any], where: str, best_name: str | None = None
) -> list[dict[str, Any]]:
    """One table row per model scored in ``section``: known models first, then any others."""
    keys = [key for key in _MODELS if key in section]
    keys += [key for key, value in section.items() if key not in _MODELS and _is_scores(value)]
    rows = []
    for key in keys:
        scores = _optional_mapping(section, key, where)
        if scores is None:
            continue
        label = _MODELS.get(key) or key.replace("_", " ").capitalize()
        if key == "local_best" and best_name:
            label = f"{label} ({best_name})"
        rows.append(_score_row(label, scores, key))
    return rows


def _is_scores(value: Any) -> bool:
    return isinstance(value, Mapping) and any(k in value for k in ("top1", "top3", "top10"))


def _subsets(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    titles = (
        ("single_site_diseases", "Diseases seen at only one hospital"),
        ("unseen_diseases", "Diseases no hospital has trained on"),
    )
    subsets = []
    for key, title in titles:
        subset = _optional_mapping(metrics, key, "metrics")
        if subset is None:
            continue
        rows = _model_rows(subset, key)
        description = str(subset.get("description") or "").strip()
        if description and description[-1] not in ".!?":
            description += "."
        subsets.append({"title": title, "description": description, "rows": rows})
    return subsets


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("alliance.evaluation", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["percent"] = lambda scores, key: _percent(_number(scores, key))
    env.filters["cases"] = _cases
    return env


# --- plots ---------------------------------------------------------------------------------------


def _pct(scores: Mapping[str, Any] | None, key: str = "top10") -> float:
    """Percentage for a plot; NaN (drawn as a gap) when the score is absent."""
    value = _number(scores, key)
    return math.nan if value is None else value * 100


def _rounds_image(rounds: Sequence[Mapping[str, Any]], overall: Mapping[str, Any]) -> Image:
    numbers = [_number(r, "round") for r in rounds]
    return rounds_plot(
        [float(i + 1) if n is None else n for i, n in enumerate(numbers)],
        top10=[_pct(r, "top10") for r in rounds],
        top3=[_pct(r, "top3") for r in rounds],
        top1=[_pct(r, "top1") for r in rounds],
        pooled=_pct(_optional_mapping(overall, "pooled", "overall")),
        best_local=_pct(_optional_mapping(overall, "local_best", "overall")),
    )


def _sites_image(sites: Sequence[_SiteView]) -> Image:
    return sites_plot(
        [site.name for site in sites],
        [site.n_test for site in sites],
        local=[_pct(site.local) for site in sites],
        federated=[_pct(site.federated) for site in sites],
        pooled=[_pct(site.pooled) for site in sites],
    )


def _union_image(sites: Sequence[_SiteView], overall: Mapping[str, Any]) -> Image:
    shown = [site for site in sites if site.on_union is not None]
    return union_plot(
        [site.name for site in shown],
        [_pct(site.on_union) for site in shown],
        federated=_pct(_optional_mapping(overall, "federated", "overall")),
    )
