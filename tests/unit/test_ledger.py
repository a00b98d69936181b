"""The hospital's privacy ledger: persistence, idempotence, the budget, concurrency, the anchor."""

from __future__ import annotations

import multiprocessing
import shutil
import sqlite3
from pathlib import Path

import pytest

from alliance.core.errors import BudgetExceeded, ConfigError, PrivacyError, ProtocolError
from alliance.privacy.accountant import SampledGaussian, epsilon, epsilon_pld
from alliance.privacy.ledger import SCHEMA_VERSION, PrivacyLedger, ReleaseKind

DELTA = 1e-5
# Cheap to account (a few ms of PLD each), so the tests exercise the ledger, not the accountant.
ROUND = SampledGaussian(sample_rate=0.02, noise_multiplier=4.0, steps=50)
OTHER = SampledGaussian(sample_rate=0.05, noise_multiplier=3.0, steps=20)


def open_ledger(path: Path, budget: float = 10.0) -> PrivacyLedger:
    return PrivacyLedger.open(path, budget_epsilon=budget, delta=DELTA)


def test_charges_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "site" / "privacy.ledger"
    with open_ledger(path) as ledger:
        ledger.charge(study="s1", round=0, event=ROUND)
        ledger.charge(study="s1", round=1, event=ROUND, kind=ReleaseKind.CLIENT_DP)
        before = (ledger.entries(), ledger.spent())
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with open_ledger(path, budget=12.0) as again:
        assert (again.entries(), again.spent()) == before
        assert [(c.study, c.round, c.kind) for c in again.entries()] == [
            ("s1", 0, ReleaseKind.DP_SGD),
            ("s1", 1, ReleaseKind.CLIENT_DP),
        ]
        assert again.budget_epsilon == 12.0


def test_charging_a_round_twice_charges_once(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "l") as ledger:
        first = ledger.charge(study="s", round=3, event=ROUND)
        second = ledger.charge(study="s", round=3, event=ROUND, kind="dp-sgd")
        assert first.new
        assert not second.new
        assert second.charged_at == first.charged_at
        assert second.total == first.total == ledger.spent()
        assert len(ledger.entries()) == 1
        with pytest.raises(PrivacyError, match=r"round 3 was already charged"):
            ledger.charge(study="s", round=3, event=OTHER)
        with pytest.raises(PrivacyError, match=r"already charged"):
            ledger.charge(study="s", round=3, event=ROUND, kind=ReleaseKind.CLIENT_DP)
        assert len(ledger.entries()) == 1


def test_a_round_past_the_budget_is_refused_and_not_charged(tmp_path: Path) -> None:
    budget = epsilon([ROUND] * 3, delta=DELTA).epsilon  # exactly three rounds
    with open_ledger(tmp_path / "l", budget=budget) as ledger:
        for r in range(3):
            assert ledger.check(study="s", round=r, event=ROUND).allowed
            ledger.charge(study="s", round=r, event=ROUND)
        assert ledger.remaining() == 0.0
        refused = ledger.check(study="s", round=3, event=ROUND)
        assert not refused.allowed
        assert refused.remaining < 0
        assert ledger.would_exceed([ROUND])
        assert not ledger.would_exceed([])
        with pytest.raises(BudgetExceeded) as caught:
            ledger.charge(study="s", round=3, event=ROUND)
        message = str(caught.value)
        spent = ledger.spent().epsilon
        for part in (f"{spent:.4g}", f"{refused.after.epsilon:.4g}", f"{budget:g}", "site.toml"):
            assert part in message
        assert "fewer rounds or more noise" in message
        assert len(ledger.entries()) == 3
        # A round already charged is still recorded again harmlessly at a full budget.
        assert not ledger.charge(study="s", round=2, event=ROUND).new


