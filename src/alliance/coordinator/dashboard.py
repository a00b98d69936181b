"""What the consortium dashboard shows, assembled from what the coordinator already knows.

One JSON document (``GET /v1/dashboard``) feeds every view of the page; the browser polls it.

- ``network``: the coordinator and every hospital it knows of (named in a study file, asked
  into a round, seen polling, configured on files, or named on a published model card). A
  node's ``state`` is, first that applies: ``revoked`` (the certificate it last connected
  with is on the current CRL), ``refused`` (it declined the open round; ``reason`` says why),
  ``files`` (it exchanges bundles; ``last_seen`` is its last accepted message, if any),
  ``online`` (polled within :data:`~alliance.coordinator.service.ALIVE_S`), ``away`` (polled
  before, not lately) or ``unseen``. A node's ``cases`` are the training cases it sent with
  its latest update, suppressed with the quality report's rule
  (:func:`alliance.data.quality.protect`, since the round's total is shown). ``edges`` are the
  updates of the open round (``live``) or else of the last closed one; each edge carries a
  ``weight`` (the update's share in asynchronous rounds, ``None`` otherwise) so that the
  knowledge flows of a later analysis fit the same shape.
- ``studies``: each study's status (:func:`~alliance.coordinator.status.study_status`) with
  an ``accuracy`` series per round, overall and per hospital.
- ``privacy``: per study, what it promises and each hospital's ε spent as reported on the
  published model card; every refusal from the studies' logs. Hospitals keep their budgets in
  their own ledgers: the coordinator shows the study's target ε, not a budget it cannot know.
- ``models``: the registry's published models with their cards and download paths.
- ``audit``: the verification of the coordinator's audit log (re-checked only when it grew).

A hospital's view is cut by :func:`alliance.coordinator.visibility.site_dashboard`, the same
rule as the study status: the consortium's aggregates and its own figures only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from alliance.coordinator.driver import RoundDriver
from alliance.coordinator.registry import ModelRegistry
from alliance.coordinator.status import study_logs, study_status
from alliance.coordinator.visibility import site_dashboard
from alliance.core.errors import AllianceError
from alliance.crypto.pki import TrustStore
from alliance.data.quality import protect
from alliance.evaluation.ranking import topk_from_counts
from alliance.store.audit_check import verify_audit_log
from alliance.store.state import CoordinatorStore, StudyRecord

__all__ = ["COORDINATOR_NODE", "AuditWatch", "Presence", "PublishedModels", "dashboard_view"]

#: The smallest count shown as a number (the quality report's default threshold).
MIN_CASES = 5
COORDINATOR_NODE = "coordinator"
#: At most this many problems of the audit log are listed (the count is always given).
MAX_PROBLEMS = 5


@dataclass(frozen=True)
class Presence:
    """Who the service has heard from, as of ``now``."""

    now: float
    alive_s: float
    #: Each site's last poll (seconds since the epoch).
    polled: Mapping[str, float] = field(default_factory=dict)
    #: The hospitals on files.
    files: frozenset[str] = frozenset()
    #: The DER certificate each site last connected with.
    certificates: Mapping[str, bytes] = field(default_factory=dict)


class AuditWatch:
    """The audit log's verification, redone only when the file changed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None
        self._report: dict[str, Any] = {}

    def status(self) -> dict[str, Any]:
        """``{"ok", "entries", "problems", "problem_count", "path"}`` of the log now."""
        try:
            info = os.stat(self.path)
            key: tuple[int, int] | None = (info.st_size, info.st_mtime_ns)
        except OSError:
            key = None
        with self._lock:
            if key is None or key != self._key:
                self._report = self._verify()
                self._key = key
            return dict(self._report)

    def _verify(self) -> dict[str, Any]:
        try:
            report = verify_audit_log(self.path)
        except AllianceError as exc:
            return {"ok": False, "entries": 0, "problems": [str(exc)], "problem_count": 1}
        problems = [f"line {p.line}: {p.message}" for p in report.problems]
        return {
            "ok": report.ok,
            "entries": report.entries,
            "problems": problems[:MAX_PROBLEMS],
            "problem_count": len(problems),
            "path": self.path.name,
        }


