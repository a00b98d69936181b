"""Secure aggregation and differential privacy in a whole federation (the real site and
coordinator code over the encoding in-memory transport).

- a secure round gives exactly the model that the integer sum of the survivors' encoded
  updates gives, with four of twelve sites dropping at four different stages;
- a fifth dropout aborts the round cleanly: no unmask shares are ever asked for;
- everything the coordinator received and stored is inspected: no site's update is in it;
- a hospital whose budget would be exceeded declines, the coordinator learns only "budget",
  and the others finish without it; a second study beyond the budget is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.frames import opened
from tests.pushing import PushingCoordinator
from torch import nn

from alliance.core.errors import FederationError
from alliance.privacy.ledger import PrivacyLedger
from alliance.protocol.codec import decode
from alliance.protocol.envelope import COORDINATOR, MessageKind
from alliance.protocol.messages import ModelUpdate, TrainingPlan
from alliance.protocol.privacy import PrivacyPlan, SecAggPlan
from alliance.protocol.secure_update import UpdateLayout
from alliance.sim.simulation import Simulation

SITES = [f"h{i:02d}" for i in range(12)]


def _data(n_sites: int = 12, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 3, generator=g)
    out = {}
    for i, site in enumerate(SITES[:n_sites]):
        x = torch.randn(40 + 10 * i, 8, generator=g)
        out[site] = (x, (x @ w).argmax(1))
    return out


def _model() -> nn.Module:
    return nn.Linear(8, 3)


def _sim(**kw: object) -> Simulation:
    base: dict[str, object] = {
        "model_fn": _model,
        "sites": _data(),
        "rounds": 1,
        "plan": TrainingPlan(batch_size=16, learning_rate=0.05, seed=3),
        "seed": 3,
    }
    base.update(kw)
    return Simulation(**base)  # type: ignore[arg-type]


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()}


def _received(messages: list[tuple[str, str, bytes]]) -> list:
    return [opened(data) for _, recipient, data in messages if recipient == COORDINATOR]


def test_secure_round_is_the_exact_integer_sum_of_the_survivors() -> None:
    # The plaintext run gives each site's update (same seeds: same local training).
    plain_msgs: list[tuple[str, str, bytes]] = []
    plain = _sim(tap=lambda s, r, d: plain_msgs.append((s, r, d))).run()
    updates = {
        env.header.sender: ModelUpdate.from_envelope(env)
        for env in _received(plain_msgs)
        if env.header.kind is MessageKind.MODEL_UPDATE
    }
    assert len(updates) == 12
    dropouts = {"h01": "train", "h04": "keys", "h07": "shares", "h10": "unmask"}
    secure_msgs: list[tuple[str, str, bytes]] = []
    secure = _sim(
        secagg=SecAggPlan(enabled=True),
        drop=lambda site, _round, stage: dropouts.get(site) == stage,
        tap=lambda s, r, d: secure_msgs.append((s, r, d)),
    ).run()
    record = secure.history[0]
    # h10 sent its masked input before vanishing at the unmask stage: it is in the sum.
    survivors = sorted(set(SITES) - {"h01", "h04", "h07"})
    assert list(record.sites) == survivors

    start = _weights(_model_at_seed(3))
    layout = UpdateLayout(start, SecAggPlan(enabled=True), 12)
    total = np.zeros(layout.length, dtype=layout.dtype)
    for site in survivors:
        u = updates[site]
        vector, _ = layout.encode(u.delta, u.num_examples, u.metrics)
        total += vector  # uint32 arithmetic wraps: the modulus is 2**32 here
    assert layout.quantizer.modulus_bits == 32
    expected = layout.decode(total)
    got = _weights(secure.model)
    for name in start:
        np.testing.assert_array_equal(got[name], (start[name] + expected.mean_delta[name]))
    assert record.num_examples == sum(min(updates[s].num_examples, 4096) for s in survivors)
    # And within the quantisation bound of the plaintext weighted mean of the same sites.
    n = sum(updates[s].num_examples for s in survivors)
    for name in start:
        exact = sum(updates[s].num_examples * updates[s].delta[name] for s in survivors) / n
        assert np.abs(expected.mean_delta[name] - exact).max() <= layout.quantizer.error_bound()
    assert _weights(plain.model).keys() == got.keys()


def _model_at_seed(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _model()


def test_a_fifth_dropout_aborts_cleanly_and_reveals_nothing() -> None:
    dropouts = {"h00": "train", "h02": "keys", "h03": "shares", "h05": "shares", "h08": "shares"}
    msgs: list[tuple[str, str, bytes]] = []
    sim = _sim(
        secagg=SecAggPlan(enabled=True),
        drop=lambda site, _round, stage: dropouts.get(site) == stage,
        tap=lambda s, r, d: msgs.append((s, r, d)),
    )
    with pytest.raises(FederationError, match="aborted"):
        sim.run()
    stages = [
        env.body.get("stage") for env in _received(msgs) if env.header.kind is MessageKind.SECAGG
    ]
    assert "unmask_out" not in stages
    assert "confirmation" not in stages
    assert stages.count("masked") == 7  # fewer than the threshold of 8: nothing was unmasked


def test_the_coordinator_never_receives_or_stores_a_site_update() -> None:
    plain_msgs: list[tuple[str, str, bytes]] = []
    _sim(tap=lambda s, r, d: plain_msgs.append((s, r, d)), rounds=1).run()
    plaintext = [
        ModelUpdate.from_envelope(env)
        for env in _received(plain_msgs)
        if env.header.kind is MessageKind.MODEL_UPDATE
    ]
    msgs: list[tuple[str, str, bytes]] = []
    _sim(secagg=SecAggPlan(enabled=True), tap=lambda s, r, d: msgs.append((s, r, d))).run()
    to_coordinator = [d for _, r, d in msgs if r == COORDINATOR]
    assert to_coordinator
    for data in to_coordinator:
        env = opened(data)
        if env.header.kind is MessageKind.FINAL_EVALUATION:
            # After the study, each site reports its evaluation of the final model: counts only.
            assert not env.arrays
            assert set(env.body["metrics"]) <= {"eval_n", "eval_top1", "eval_top3", "eval_top10"}
            continue
        assert env.header.kind is MessageKind.SECAGG
        for name, arr in env.arrays.items():
            assert name == "masked"
            assert arr.dtype.kind == "u"
        # No float32 run of any site's update appears in any byte the coordinator received.
        for update in plaintext:
            for delta in update.delta.values():
                probe = np.ascontiguousarray(delta.reshape(-1)[:4]).tobytes()
                assert probe not in data
    masked = [opened(d).arrays["masked"] for d in to_coordinator if "masked" in opened(d).arrays]
    assert len(masked) == 12
    # A masked vector looks uniform: its update coordinates are spread over the whole modulus.
    for vector in masked:
        assert float(np.median(vector.astype(np.float64))) > 2.0**29


def test_masks_differ_every_round() -> None:
    msgs: list[tuple[str, str, bytes]] = []
    _sim(
        secagg=SecAggPlan(enabled=True),
        rounds=2,
        plan=TrainingPlan(batch_size=16, learning_rate=0.0, seed=3),
        tap=lambda s, r, d: msgs.append((s, r, d)),
    ).run()
    by_site: dict[str, list[np.ndarray]] = {}
    for env in _received(msgs):
        if "masked" in env.arrays:
            by_site.setdefault(env.header.sender, []).append(env.arrays["masked"])
    for vectors in by_site.values():
        assert len(vectors) == 2
        # Learning rate 0: the same update both rounds, yet the masked vectors share nothing.
        assert np.mean(vectors[0] == vectors[1]) < 0.01


def test_a_site_over_budget_declines_and_the_coordinator_learns_only_budget(
    tmp_path: Path,
) -> None:
    privacy = PrivacyPlan(mechanism="dp-sgd", target_epsilon=2.0, rounds=2)
    budgets = dict.fromkeys(SITES[:4], 5.0)
    budgets["h00"] = 1.0
    msgs: list[tuple[str, str, bytes]] = []
    result = _sim(
        sites=_data(4),
        rounds=2,
        privacy=privacy,
        budget_epsilon=budgets,
        ledger_dir=tmp_path,
        tap=lambda s, r, d: msgs.append((s, r, d)),
        quorum=3,
    ).run()
    assert [r.sites for r in result.history] == [("h01", "h02", "h03")] * 2
    refusals = [env for env in _received(msgs) if env.header.kind is MessageKind.REFUSAL]
    assert {env.header.sender for env in refusals} == {"h00"}
    assert all(dict(env.body) == {"reason": "budget"} for env in refusals)
    assert result.epsilon["h00"] == 0.0
    for site in ("h01", "h02", "h03"):
        assert 1.5 < result.epsilon[site] <= 2.0
    with PrivacyLedger.open(tmp_path / "h01.ledger", budget_epsilon=5.0, delta=1e-5) as ledger:
        assert [(s.study, s.rounds) for s in ledger.by_study()] == [("study", 2)]
    # A second study of the same size does not fit in a budget of 2.5: the four rounds compose
    # to more (though to less than 2 + 2: composition is sublinear).
    again = _sim(
        sites=_data(4),
        rounds=2,
        privacy=privacy,
        budget_epsilon=2.5,
        ledger_dir=tmp_path,
        study="second",
    )
    with pytest.raises(FederationError, match="quorum"):
        again.run()


def test_a_forged_key_advert_is_refused_by_the_coordinator_and_the_round_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alliance.crypto.signing import Signer

    original = Signer.sign

    def sign(self: Signer, data: bytes) -> bytes:
        signature = original(self, data)
        if self.name == "h03" and b"alliance-secagg-advert" in data:
            return bytes(64)  # a signature that verifies for no key
        return signature

    monkeypatch.setattr(Signer, "sign", sign)
    # Without the coordinator's check every honest site would refuse the forged advert and the
    # round would abort; with it, h03 is simply not in the cohort.
    result = _sim(secagg=SecAggPlan(enabled=True)).run()
    assert "h03" not in result.history[0].sites
    assert len(result.history[0].sites) == 11


def test_a_stage_answer_sent_again_is_a_duplicate_even_after_the_stage_moved_on() -> None:
    from alliance.coordinator.rounds import Receipt
    from alliance.transport.memory import InMemoryTransport

    sent: list[tuple[str, str, bytes]] = []
    sim = _sim(secagg=SecAggPlan(enabled=True), sites=_data(4))
    transport = InMemoryTransport(tap=lambda s, r, d: sent.append((s, r, d)))
    identities = sim._identities()
    assert identities is not None
    coordinator = PushingCoordinator(
        federation="simulation",
        study="study",
        sites=sorted(sim.train),
        weights={k: v.detach().numpy() for k, v in _model_at_seed(3).named_parameters()},
        strategy=sim.strategy,
        plan=sim.plan,
        mailbox=transport,
        secagg=sim.secagg,
        peers=identities.sites,
    )
    from alliance.site.agent import Site

    sites = [
        Site(
            name,
            federation="simulation",
            model=_model_at_seed(3),
            train=data,
            test=None,
            link=transport,
            signer=identities.signers[name],
            peers=identities.sites,
        )
        for name, data in sorted(sim.train.items())
        if data is not None
    ]
    coordinator.start_round()
    for site in sites:
        site.step()
    coordinator.receive()
    adverts = [decode(d) for _, r, d in sent if r == COORDINATOR]
    assert coordinator.advance()
    assert coordinator.secure_round is not None
    assert coordinator.secure_round.stage == "keys"
    # The first advert again (its acknowledgement was lost): counted once, no rejection.
    assert coordinator.accept(adverts[0]) is Receipt.DUPLICATE
    assert coordinator.rejections == []
