"""A real deployment on loopback for the e2e tests: provisioning, coordinator and site processes.

Everything goes through the shipped commands and files: ``alliance consortium init`` makes the
CA and bundles, ``alliance coordinator serve`` and ``alliance site run`` run as separate
processes over mutual TLS, and the operator submits with the Python client.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from typer.testing import CliRunner

from alliance.algorithms.strategies import build_strategy
from alliance.cli.consortium import app as consortium_app
from alliance.coordinator.client import OperatorConfig, StudyClient
from alliance.coordinator.rounds import RoundRecord
from alliance.data.loading import write_jsonl
from alliance.data.ontology import load_ontology
from alliance.data.synth import CohortConfig, generate_consortium, scaled_hospitals
from alliance.models.tasks import StudyModel, make_study_model
from alliance.protocol.study import StudySpec, spec_hash
from alliance.sim.simulation import Simulation, SimulationResult
from alliance.store.sql import SqlStore

FEDERATION = "guardian"


def simulate_study(
    d: Deployment,
    text: str,
    *,
    kind: StudyModel | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SimulationResult:
    """The in-process simulation of a study over the same hospitals' case files.

    Torch runs on one thread, as the site processes do (``OMP_NUM_THREADS=1``), so that the
    simulation and the deployment do the very same arithmetic.
    """
    spec = StudySpec.parse(text)
    kind = kind or make_study_model(spec.model)
    sites = spec.sites or d.sites
    train = {s: kind.load(d.site_dir(s) / "cases.train.jsonl").dataset for s in sites}
    test = {s: kind.load(d.site_dir(s) / "cases.test.jsonl").dataset for s in sites}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return Simulation(
            model_fn=lambda: kind.build(spec.seed),
            sites=train,
            test=test,
            strategy=build_strategy(spec.strategy),
            rounds=spec.rounds,
            plan=spec.plan,
            collate_fn=kind.collate,
            seed=spec.seed,
            on_round=on_round,
        ).run()
    finally:
        torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def study_text(
    study_id: str,
    sites: Sequence[str] | None,
    *,
    rounds: int,
    quorum: int,
    timeout_s: float,
    seed: int = 7,
    extra: str = "",
) -> str:
    listed = '"all"' if sites is None else "[" + ", ".join(f'"{s}"' for s in sites) + "]"
    return (
        f"""[study]
id = "{study_id}"
title = "Rare-disease differential diagnosis (e2e)"
rounds = {rounds}
seed = {seed}
sites = {listed}
quorum = {quorum}
round_timeout_s = {timeout_s}

[strategy]
name = "fedavg"
server_lr = 2.0

[plan]
local_epochs = 1
batch_size = 64
learning_rate = 0.01