def dashboard_view(
    store: CoordinatorStore,
    *,
    federation: str,
    presence: Presence,
    trust: TrustStore,
    audit: AuditWatch,
    published: PublishedModels | None = None,
    viewer: tuple[str, str],
    live: tuple[str, RoundDriver] | None = None,
) -> dict[str, Any]:
    """The dashboard's document for ``viewer`` (``(name, role)``); a hospital (role
    ``"site"``) gets its cut of it.

    ``live`` is the running study's id and driver, when one runs in this process.
    """
    records = store.studies()
    studies = [
        _study(store, r, live[1] if live is not None and live[0] == r.study_id else None)
        for r in records
    ]
    models = [] if published is None else published.entries(records)
    view = {
        "federation": federation,
        "viewer": {"name": viewer[0], "role": viewer[1]},
        "generated_at": presence.now,
        "network": _network(store, records, studies, models, presence, trust),
        "studies": studies,
        "privacy": _privacy(store, records, studies, models),
        "models": models,
        "audit": audit.status(),
    }
    name, role = viewer
    if role != "site":
        return view
    return site_dashboard(view, name, studies=_site_studies(store, records, live, name))


def _study(store: CoordinatorStore, record: StudyRecord, live: RoundDriver | None) -> Any:
    status = study_status(store, record, live=live)
    status["accuracy"] = accuracy_series(status["history"])
    return status


def _site_studies(
    store: CoordinatorStore,
    records: list[StudyRecord],
    live: tuple[str, RoundDriver] | None,
    site: str,
) -> list[dict[str, Any]]:
    out = []
    for r in records:
        driver = live[1] if live is not None and live[0] == r.study_id else None
        status = study_status(store, r, live=driver, site=site)
        status["accuracy"] = accuracy_series(status["history"])
        out.append(status)
    return out