def test_rounds_ahead_are_checked_without_counting_charged_ones(tmp_path: Path) -> None:
    budget = epsilon([ROUND] * 4, delta=DELTA).epsilon
    with open_ledger(tmp_path / "l", budget=budget) as ledger:
        ledger.charge(study="s", round=0, event=ROUND)
        ledger.charge(study="s", round=1, event=ROUND)
        # Rounds 1-2 ahead: round 1 is charged already, so only round 2 is new.
        assert ledger.check(study="s", round=1, event=ROUND, rounds=2).after == epsilon(
            [ROUND] * 3, delta=DELTA
        )
        ledger.ensure_within_budget(study="s", round=1, event=ROUND, rounds=3)
        with pytest.raises(BudgetExceeded, match=r"rounds 1–4 of study 's'"):
            ledger.ensure_within_budget(study="s", round=1, event=ROUND, rounds=4)
        with pytest.raises(ConfigError, match="rounds must be"):
            ledger.check(study="s", round=1, event=ROUND, rounds=0)


def test_spend_by_study_and_in_total(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "l") as ledger:
        for r in range(3):
            ledger.charge(study="b-study", round=r, event=ROUND)
        for r in range(2):
            ledger.charge(study="a-study", round=r, event=OTHER)
        studies = ledger.by_study()
        total = ledger.spent()
    assert [(s.study, s.rounds) for s in studies] == [("a-study", 2), ("b-study", 3)]
    assert studies[0].epsilon == epsilon([OTHER] * 2, delta=DELTA)
    assert studies[1].epsilon == epsilon([ROUND] * 3, delta=DELTA)
    # The hospital total composes both studies: more than either, less than their sum.
    assert max(s.epsilon.epsilon for s in studies) < total.epsilon
    assert total.epsilon < sum(s.epsilon.epsilon for s in studies)


def test_never_reports_less_than_the_accountant(tmp_path: Path) -> None:
    events = [ROUND, OTHER, SampledGaussian(1.0, 30.0, 5), ROUND, SampledGaussian(0.01, 2.0, 300)]
    with open_ledger(tmp_path / "l") as ledger:
        for r, event in enumerate(events):
            charge = ledger.charge(study="s", round=r, event=event)
            direct = epsilon(events[: r + 1], delta=DELTA)
            assert charge.total == direct
            assert charge.total is not None
            assert charge.total.epsilon >= epsilon_pld(events[: r + 1], delta=DELTA)
        assert ledger.spent() == epsilon(events, delta=DELTA)


def _charge_many(path: str, study: str, rounds: int, budget: float) -> int:
    """Child process: charge this study's rounds and the shared study's until the budget ends."""
    charged = 0
    with PrivacyLedger.open(Path(path), budget_epsilon=budget, delta=DELTA) as ledger:
        for r in range(rounds):
            for name in (study, "shared"):
                try:
                    charged += ledger.charge(study=name, round=r, event=ROUND).new
                except BudgetExceeded:
                    return charged
    return charged


def test_two_processes_neither_double_count_nor_lose_charges(tmp_path: Path) -> None:
    path = tmp_path / "l"
    open_ledger(path).close()
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        made = pool.starmap(_charge_many, [(str(path), "a", 8, 100.0), (str(path), "b", 8, 100.0)])
    with open_ledger(path) as ledger:
        entries = ledger.entries()
        keys = [(c.study, c.round) for c in entries]
        assert sorted(keys) == sorted({(s, r) for s in ("a", "b", "shared") for r in range(8)})
        assert sum(made) == len(entries) == 24
        assert ledger.spent() == epsilon([ROUND] * 24, delta=DELTA)


def test_two_processes_together_stop_at_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "l"
    budget = epsilon([ROUND] * 11, delta=DELTA).epsilon
    open_ledger(path, budget=budget).close()
    context = multiprocessing.get_context("spawn")
    with context.Pool(2) as pool:
        made = pool.starmap(
            _charge_many, [(str(path), "a", 20, budget), (str(path), "b", 20, budget)]
        )
    with open_ledger(path, budget=budget) as ledger:
        assert len(ledger.entries()) == sum(made) == 11
        assert ledger.spent().epsilon <= budget


