"""What a hospital may read of a study: the consortium's aggregates and its own figures.

Operators see a study's status and log whole. A site sees each closed round's consortium-level
figures (cases, mean training loss, the pooled top-k of the model it received, how many sites
contributed) and its own per-site figures, never another hospital's: evaluation counts, losses,
staleness, weight, whether it took part or answered. Of the log it gets the consortium's lines
(rounds opened and closed, secure-aggregation stages, the study's end), its own rejections and
refusals, and, for lines that name other sites (who is missing, why a secure round aborted),
only that the event happened.
"""

from __future__ import annotations

from typing import Any

from alliance.coordinator.rounds import RoundRecord

__all__ = ["site_card", "site_dashboard", "site_log", "site_status"]

#: Log lines about the consortium as a whole, with no per-site figure in them.
CONSORTIUM_EVENTS = frozenset(
    {"round_opened", "round_closed", "secure_stage", "study_finished", "study_started"}
)
#: Log lines that may name other sites: a site learns the event, not its details.
REDACTED_EVENTS = frozenset({"round_waiting", "secure_round_aborted", "secure_round_retried"})
#: Log lines about one site, whose message starts with that site's name.
OWN_EVENTS = frozenset({"update_rejected", "site_refused"})
REDACTED = "details are shown to the consortium's operators"


def _mine(items: list[str], site: str) -> list[str]:
    return [site] if site in items else []


def site_round(entry: dict[str, Any], site: str) -> dict[str, Any]:
    """A closed round's summary as ``site`` may see it."""
    sites = list(entry.get("sites", ()))
    metrics: dict[str, Any] = entry.get("site_metrics", {})
    out = {key: entry[key] for key in ("round", "model_version", "num_examples", "train_loss")}
    out["contributors"] = len(sites)
    out["evaluation"] = RoundRecord.from_json(entry).evaluation()
    out["sites"] = _mine(sites, site)
    # Pseudo-entries (the secure sum) are aggregates; entries named after sites are theirs.
    out["site_metrics"] = {k: m for k, m in metrics.items() if k == site or k not in sites}
    for key in ("staleness", "shares"):
        if key in entry:
            out[key] = {k: v for k, v in entry[key].items() if k == site}
    return out


def site_status(status: dict[str, Any], site: str) -> dict[str, Any]:
    """A study's status (:meth:`CoordinatorService.study_status`) as ``site`` may see it."""
    out = dict(status)
    current = status.get("open_round")
    if current is not None:
        out["open_round"] = {
            "round": current["round"],
            "deadline": current["deadline"],
            "participants": _mine(current["participants"], site),
            "answered": _mine(current["answered"], site),
            "participant_count": len(current["participants"]),
            "answered_count": len(current["answered"]),
        }
    out["history"] = [site_round(entry, site) for entry in status["history"]]
    return out


def site_log(lines: list[dict[str, Any]], site: str) -> list[dict[str, Any]]:
    """The log lines ``site`` may read (sequence numbers kept, so paging still works)."""
    out = []
    for line in lines:
        kind, message = line["kind"], str(line["message"])
        if kind in CONSORTIUM_EVENTS:
            out.append(line)
        elif kind in REDACTED_EVENTS:
            out.append({**line, "message": REDACTED})
        elif kind in OWN_EVENTS and message.startswith((f"{site}:", f"{site} ")):
            out.append(line)
    return out


def site_dashboard(
    view: dict[str, Any], site: str, *, studies: list[dict[str, Any]]
) -> dict[str, Any]:
    """The dashboard's document (:mod:`alliance.coordinator.dashboard`) as ``site`` may see it.

    ``studies`` are the studies' statuses already cut for ``site`` (:func:`site_status`).
    Other hospitals stay on the map as members, with no state, cases or last contact; only
    ``site``'s own update is drawn; privacy, refusals and models are its own (each card cut by
    :func:`site_card`); the audit log's verification is reported without its findings (they
    may name other hospitals).
    """
    network = view["network"]
    hidden = {"state": "member", "reason": None, "last_seen": None, "cases": None}
    nodes = [
        {**n, "own": True} if n["id"] == site else {"id": n["id"], **hidden, "last_round": None}
        for n in network["nodes"]
    ]
    edges = [e for e in network["edges"] if e["source"] == site]
    privacy = view["privacy"]
    refusals = site_log(privacy["refusals"], site)
    spent = [
        {**p, "spent": {k: v for k, v in p["spent"].items() if k == site}}
        for p in privacy["studies"]
    ]
    audit = view["audit"]
    return {
        **view,
        "viewer": {"name": site, "role": "site"},
        "network": {**network, "nodes": nodes, "edges": edges},
        "studies": studies,
        "privacy": {"studies": spent, "refusals": refusals},
        "models": [
            {**m, "card": site_card(m["card"], site)}
            for m in view["models"]
            if site in m["card"].get("hospitals", ())
        ],
        "audit": {"ok": audit["ok"], "entries": audit["entries"]},
    }


def site_card(card: dict[str, Any], site: str) -> dict[str, Any]:
    """A model card's JSON as the dashboard shows it to ``site``: the consortium's figures
    and its own hospital's cases, evaluation and ε, none of another hospital's."""
    evaluation = dict(card.get("evaluation") or {})
    per_hospital = evaluation.get("per_hospital") or {}
    evaluation["per_hospital"] = {k: v for k, v in per_hospital.items() if k == site}
    cases = dict(card.get("cases") or {})
    hospitals = cases.get("per_hospital")
    if isinstance(hospitals, dict):
        cases["per_hospital"] = {k: v for k, v in hospitals.items() if k == site}
    return {
        **card,
        "evaluation": evaluation,
        "cases": cases,
        "privacy": {k: v for k, v in (card.get("privacy") or {}).items() if k == site},
    }
