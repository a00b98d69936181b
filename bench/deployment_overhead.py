"""Round overhead of the networked deployment over the in-process simulation, 12 sites.

What it measures
----------------
For a ~1 M and a ~10 M parameter phenotype-ranker (``dim`` 24 and 249), the same study of the
12 demo hospitals (same case files, same plan, same seed, FedAvg) is run twice, one after the
other, never at the same time:

- **sim**: :class:`alliance.sim.Simulation` in this process, sites one after another over the
  in-memory transport (every message encoded and decoded, MemoryStore), with
  ``torch.set_num_threads(1)`` as the site processes run (``OMP_NUM_THREADS=1``);
- **networked**: the real deployment of ``tests/e2e/deployment.py`` on loopback: the
  ``alliance coordinator serve`` process (SQLite store, ``synchronous=FULL``, hash-chained
  audit log) and 12 ``alliance site run`` processes, over HTTPS with mutual TLS 1.3, every
  message signed (Ed25519) and verified.

Timed: rounds 2..R of each variant. Excluded: everything up to the end of round 1 (process
launch, imports, ontology loading, provisioning, study submission, and round 1 itself, in which
every site process fetches and hashes the study file, loads the ontology and its cases and
builds the model), and everything after the last round closes (study-end messages, process
exit). The networked round is timed in the coordinator's store, from its ``round_opened``
event to its ``round_closed`` event (``SqlStore.events``; the rounds table has no timestamps);
the simulated round from the end of the previous round to the end of this one (start_round,
12 sites, receive, close_round). Both runs must end with bit-identical weights (checked).

Bytes per round are what crosses the wire in the application's messages: 12 signed tasks
(re-encoded here with the coordinator's certificate, within a few bytes) and 12 signed updates
(the sizes the coordinator's audit log records); TLS records and HTTP headers add < 0.1 %. The
sites' socket I/O (``rchar + wchar`` from ``/proc/<pid>/io``) is reported as a cross-check.

On a 2-core machine the 12 site processes and the coordinator compete for 2 cores while the
simulation runs sites one after another on one, so the ratio includes that contention (and any
load from other users of the machine: the CPU time of every other process during the timed
rounds is reported, and should be ~0). To see where the time goes, the script also samples each
process's CPU time, reads the sites' and coordinator's audit logs for a per-round timeline, and
times each component of the message path in this process for the model size (codec; signing and
verification as the codec does them, i.e. a signed frame minus the plain encoding; SQLite
commits; audit fsyncs; one HTTPS transfer through the real FastAPI app and client over mutual
TLS). ``--py-spy EXE`` samples the coordinator and one site with py-spy during the timed rounds
(it perturbs the timings: profile and time in separate runs); ``--nice-sites N`` runs the sites
at a lower priority, to see how much of the round is the coordinator waiting for a core.

Usage::

    python bench/deployment_overhead.py            # 1M and 10M, 4 rounds, scale 0.1
    python bench/deployment_overhead.py --quick    # 1M only, 3 rounds, scale 0.05
    python bench/deployment_overhead.py --rounds 6 --sizes 10M --out FILE
    python bench/deployment_overhead.py --py-spy "$(command -v py-spy)" --out /tmp/prof.json

Prints a table and writes ``bench/results/deployment_overhead.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.e2e.deployment import (  # noqa: E402
    FEDERATION,
    Deployment,
    approve,
    free_port,
    provision,
    simulate_study,
    study_text,
)

from alliance.algorithms.strategies import build_strategy  # noqa: E402
from alliance.coordinator.rounds import Coordinator  # noqa: E402
from alliance.coordinator.serve import CoordinatorConfig  # noqa: E402
from alliance.crypto.pki import Role, TrustStore  # noqa: E402
from alliance.crypto.signing import Signer  # noqa: E402
from alliance.crypto.tls import client_context, server_context  # noqa: E402
from alliance.crypto.verifier import MessageVerifier  # noqa: E402
from alliance.models.tasks import StudyModel, make_study_model  # noqa: E402
from alliance.models.training import get_weights  # noqa: E402
from alliance.protocol.codec import (  # noqa: E402
    content_digest,
    decode,
    decode_signed,
    encode,
    encode_signed,
)
from alliance.protocol.envelope import COORDINATOR, Header, MessageKind  # noqa: E402
from alliance.protocol.messages import ModelUpdate, TrainTask, check_same_shapes  # noqa: E402
from alliance.protocol.study import StudySpec  # noqa: E402
from alliance.site.runner import SiteConfig  # noqa: E402
from alliance.store.audit import AuditLog, read_audit_log  # noqa: E402
from alliance.store.memory import MemoryStore  # noqa: E402
from alliance.store.sql import SqlStore  # noqa: E402
from alliance.transport.http import HttpClient, create_app, run_server  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_OUT = RESULTS / "deployment_overhead.json"
#: Model sizes: label -> phenotype-ranker ``dim`` (parameters = 40,141 * dim + 7,194).
SIZES = {"1M": 24, "10M": 249}
GOAL = 1.2
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- sampling the processes ------------------------------------------------------------------


@dataclass
class ProcSample:
    cpu_s: float
    io_bytes: int
    rss_mib: float


@dataclass
class Sampler:
    """Samples CPU time, socket+file I/O and RSS of some processes every ``interval_s``."""

    pids: dict[str, int]
    interval_s: float = 0.1
    samples: dict[str, list[tuple[float, ProcSample]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            self.samples.setdefault("machine", []).append(
                (now, ProcSample(machine_busy_cpu_s(), 0, 0.0))
            )
            for name, pid in self.pids.items():
                sample = _read_proc(pid)
                if sample is not None:
                    self.samples.setdefault(name, []).append((now, sample))
            self._stop.wait(self.interval_s)

    def at(self, name: str, t: float) -> ProcSample:
        """The last sample of ``name`` taken at or before ``t`` (the first if none)."""
        rows = self.samples[name]
        best = rows[0][1]
        for ts, sample in rows:
            if ts > t:
                break
            best = sample
        return best

    def peak_rss_mib(self, name: str) -> float:
        return max(s.rss_mib for _, s in self.samples.get(name, [(0.0, ProcSample(0, 0, 0))]))


def machine_busy_cpu_s() -> float:
    """CPU seconds all processes of the machine spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def _read_proc(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    counters = dict(line.split(": ") for line in io.splitlines())
    return ProcSample(cpu, int(counters["rchar"]) + int(counters["wchar"]), rss)


# --- py-spy profile (optional) ---------------------------------------------------------------

PY_SPY_RATE = 100
#: What a sample was doing: the first entry with a frame anywhere on the stack decides (so the
#: signing inside encode_signed counts as signing, the TLS inside an HTTP send as TLS).
OPERATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Ed25519 sign", ("Signer.sign ",)),
    ("signature + certificate verify", ("verify_signature ", "TrustStore.verify ", "_prehash ")),
    ("content digest (re-encode + sha256)", ("content_digest ",)),
    ("store blob pack/unpack", ("pack_arrays ", "unpack_arrays ")),
    ("SQLite via SQLAlchemy", ("sqlalchemy/", "sqlite3")),
    ("aggregation (numpy)", ("weighted_mean_delta ", "FedAvg.aggregate ")),
    ("finite/shape check", ("check_same_shapes ",)),
    ("audit log append (fsync)", ("AuditLog.",)),
    ("codec encode + copies", ("encode (alliance", "encode_signed ")),
    ("codec decode + copies", ("decode (alliance", "decode_signed ")),
    ("torch (train + evaluate)", ("torch/", "train_locally ", "rank_dataset ")),
    ("TLS (ssl)", ("ssl.py", "sslproto.py")),
    (
        "HTTP (uvicorn/h11/starlette/httpx)",
        ("uvicorn/", "h11/", "starlette/", "fastapi/", "_read_capped ", "httpx/", "httpcore/"),
    ),
    ("asyncio loop / sockets", ("asyncio/", "selectors.py", "socket.py")),
)
#: Which part of the protocol a sample served: the first entry whose frames all appear decides.
PURPOSES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "coordinator": (
        ("hand out tasks (next_message)", ("CoordinatorService.next_message ",)),
        ("take updates (submit_update)", ("CoordinatorService.submit_update ",)),
        ("close round (close_round)", ("Coordinator.close_round ",)),
        ("driver tick, other", ("CoordinatorService.tick ",)),
        ("HTTP server event loop", ("run_server ",)),
    ),
    "site": (
        ("train + evaluate", ("Site._update ",)),
        ("verify + decode task", ("decode_signed ",)),
        ("verify + decode task", ("TrainTask.from_envelope ",)),
        ("encode + sign update", ("encode_signed ",)),
        ("post update (HTTP)", ("HttpSiteLink.submit ",)),
        ("post update (HTTP)", ("SiteRunner._handle ", "HttpClient.request ")),
        ("audit log", ("AuditLog.",)),
        ("long-poll GET, receive task (HTTP)", ("HttpClient.request ",)),
        ("site agent, other", ("SiteRunner.",)),
    ),
}