def test_a_deleted_ledger_is_not_silently_recreated(tmp_path: Path) -> None:
    path = tmp_path / "privacy.ledger"
    with open_ledger(path) as ledger:
        ledger.charge(study="s", round=0, event=ROUND)
    assert (tmp_path / "privacy.ledger.anchor").exists()
    path.unlink()
    with pytest.raises(PrivacyError, match=r"missing.*anchor.*Restore the ledger from backup"):
        open_ledger(path)
    assert not path.exists()
    path.touch()  # an empty file in its place is no better
    with pytest.raises(PrivacyError, match="missing or empty"):
        open_ledger(path)


def test_a_replaced_ledger_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "privacy.ledger"
    open_ledger(path).close()
    other = tmp_path / "elsewhere" / "privacy.ledger"
    open_ledger(other).close()
    shutil.copyfile(other, path)
    with pytest.raises(PrivacyError, match="not the ledger its anchor"):
        open_ledger(path)


def test_a_lost_anchor_is_rewritten_from_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "privacy.ledger"
    anchor = tmp_path / "other-volume" / "anchor.json"
    PrivacyLedger.open(path, budget_epsilon=5.0, delta=DELTA, anchor=anchor).close()
    written = anchor.read_text()
    anchor.unlink()
    PrivacyLedger.open(path, budget_epsilon=5.0, delta=DELTA, anchor=anchor).close()
    assert anchor.read_text() == written


def test_delta_is_fixed_per_hospital(tmp_path: Path) -> None:
    open_ledger(tmp_path / "l").close()
    with pytest.raises(ConfigError, match=r"created with δ = 1e-05.*set it back"):
        PrivacyLedger.open(tmp_path / "l", budget_epsilon=1.0, delta=1e-6)


def test_foreign_and_newer_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"not a database at all, " * 100)
    with pytest.raises(ProtocolError, match="not a privacy ledger"):
        open_ledger(garbage)
    newer = tmp_path / "newer"
    open_ledger(newer).close()
    with sqlite3.connect(newer) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ProtocolError, match="newer Guardian Alliance"):
        open_ledger(newer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"study": "", "round": 0}, "study"),
        ({"study": "s", "round": -1}, "round"),
        ({"study": "s", "round": 0, "kind": "leak"}, "release kind"),
    ],
)
def test_bad_charges_are_config_errors(
    tmp_path: Path, kwargs: dict[str, object], match: str
) -> None:
    with open_ledger(tmp_path / "l") as ledger, pytest.raises(ConfigError, match=match):
        ledger.charge(event=ROUND, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="budget_epsilon"):
        PrivacyLedger.open(tmp_path / "m", budget_epsilon=-1.0, delta=DELTA)


def test_a_round_releases_one_reply_recorded_durably(tmp_path: Path) -> None:
    path = tmp_path / "l"
    with open_ledger(path) as ledger:
        assert ledger.release(study="s", round=1) is None
        with pytest.raises(PrivacyError, match="without a charge"):
            ledger.record_release(study="s", round=1, model_version=0, reply=b"update")
        ledger.charge(study="s", round=1, event=ROUND)
        first = ledger.record_release(study="s", round=1, model_version=0, reply=b"update")
        # The same bytes again change nothing; other bytes for the round are a second release.
        again = ledger.record_release(study="s", round=1, model_version=0, reply=b"update")
        assert again == first
        with pytest.raises(PrivacyError, match="already released a reply"):
            ledger.record_release(study="s", round=1, model_version=0, reply=b"another")
    with open_ledger(path) as reopened:
        stored = reopened.release(study="s", round=1)
        assert stored == first
        assert stored is not None
        assert (stored.reply, stored.model_version) == (b"update", 0)
        assert reopened.release(study="s", round=2) is None


def test_a_schema_1_ledger_gains_the_record_of_releases(tmp_path: Path) -> None:
    path = tmp_path / "l"
    with open_ledger(path) as ledger:
        ledger.charge(study="s", round=1, event=ROUND)
    with sqlite3.connect(path) as raw:  # as version 1 wrote it
        raw.execute("DROP TABLE releases")
        raw.execute("PRAGMA user_version = 1")
    with open_ledger(path) as upgraded:
        assert [c.round for c in upgraded.entries()] == [1]
        upgraded.record_release(study="s", round=1, model_version=0, reply=b"update")
        assert upgraded.release(study="s", round=1) is not None
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