[model]
kind = "phenotype-ranker"
dim = 32
"""
        + extra
    )


@dataclass
class Deployment:
    root: Path
    sites: tuple[str, ...]
    port: int
    coordinator: subprocess.Popen[bytes] | None = None
    site_procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def coordinator_dir(self) -> Path:
        return self.root / "consortium" / "coordinator"

    def site_dir(self, site: str) -> Path:
        return self.root / "consortium" / "sites" / site

    def env(self, crash_at: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ALLIANCE_CRASH_AT", None)
        env["OMP_NUM_THREADS"] = "1"
        if crash_at:
            env["ALLIANCE_CRASH_AT"] = crash_at
        return env

    def start_coordinator(self, *, crash_at: str | None = None) -> None:
        with open(self.root / "coordinator.out", "ab") as log:  # the child keeps its own copy
            self.coordinator = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "alliance.cli.app",
                    "coordinator",
                    "serve",
                    "--config",
                    str(self.coordinator_dir / "coordinator.toml"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(crash_at),
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.coordinator.poll() is not None:
                raise AssertionError(f"coordinator exited: {self.log('coordinator.out')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise AssertionError("coordinator did not listen within 60 s")

    def start_site(self, site: str, *, crash_at: str | None = None) -> None:
        with open(self.root / f"site-{site}.out", "ab") as log:
            self.site_procs[site] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "alliance.cli.app",
                    "site",
                    "run",
                    "--studies",
                    "1",
                    "--config",
                    str(self.site_dir(site) / "site.toml"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(crash_at),
            )

    def audit_mark(self) -> int:
        """The coordinator audit log's line count now: ``after`` for :meth:`wait_polled`."""
        path = self.coordinator_dir / "audit.log"
        return len(path.read_bytes().splitlines()) if path.exists() else 0

    def wait_polled(self, sites: Sequence[str], *, after: int, timeout_s: float = 120) -> None:
        """Wait until the coordinator logged ``site_joined`` for each of ``sites`` past line
        ``after``: an event, not a guess at how long a fresh process takes to start.

        A coordinator process logs a site's first poll once, so ``after`` should be a mark taken
        before that process started; the site is then alive for it (may be given a round).
        """
        path = self.coordinator_dir / "audit.log"
        deadline = time.monotonic() + timeout_s
        while True:
            joined: set[str] = set()
            for line in path.read_bytes().splitlines()[after:] if path.exists() else []:
                try:
                    entry = json.loads(line)
                except ValueError:  # the line being written
                    continue
                if entry["event"] == "site_joined":
                    joined.add(entry["details"]["site"])
            missing = sorted(set(sites) - joined)
            if not missing:
                return
            assert time.monotonic() < deadline, (
                f"the coordinator saw no poll from {missing} within {timeout_s} s\n"
                + "\n".join(f"{s}: {self.log(f'site-{s}.out')}" for s in missing)
            )
            time.sleep(0.1)

    def restart_coordinator(self) -> int:
        """Stop the coordinator if it runs and start a fresh process; return the audit mark
        taken before it started (see :meth:`wait_polled`)."""
        if self.coordinator is not None and self.coordinator.poll() is None:
            self.coordinator.terminate()
            self.coordinator.wait(timeout=30)
        mark = self.audit_mark()
        self.start_coordinator()
        return mark

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def operator(self) -> StudyClient:
        return StudyClient(
            OperatorConfig.load(self.root / "consortium" / "operator" / "operator.toml")
        )

    def submit(self, text: str) -> dict[str, Any]:
        path = self.root / "study.toml"
        path.write_text(text, encoding="utf-8")
        client = self.operator()
        try:
            return client.submit(path)
        finally:
            client.close()

    def status(self, study_id: str) -> dict[str, Any]:
        client = self.operator()
        try:
            return client.status(study_id)
        finally:
            client.close()

    def wait_sites(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for site, proc in self.site_procs.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(
                    f"site {site} still running after {timeout_s} s\n"
                    f"coordinator: {self.log('coordinator.out')}\n"
                    f"site: {self.log(f'site-{site}.out')}"
                ) from None
            assert proc.returncode == 0, (
                f"site {site} exited {proc.returncode}: {self.log(f'site-{site}.out')}"
            )

    def final_weights(self, study_id: str) -> tuple[int, dict[str, Any]]:
        store = SqlStore(f"sqlite:///{self.coordinator_dir / 'coordinator.db'}")
        try:
            version, weights, _ = store.latest_model(study_id)
            return version, weights
        finally:
            store.close()

    def stop(self) -> None:
        procs = [*self.site_procs.values()]
        if self.coordinator is not None:
            procs.append(self.coordinator)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def provision(root: Path, *, scale: float = 0.1, n_diseases: int = 120) -> Deployment:
    """Consortium bundles for the 12 demo hospitals, and each hospital's synthetic cases."""
    onto = load_ontology()
    hospitals = scaled_hospitals(scale)
    cohorts = generate_consortium(
        onto, onto.catalogue(), hospitals, CohortConfig(seed=7, n_diseases=n_diseases)
    )
    port = free_port()
    lines = ["[coordinator]", 'host = "127.0.0.1"', f"port = {port}", ""]
    for c in cohorts:
        lines += ["[[site]]", f'id = "{c.hospital.id}"', f'name = "{c.hospital.name}"', ""]
    (root / "sites.toml").write_text("\n".join(lines), encoding="utf-8")
    result = CliRunner().invoke(
        consortium_app,
        [
            "init",
            FEDERATION,
            "--sites",
            str(root / "sites.toml"),
            "--out",
            str(root / "consortium"),
        ],
    )
    assert result.exit_code == 0, result.output
    deployment = Deployment(root, tuple(c.hospital.id for c in cohorts), port)
    for c in cohorts:
        folder = deployment.site_dir(c.hospital.id)
        write_jsonl(c.train, folder / "cases.train.jsonl")
        write_jsonl(c.test, folder / "cases.test.jsonl")
    # The coordinator listens on loopback only in tests.
    toml = deployment.coordinator_dir / "coordinator.toml"
    toml.write_text(
        toml.read_text()
        .replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
        .replace("port = 8443", f"port = {port}")
    )
    return deployment


def approve(deployment: Deployment, text: str, *, min_cohort: int = 1) -> None:
    """Every hospital approves the study (its hash in the policy) and points at its cases."""
    digest = spec_hash(text)
    for site in deployment.sites:
        path = deployment.site_dir(site) / "site.toml"
        body = path.read_text()
        body = body.replace('test = ""', 'test = "cases.test.jsonl"')
        body = body.replace("min_cohort = 20", f"min_cohort = {min_cohort}")
        start = body.index("approved_studies = [")
        end = body.index("]", start)
        body = body[:start] + f'approved_studies = ["{digest}"]' + body[end + 1 :]
        path.write_text(body)