def accuracy_series(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Top-1 per closed round: pooled over the hospitals and for each hospital listed.

    A hospital's history (:func:`~alliance.coordinator.visibility.site_round`) lists only its
    own metrics but carries the consortium's pooled ``evaluation``, which is used then.
    """
    out = []
    for entry in history:
        metrics: Mapping[str, Mapping[str, float]] = entry.get("site_metrics", {})
        pooled = entry.get("evaluation") or topk_from_counts(list(metrics.values())).as_dict()
        per_site = {s: topk_from_counts([m]).as_dict()["top1"] for s, m in metrics.items()}
        out.append(
            {
                "round": entry["round"],
                "evaluated_version": entry.get("evaluated_version", entry["model_version"] - 1),
                "top1": pooled["top1"],
                "top3": pooled["top3"],
                "sites": {s: v for s, v in per_site.items() if v is not None},
            }
        )
    return out


def _known_sites(
    records: list[StudyRecord],
    models: list[dict[str, Any]],
    presence: Presence,
    store: CoordinatorStore,
) -> list[str]:
    names: set[str] = set(presence.polled) | set(presence.files) | set(presence.certificates)
    for record in records:
        names.update(r_site for r in store.rounds(record.study_id) for r_site in r.participants)
    for model in models:
        names.update(model["card"].get("hospitals", ()))
    names.discard(COORDINATOR_NODE)
    return sorted(names)


def _network(
    store: CoordinatorStore,
    records: list[StudyRecord],
    studies: list[dict[str, Any]],
    models: list[dict[str, Any]],
    presence: Presence,
    trust: TrustStore,
) -> dict[str, Any]:
    sites = _known_sites(records, models, presence, store)
    refused: dict[str, str] = {}
    edges: list[dict[str, Any]] = []
    cases: dict[str, int] = {}
    last_update: dict[str, int] = {}
    current_round = None
    for status in studies:  # oldest first: the newest study's figures win
        for entry in status["history"]:
            for s in entry["sites"]:
                last_update[s] = entry["round"]
        open_round = status.get("open_round")
        if open_round is not None:
            refused.update(open_round.get("refused") or {})
    latest = _latest_study(studies)
    if latest is not None:
        current_round, edges, cases = _flows(store, latest)
    shown = dict(zip(cases, protect(list(cases.values()), MIN_CASES), strict=True))
    nodes = [
        {
            "id": s,
            **_state(s, presence, refused, trust),
            "cases": shown.get(s),
            "last_round": last_update.get(s),
        }
        for s in sites
    ]
    return {
        "coordinator": COORDINATOR_NODE,
        "study": None if latest is None else latest["study"],
        "round": current_round,
        "nodes": nodes,
        "edges": edges,
    }


def _latest_study(studies: list[dict[str, Any]]) -> dict[str, Any] | None:
    running = [s for s in studies if s["status"] == "running"]
    started = [s for s in studies if s["history"] or s.get("open_round")]
    chosen = running or started
    return chosen[-1] if chosen else None


def _flows(
    store: CoordinatorStore, status: dict[str, Any]
) -> tuple[int | None, list[dict[str, Any]], dict[str, int]]:
    """The round shown on the map, its edges, and each sender's cases."""
    study = status["study"]
    open_round = status.get("open_round")
    if open_round is not None and open_round["answered"]:
        number, live = open_round["round"], True
        shares: Mapping[str, float] = {}
    elif status["history"]:
        number, live = status["history"][-1]["round"], False
        shares = status["history"][-1].get("shares", {})
    else:
        return (None if open_round is None else open_round["round"]), [], {}
    updates = store.updates(study, number)
    edges = [
        {
            "source": u.site,
            "target": COORDINATOR_NODE,
            "round": number,
            "live": live,
            "weight": shares.get(u.site),
        }
        for u in updates
    ]
    return number, edges, {u.site: u.num_examples for u in updates}


def _state(
    site: str, presence: Presence, refused: Mapping[str, str], trust: TrustStore
) -> dict[str, Any]:
    polled = presence.polled.get(site)
    if _revoked(presence.certificates.get(site), trust):
        return {"state": "revoked", "reason": "its certificate is revoked", "last_seen": polled}
    if site in refused:
        return {"state": "refused", "reason": refused[site], "last_seen": polled}
    if site in presence.files:
        return {"state": "files", "reason": None, "last_seen": polled}
    if polled is None:
        return {"state": "unseen", "reason": None, "last_seen": None}
    state = "online" if presence.now - polled <= presence.alive_s else "away"
    return {"state": state, "reason": None, "last_seen": polled}


def _revoked(der: bytes | None, trust: TrustStore) -> bool:
    crl = trust.crl
    if der is None or crl is None:
        return False
    serial = x509.load_der_x509_certificate(der).serial_number
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


class PublishedModels:
    """The registry's published models as the dashboard lists them.

    Reading a model verifies its file against its signed card, so a version is read again only
    while its card still awaits hospitals' evaluations (a new revision may come); once complete,
    its entry is kept.
    """

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self._done: dict[tuple[str, int], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def entries(self, records: list[StudyRecord]) -> list[dict[str, Any]]:
        """Every published version of the studies of ``records``, oldest first."""
        out = []
        for record in records:
            for version in self.registry.versions(record.study_id):
                entry = self._entry(record.study_id, version)
                if entry is not None:
                    out.append(entry)
        return out

    def _entry(self, study: str, version: int) -> dict[str, Any] | None:
        with self._lock:
            kept = self._done.get((study, version))
        if kept is not None:
            return kept
        published = self.registry.get(study, version)
        if published is None:
            return None
        base = f"/v1/studies/{study}/model"
        entry = {
            "study": study,
            "version": version,
            "card": published.card.to_json(),
            "model_url": f"{base}?version={version}",
            "card_url": f"{base}/card?version={version}",
            "bytes": len(published.model),
        }
        if not published.card.evaluation.get("pending"):
            with self._lock:
                self._done[(study, version)] = entry
        return entry


def _privacy(
    store: CoordinatorStore,
    records: list[StudyRecord],
    studies: list[dict[str, Any]],
    models: list[dict[str, Any]],
) -> dict[str, Any]:
    spent: dict[str, Mapping[str, Any]] = {}
    for model in models:  # newest version last: its card wins
        spent[model["study"]] = model["card"].get("privacy", {})
    per_study = [
        {
            "study": status["study"],
            "promise": status.get("privacy"),
            "spent": dict(spent.get(status["study"], {})),
        }
        for status in studies
    ]
    refusals = [
        {"study": r.study_id, **line}
        for r in records
        for line in study_logs(store, r.study_id, 0)
        if line["kind"] == "site_refused"
    ]
    return {"studies": per_study, "refusals": refusals}