def _wait_round_closed(d: Deployment, study_id: str, round_: int, timeout_s: float) -> None:
    log = d.coordinator_dir / "audit.log"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for e in read_audit_log(log):
            closed = e.event == "round_closed" and e.details.get("study") == study_id
            if closed and int(e.details["round"]) >= round_:
                return
        time.sleep(0.25)
    raise RuntimeError(f"study {study_id}: round {round_} did not close in {timeout_s} s")


def _start_py_spy(py_spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(PY_SPY_RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise_profile(path: Path, *, role: str) -> dict[str, Any]:
    """Shares of py-spy's samples by (purpose, operation), from its collapsed stacks.

    A sample is a thread that was running or runnable (on a busy machine, runnable includes
    waiting for a core). Samples without any Python frame (native helper threads, which py-spy
    cannot tell idle from busy) are counted apart and left out of the shares.
    """
    by_pair: Counter[tuple[str, str]] = Counter()
    native = 0
    if not path.exists():
        return {"error": f"py-spy wrote no {path.name}"}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack.strip():
            native += int(count)
            continue
        frames = stack.split(";")
        purpose = next(
            (
                name
                for name, marks in PURPOSES[role]
                if all(any(m in frame for frame in frames) for m in marks)
            ),
            "other",
        )
        op = next(
            (
                name
                for name, marks in OPERATIONS
                if any(m in frame for frame in frames for m in marks)
            ),
            "other Python",
        )
        by_pair[(purpose, op)] += int(count)
    total = sum(by_pair.values()) or 1
    by_op: Counter[str] = Counter()
    by_purpose: Counter[str] = Counter()
    for (p, o), n in by_pair.items():
        by_op[o] += n
        by_purpose[p] += n
    return {
        "samples": total,
        "samples_without_python_frames": native,
        "rate_hz": PY_SPY_RATE,
        "share_by_purpose": {k: v / total for k, v in by_purpose.most_common()},
        "share_by_operation": {k: v / total for k, v in by_op.most_common()},
        "share_by_purpose_and_operation": {
            f"{p} / {o}": n / total for (p, o), n in by_pair.most_common()
        },
    }


# --- the two variants ------------------------------------------------------------------------


def _spec_text(study_id: str, sites: tuple[str, ...], rounds: int, dim: int) -> str:
    text = study_text(study_id, sites, rounds=rounds, quorum=len(sites), timeout_s=900)
    assert "dim = 32" in text
    return text.replace("dim = 32", f"dim = {dim}")


def run_simulation(d: Deployment, text: str, kind: StudyModel) -> dict[str, Any]:
    """The in-process simulation of the study over the same hospitals' files."""
    spec = StudySpec.parse(text)
    ends: list[tuple[float, float, float]] = []
    load = os.getloadavg()[0]
    result = simulate_study(
        d,
        text,
        kind=kind,
        on_round=lambda _: ends.append(
            (time.perf_counter(), time.process_time(), machine_busy_cpu_s())
        ),
    )
    walls = [b[0] - a[0] for a, b in itertools.pairwise(ends)]
    cpus = [b[1] - a[1] for a, b in itertools.pairwise(ends)]
    machine = (ends[-1][2] - ends[0][2]) / (len(ends) - 1)
    return {
        "round_s": walls,
        "s_per_round": statistics.mean(walls),
        "cpu_s_per_round": statistics.mean(cpus),
        "other_processes_cpu_s_per_round": machine - statistics.mean(cpus),
        "codec_bytes_per_round": sum(result.bytes_sent.values()) / spec.rounds,
        "loadavg_1min_at_start": load,
        "weights": get_weights(result.model),
    }


def _iso(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run_networked(
    d: Deployment,
    text: str,
    study_id: str,
    timeout_s: float,
    *,
    nice_sites: int = 0,
    py_spy: str | None = None,
    profile_site: str = "west-china",
) -> dict[str, Any]:
    """Submit the study to the running coordinator, start 12 site processes, time the rounds.

    ``nice_sites``: niceness given to the site processes (an experiment: how much of the round
    is the coordinator waiting for a core). ``py_spy``: a py-spy executable to sample the
    coordinator and ``profile_site`` from the end of round 1 to the end of the study.
    """
    spec = StudySpec.parse(text)
    approve(d, text)
    if d.coordinator is None or d.coordinator.poll() is not None:
        d.start_coordinator()
    assert d.coordinator is not None
    load = os.getloadavg()[0]
    d.submit(text)
    d.site_procs = {}
    for site in d.sites:
        d.start_site(site)
        if nice_sites:
            os.setpriority(os.PRIO_PROCESS, d.site_procs[site].pid, nice_sites)
    pids = {"coordinator": d.coordinator.pid} | {s: p.pid for s, p in d.site_procs.items()}
    sampler = Sampler(pids | {"bench": os.getpid()})
    sampler.start()
    spies: list[tuple[str, Any, Path]] = []
    try:
        if py_spy is not None:
            _wait_round_closed(d, study_id, 1, timeout_s)
            for who in ("coordinator", profile_site):
                out = d.root / f"py-spy-{study_id}-{who}.txt"
                spies.append((who, _start_py_spy(py_spy, pids[who], out), out))
            spy_started = time.time()
        d.wait_sites(timeout_s)
    finally:
        for _, proc, _ in spies:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc, _ in spies:
            proc.wait(60)
        sampler.stop()
    status = d.status(study_id)
    if status["status"] != "finished":
        raise RuntimeError(f"study {study_id} ended {status['status']}: {status.get('error')}")

    store = SqlStore(f"sqlite:///{d.coordinator_dir / 'coordinator.db'}")
    try:
        events = store.events(study_id)
        version, weights, _ = store.latest_model(study_id)
    finally:
        store.close()
    opened: dict[int, float] = {}
    closed: dict[int, float] = {}
    for _, e in events:
        match = re.match(r"round (\d+) ", e.message)
        if match and e.kind == "round_opened":
            opened[int(match[1])] = e.at
        elif match and e.kind == "round_closed":
            closed[int(match[1])] = e.at
    rounds = list(range(2, spec.rounds + 1))
    if sorted(closed) != list(range(1, spec.rounds + 1)):
        raise RuntimeError(f"study {study_id}: closed rounds {sorted(closed)}")

    # Update arrivals (after verification and the store commit) and sizes: the coordinator's log.
    arrived: dict[int, dict[str, float]] = {}
    update_bytes: dict[int, int] = {}
    for e in read_audit_log(d.coordinator_dir / "audit.log"):
        if e.event == "update_received" and e.details.get("study") == study_id:
            r = int(e.details["round"])
            arrived.setdefault(r, {})[e.details["site"]] = _iso(e.time)
            update_bytes[r] = update_bytes.get(r, 0) + int(e.details["bytes"])
    # When each site had verified its task, and when its update was acknowledged: its own log.
    got_task: dict[int, dict[str, float]] = {}
    acked: dict[int, dict[str, float]] = {}
    for site in d.sites:
        for e in read_audit_log(d.site_dir(site) / "state" / "audit.log"):
            if e.details.get("study") != study_id or "round" not in e.details:
                continue
            r = int(e.details["round"])
            if e.event == "task_received":
                got_task.setdefault(r, {})[site] = _iso(e.time)
            elif e.event == "update_sent":
                acked.setdefault(r, {})[site] = _iso(e.time)

    def mean(values: list[float]) -> float:
        return statistics.mean(values)

    t1, tr = closed[1], closed[spec.rounds]
    n = spec.rounds - 1
    profiles = {}
    if spies:
        window = tr - max(spy_started, t1)
        profiles = {
            who: summarise_profile(out, role="coordinator" if who == "coordinator" else "site")
            | {
                "window_s": window,
                "cpu_s_per_round": (sampler.at(who, tr).cpu_s - sampler.at(who, t1).cpu_s) / n,
            }
            for who, _, out in spies
        }
    machine = sampler.at("machine", tr).cpu_s - sampler.at("machine", t1).cpu_s
    ours = sum(sampler.at(name, tr).cpu_s - sampler.at(name, t1).cpu_s for name in [*pids, "bench"])
    site_cpu = sum(sampler.at(s, tr).cpu_s - sampler.at(s, t1).cpu_s for s in d.sites) / n
    coord_cpu = (sampler.at("coordinator", tr).cpu_s - sampler.at("coordinator", t1).cpu_s) / n
    site_io = sum(sampler.at(s, tr).io_bytes - sampler.at(s, t1).io_bytes for s in d.sites) / n
    per_site = [acked[r][s] - got_task[r][s] for r in rounds for s in d.sites]
    return {
        "round_s": [closed[r] - opened[r] for r in rounds],
        "s_per_round": mean([closed[r] - opened[r] for r in rounds]),
        "close_to_close_s_per_round": (tr - t1) / n,
        "timeline": {
            "open_to_first_task_s": mean([min(got_task[r].values()) - opened[r] for r in rounds]),
            "open_to_last_task_s": mean([max(got_task[r].values()) - opened[r] for r in rounds]),
            "site_task_to_ack_median_s": statistics.median(per_site),
            "site_task_to_ack_max_s": max(per_site),
            "open_to_last_update_stored_s": mean(
                [max(arrived[r].values()) - opened[r] for r in rounds]
            ),
            "last_update_stored_to_close_s": mean(
                [closed[r] - max(arrived[r].values()) for r in rounds]
            ),
        },
        "cpu_s_per_round": {
            "coordinator": coord_cpu,
            "sites_total": site_cpu,
            "all": coord_cpu + site_cpu,
            "other_processes": (machine - ours) / n,
        },
        "update_bytes_per_round": mean([float(update_bytes[r]) for r in rounds]),
        "sites_socket_io_bytes_per_round": site_io,
        "peak_rss_mib": {
            "coordinator": sampler.peak_rss_mib("coordinator"),
            "site_max": max(sampler.peak_rss_mib(s) for s in d.sites),
        },
        "loadavg_1min_at_start": load,
        "nice_sites": nice_sites,
        "profiles": profiles,
        "model_version": version,
        "weights": weights,
    }


# --- component costs -------------------------------------------------------------------------


def _median_s(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class _StubService:
    """The coordinator's HTTP endpoints answering at once, to time HTTPS + FastAPI alone."""

    federation = FEDERATION

    def __init__(self, trust: TrustStore, task: bytes) -> None:
        self.trust, self.task = trust, task

    def identify(self, peer_certificate_der: bytes | None) -> tuple[str, str]:
        assert peer_certificate_der is not None
        self.trust.reload_crl()  # as CoordinatorService.identify does on every request
        identity = self.trust.verify(peer_certificate_der)
        return identity.name, identity.role.value

    def max_upload_bytes(self) -> int:
        return 1 << 31

    def next_message(self, site: str, wait_s: float) -> bytes | None:
        return self.task

    def submit_update(self, site: str, data: bytes) -> str:
        return "accepted"

    def submit_study(self, operator: str, spec: str) -> dict[str, Any]:
        raise NotImplementedError

    def study_status(self, study_id: str) -> dict[str, Any]:
        raise NotImplementedError

    def list_studies(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def study_spec(self, study_id: str) -> str:
        raise NotImplementedError

    def study_logs(self, study_id: str, after: int) -> list[dict[str, Any]]:
        raise NotImplementedError


def _https_costs(
    d: Deployment, cc: CoordinatorConfig, sc: SiteConfig, task: bytes, update: bytes, reps: int
) -> dict[str, float]:
    """One task fetched and one update posted through the real app and client (mTLS 1.3).

    Server and client share this process (and its GIL); the coordinator's real work is stubbed.
    """
    ready = threading.Event()
    stop = threading.Event()
    port: list[int] = []

    def serve() -> None:
        run_server(
            create_app(_StubService(TrustStore.load(cc.ca, cc.crl), task)),  # type: ignore[arg-type]
            host="127.0.0.1",
            port=free_port(),
            ssl_context=server_context(
                certificate=cc.certificate, key=cc.key, ca=cc.ca, crl=cc.crl
            ),
            ready=lambda p: (port.append(p), ready.set()),
            should_exit=stop.is_set,
        )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("stub HTTPS server did not start")
    client = HttpClient(
        f"https://127.0.0.1:{port[0]}",
        ssl_context=client_context(certificate=sc.certificate, key=sc.key, ca=sc.ca),
    )
    try:
        client.request("GET", "/v1/health")  # handshake once, as a site's pooled connection

        def get() -> None:
            got = client.request("GET", "/v1/messages/next", params={"wait": 0})
            assert len(got.content) == len(task)

        def post() -> None:
            client.request(
                "POST",
                "/v1/updates",
                content=update,
                headers={"content-type": "application/octet-stream"},
            )

        return {"https_get_task": _median_s(get, reps), "https_post_update": _median_s(post, reps)}
    finally:
        client.close()
        stop.set()
        thread.join(timeout=10)


def component_costs(
    d: Deployment, kind: StudyModel, spec: StudySpec, work: Path, reps: int
) -> dict[str, Any]:
    """Seconds per message (or per round for close_round) of each step of the message path."""
    torch.set_num_threads(1)
    cc = CoordinatorConfig.load(d.coordinator_dir / "coordinator.toml")
    site = d.sites[0]
    sc = SiteConfig.load(d.site_dir(site) / "site.toml")
    coord_signer = Signer.from_files(cc.certificate, cc.signing_key)
    site_signer = Signer.from_files(sc.certificate, sc.signing_key)
    trust = TrustStore.load(cc.ca, cc.crl)
    verify_site = MessageVerifier(trust, role=Role.SITE)
    verify_coord = MessageVerifier(TrustStore.load(sc.ca, sc.crl), role=Role.COORDINATOR)

    weights = get_weights(kind.build(spec.seed))
    rng = np.random.default_rng(0)
    deltas = {
        s: {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32) for k, v in weights.items()}
        for s in d.sites
    }
    plan = spec.plan
    task_header = Header(MessageKind.TRAIN_TASK, FEDERATION, "bench", 2, COORDINATOR, site)
    task_env = TrainTask(task_header, 1, plan, weights).to_envelope()
    task_bytes = encode(task_env)
    signed_task = encode_signed(task_env, coord_signer, ttl_s=spec.round_timeout_s * 4)
    task_sizes = [
        len(
            encode_signed(
                TrainTask(
                    Header(MessageKind.TRAIN_TASK, FEDERATION, spec.study_id, 2, COORDINATOR, s),
                    1,
                    plan,
                    weights,
                ).to_envelope(),
                coord_signer,
                ttl_s=spec.round_timeout_s * 4,
            )
        )
        for s in d.sites
    ]
    upd_header = Header(MessageKind.MODEL_UPDATE, FEDERATION, "bench", 2, site, COORDINATOR)
    update = ModelUpdate(upd_header, 1, 100, deltas[site], {"train_loss": 1.0})
    upd_env = update.to_envelope()
    upd_bytes = encode(upd_env)
    signed_update = encode_signed(upd_env, site_signer)

    # Signing and verification are timed as the codec does them, whatever its scheme: a signed
    # frame's cost minus the plain encoding (or decoding) of the same message.
    costs: dict[str, float] = {
        "task_encode": _median_s(lambda: encode(task_env), reps),
        "task_encode_signed": _median_s(
            lambda: encode_signed(task_env, coord_signer, ttl_s=3600), reps
        ),
        "task_decode": _median_s(lambda: TrainTask.from_envelope(decode(task_bytes)), reps),
        "task_decode_signed": _median_s(
            lambda: TrainTask.from_envelope(decode_signed(signed_task, verify_coord).envelope),
            reps,
        ),
        "update_encode": _median_s(lambda: encode(upd_env), reps),
        "update_encode_signed": _median_s(lambda: encode_signed(upd_env, site_signer), reps),
        "update_decode": _median_s(lambda: ModelUpdate.from_envelope(decode(upd_bytes)), reps),
        "update_decode_signed": _median_s(
            lambda: ModelUpdate.from_envelope(
                decode_signed(signed_update, verify_site, max_bytes=1 << 31).envelope
            ),
            reps,
        ),
        "update_digest_and_check": _median_s(
            lambda: (
                content_digest(upd_env),
                check_same_shapes(update.delta, weights, what="bench"),
            ),
            reps,
        ),
    }

    # The stores: 12 updates accepted, then close_round (load one delta at a time, aggregate,
    # write the new model, release the payloads), over MemoryStore and over SqlStore (SQLite,
    # WAL, synchronous=FULL) in the deployment's folder (same file system as the coordinator's).
    def store_round(store: Any) -> tuple[float, float]:
        study = StudySpec.build(study_id="bench", rounds=1, sites=list(d.sites), plan=plan)
        coord = Coordinator(
            study,
            federation=FEDERATION,
            weights=weights,
            strategy=build_strategy(spec.strategy),
            store=store,
        )
        coord.start_round()
        envs = [
            ModelUpdate(
                Header(MessageKind.MODEL_UPDATE, FEDERATION, "bench", 1, s, COORDINATOR),
                0,
                100,
                deltas[s],
                {"train_loss": 1.0},
            ).to_envelope()
            for s in d.sites
        ]
        accept = []
        for env in envs:
            start = time.perf_counter()
            coord.accept(env)
            accept.append(time.perf_counter() - start)
        start = time.perf_counter()
        coord.close_round()
        return statistics.median(accept), time.perf_counter() - start

    for kind_, what in (("task", "sign"), ("update", "sign")):
        costs[f"{kind_}_{what}"] = max(
            0.0, costs[f"{kind_}_encode_signed"] - costs[f"{kind_}_encode"]
        )
        costs[f"{kind_}_verify"] = max(
            0.0, costs[f"{kind_}_decode_signed"] - costs[f"{kind_}_decode"]
        )
    mem_accept, mem_close = store_round(MemoryStore())
    db = work / "bench-store.db"
    sql = SqlStore(f"sqlite:///{db}")
    try:
        sql_accept, sql_close = store_round(sql)
    finally:
        sql.close()
        for p in work.glob("bench-store.db*"):
            p.unlink()
    costs |= {
        "accept_memorystore": mem_accept,
        "accept_sqlstore": sql_accept,
        "close_round_memorystore": mem_close,
        "close_round_sqlstore": sql_close,
    }
    audit = AuditLog(work / "bench-audit.log", actor=COORDINATOR)
    costs["audit_append"] = _median_s(
        lambda: audit.append("update_received", study="bench", round=2, site=site, bytes=1), 20
    )
    costs |= _https_costs(d, cc, sc, signed_task, signed_update, reps)
    return {
        "seconds": costs,
        "signed_task_bytes": task_sizes,
        "signed_update_bytes": len(signed_update),
        "task_codec_bytes": len(task_bytes),
        "update_codec_bytes": len(upd_bytes),
    }


def _budget(costs: dict[str, float], n: int) -> dict[str, dict[str, float]]:
    """Per-round seconds of each step, split into what only the deployment pays.

    ``coordinator``: work done in the coordinator process, one message after another (tasks are
    encoded and signed under the service lock; updates are verified and committed one by one).
    ``sites``: work each site process does; 12 of them share the cores.
    """
    c = costs
    coord_extra = {
        "sign tasks (signed frame minus plain encode)": n * c["task_sign"],
        "verify updates (signed decode minus plain decode)": n * c["update_verify"],
        "SQLite commit of each update (FULL) vs MemoryStore": n
        * (c["accept_sqlstore"] - c["accept_memorystore"]),
        "close_round SqlStore vs MemoryStore": c["close_round_sqlstore"]
        - c["close_round_memorystore"],
        "audit appends with fsync (n + 2)": (n + 2) * c["audit_append"],
        "HTTPS: serve n tasks + receive n updates": n
        * (c["https_get_task"] + c["https_post_update"]),
    }
    site_extra = {
        "verify task": n * c["task_verify"],
        "sign update": n * c["update_sign"],
        "audit appends (2 per site)": 2 * n * c["audit_append"],
    }
    shared = {
        "encode tasks": n * c["task_encode"],
        "decode tasks": n * c["task_decode"],
        "encode updates": n * c["update_encode"],
        "decode updates": n * c["update_decode"],
        "digest + shape check of updates": n * c["update_digest_and_check"],
        "accept into MemoryStore": n * c["accept_memorystore"],
        "close_round MemoryStore": c["close_round_memorystore"],
    }
    return {
        "deployment_only_coordinator": coord_extra,
        "deployment_only_sites": site_extra,
        "both": shared,
    }


# --- report ----------------------------------------------------------------------------------


def _print_size(row: dict[str, Any]) -> None:
    net, sim, comp = row["networked"], row["sim"], row["components"]
    tl = net["timeline"]
    n = row["sites"]
    print(f"\n[{row['size']}] {row['params']:,} parameters — where a networked round goes")
    print(f"  (means over rounds {row['timed_rounds'][0]}..{row['timed_rounds'][-1]})")
    print(
        "  per round, s: sim "
        + ", ".join(f"{x:.2f}" for x in sim["round_s"])
        + "; networked "
        + ", ".join(f"{x:.2f}" for x in net["round_s"])
    )
    print(
        f"  round opened -> first site has verified its task   {tl['open_to_first_task_s']:7.2f} s"
    )
    print(
        f"  round opened -> last site has verified its task    {tl['open_to_last_task_s']:7.2f} s"
    )
    print(
        f"  a site's task -> its update acknowledged            "
        f"{tl['site_task_to_ack_median_s']:7.2f} s median, {tl['site_task_to_ack_max_s']:.2f} max"
    )
    print(
        f"  round opened -> last update stored                 "
        f"{tl['open_to_last_update_stored_s']:7.2f} s"
    )
    print(
        f"  last update stored -> round closed (aggregation)   "
        f"{tl['last_update_stored_to_close_s']:7.2f} s"
    )
    cpu = net["cpu_s_per_round"]
    cores = row["machine_cpus"]
    print(
        f"  CPU s/round: coordinator {cpu['coordinator']:.2f}, 12 sites {cpu['sites_total']:.2f}, "
        f"all {cpu['all']:.2f} (sim {sim['cpu_s_per_round']:.2f}); "
        f"floor on {cores} cores = {cpu['all'] / cores:.2f} s/round"
    )
    print(
        f"  CPU s/round of other processes on the machine (should be ~0): networked "
        f"{cpu['other_processes']:.2f}, sim {sim['other_processes_cpu_s_per_round']:.2f}"
    )
    print(
        f"  peak RSS: coordinator {net['peak_rss_mib']['coordinator']:.0f} MiB, "
        f"largest site {net['peak_rss_mib']['site_max']:.0f} MiB"
    )
    print(f"  components (this process, 1 thread; per round = per message x {n}):")
    print(f"    {'step':<56}{'s/round':>9}")
    for group, label in (
        ("deployment_only_coordinator", "deployment only, coordinator (serial)"),
        ("deployment_only_sites", "deployment only, summed over sites (parallel)"),
        ("both", "paid by the simulation too"),
    ):
        items = row["budget"][group]
        print(f"    {label:<56}{sum(items.values()):>9.2f}")
        for name, value in items.items():
            print(f"      {name:<54}{value:>9.3f}")
    s = comp["seconds"]
    print(
        "    per message: "
        + ", ".join(
            f"{k} {s[k] * 1e3:.0f} ms"
            for k in (
                "task_encode",
                "task_sign",
                "task_verify",
                "https_get_task",
                "https_post_update",
            )
        )
    )


def _print_profiles(row: dict[str, Any]) -> None:
    for who, prof in row["networked"]["profiles"].items():
        if "error" in prof:
            print(f"  py-spy {who}: {prof['error']}")
            continue
        cpu = prof["cpu_s_per_round"]
        print(
            f"  py-spy, {who} ({prof['samples']} samples over {prof['window_s']:.0f} s; "
            f"measured CPU {cpu:.2f} s/round): share of samples, and that share of its CPU"
        )
        print("    by purpose:")
        for k, v in prof["share_by_purpose"].items():
            print(f"      {k:<60}{v:>6.0%}{v * cpu:>7.2f} s")
        print("    by operation:")
        for k, v in prof["share_by_operation"].items():
            if v >= 0.01:
                print(f"      {k:<60}{v:>6.0%}{v * cpu:>7.2f} s")
        print("    largest purpose / operation pairs:")
        for k, v in list(prof["share_by_purpose_and_operation"].items())[:10]:
            print(f"      {k:<60}{v:>6.0%}{v * cpu:>7.2f} s")


def _source_state() -> dict[str, Any]:
    """The commit measured, and how many files differed from it (read-only git calls)."""

    def git(*argv: str) -> str:
        out = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {
        "head": git("rev-parse", "HEAD"),
        "changed_files": len(git("status", "--porcelain").splitlines()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="rounds per study (>= 2)")
    parser.add_argument("--scale", type=float, default=0.1, help="hospital size multiplier")
    parser.add_argument("--n-diseases", type=int, default=120, help="diseases in the cohort")
    parser.add_argument("--sizes", default="1M,10M", help=f"comma-separated, of {list(SIZES)}")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per component timing")
    parser.add_argument("--quick", action="store_true", help="1M only, 3 rounds, scale 0.05")
    parser.add_argument("--keep", action="store_true", help="keep the deployment folder")
    parser.add_argument(
        "--nice-sites",
        type=int,
        default=0,
        help="experiment: run the site processes at this niceness (the coordinator at 0)",
    )
    parser.add_argument(
        "--py-spy",
        metavar="EXE",
        help="sample the coordinator and one site with this py-spy during the timed rounds "
        "(perturbs the timings: profile and time in separate runs)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.scale, args.sizes, args.reps = 3, 0.05, "1M", 1
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is not timed)")
    sizes = [s.strip() for s in args.sizes.split(",")]
    for s in sizes:
        if s not in SIZES:
            parser.error(f"unknown size {s!r}; choose from {list(SIZES)}")

    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="alliance-deployment-bench-"))
    rows: list[dict[str, Any]] = []
    d = provision(root, scale=args.scale, n_diseases=args.n_diseases)
    train_cases = {
        s: len((d.site_dir(s) / "cases.train.jsonl").read_text().splitlines()) for s in d.sites
    }
    try:
        d.start_coordinator()
        for size in sizes:
            dim = SIZES[size]
            study_id = f"overhead-{size.lower()}"
            text = _spec_text(study_id, d.sites, args.rounds, dim)
            spec = StudySpec.parse(text)
            kind = make_study_model(spec.model)
            params = int(sum(p.numel() for p in kind.build(spec.seed).parameters()))
            print(f"{size}: {params:,} parameters; simulation ...", flush=True)
            sim = run_simulation(d, text, kind)
            print(f"{size}: networked deployment ...", flush=True)
            net = run_networked(
                d, text, study_id, timeout_s=1800, nice_sites=args.nice_sites, py_spy=args.py_spy
            )
            same = all(np.array_equal(net["weights"][k], v) for k, v in sim["weights"].items())
            print(f"{size}: component timings ...", flush=True)
            comp = component_costs(d, kind, spec, root, args.reps)
            n = len(d.sites)
            wire = sum(comp["signed_task_bytes"]) + net["update_bytes_per_round"]
            del sim["weights"], net["weights"]
            rows.append(
                {
                    "size": size,
                    "dim": dim,
                    "params": params,
                    "sites": n,
                    "rounds": args.rounds,
                    "timed_rounds": list(range(2, args.rounds + 1)),
                    "sim": sim,
                    "networked": net,
                    "ratio": net["s_per_round"] / sim["s_per_round"],
                    "same_final_weights": same,
                    "wire_bytes_per_round": wire,
                    "components": comp,
                    "budget": _budget(comp["seconds"], n),
                    "machine_cpus": os.cpu_count(),
                }
            )
    finally:
        d.stop()
        if args.keep:
            print(f"deployment kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    cpus = os.cpu_count()
    print()
    print(
        f"Deployment overhead — 12 sites, {args.rounds} rounds (rounds 2..{args.rounds} timed), "
        f"scale {args.scale} ({sum(train_cases.values())} training cases), "
        f"{args.n_diseases} diseases, fedavg, {cpus} CPUs, "
        f"{platform.machine()}, python {platform.python_version()}, torch {torch.__version__}"
    )
    head = (
        f"{'size':<6}{'params':>12}{'sim s/round':>13}{'net s/round':>13}{'ratio':>8}"
        f"{'goal':>7}{'MB/round wire':>15}{'same weights':>14}"
    )
    print(head)
    for r in rows:
        print(
            f"{r['size']:<6}{r['params']:>12,}{r['sim']['s_per_round']:>13.2f}"
            f"{r['networked']['s_per_round']:>13.2f}{r['ratio']:>8.2f}{'<=' + str(GOAL):>7}"
            f"{r['wire_bytes_per_round'] / 1e6:>15.1f}{r['same_final_weights']!s:>14}"
        )
    print(
        "wire = 12 signed tasks + 12 signed updates per round (TLS/HTTP framing adds <0.1%); "
        "sites' socket I/O measured: "
        + ", ".join(
            f"{r['size']} {r['networked']['sites_socket_io_bytes_per_round'] / 1e6:.1f} MB"
            for r in rows
        )
    )
    print(
        f"Note: on this {cpus}-core machine the 12 site processes and the coordinator compete for "
        f"{cpus} cores while the simulation runs the sites one after another on one core, so the "
        "ratio includes that contention. Excluded from both: start-up and round 1 (process "
        "launch, ontology and case loading, model building), and the study end."
    )
    for r in rows:
        _print_size(r)
        _print_profiles(r)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "deployment_overhead",
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
                "settings": {
                    "rounds": args.rounds,
                    "timed_rounds": list(range(2, args.rounds + 1)),
                    "scale": args.scale,
                    "n_diseases": args.n_diseases,
                    "train_cases": train_cases,
                    "goal_ratio": GOAL,
                    "nice_sites": args.nice_sites,
                    "py_spy": args.py_spy is not None,
                    "excluded": "start-up and round 1 (process launch, ontology and case "
                    "loading, model building in every site), and the study end",
                },
                "sizes": rows,
                "machine": {
                    "cpus": cpus,
                    "python": platform.python_version(),
                    "torch": torch.__version__,
                    "numpy": np.__version__,
                    "platform": platform.platform(),
                    "machine": platform.machine(),
                    "loadavg_at_end": os.getloadavg(),
                },
                "source": _source_state(),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
