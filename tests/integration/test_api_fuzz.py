"""Schemathesis against the coordinator's OpenAPI spec: thousands of requests, never a 5xx.

The ASGI app runs in-process over a real :class:`CoordinatorService` and ``SqlStore``, seeded
with one study so that paths naming a real study id are exercised too. A tiny ASGI middleware
stands in for the TLS handshake (which ``test_https.py`` covers for real): it puts the DER of a
chosen certificate in the request scope's ``state`` as ``tls_peer_der``, exactly where
uvicorn's protocol subclass puts the peer's certificate. Every operation is fuzzed as a site,
as an operator and with no certificate at all; whatever is sent, the coordinator must answer
with a status the spec documents, below 500, with a body that matches the spec, and no
exception may escape the app. Without a certificate, every request but the liveness probe must
be refused with a 4xx.

No driver thread ticks the service, so no round ever opens and a long-poll can never get a
message; the service is stopped before fuzzing, which makes ``GET /v1/messages/next`` return
204 at once whatever ``wait`` is generated (up to the documented 60 s).

Random strings are rarely TOML, so study files are also generated from a valid one with fuzzed
values, and studies whose model cannot be built are submitted (and refused).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from alliance.coordinator.service import CoordinatorService
from alliance.crypto import CertificateAuthority, Role, Signer, TrustStore
from alliance.protocol.envelope import COORDINATOR
from alliance.store.audit import AuditLog
from alliance.store.sql import SqlStore
from alliance.transport.http import create_app
from alliance.web.dashboard_app import add_dashboard

pytestmark = pytest.mark.slow

FEDERATION = "guardian"
STUDY_ID = "fuzz-study"
STUDY = f"""[study]
id = "{STUDY_ID}"
rounds = 1
sites = ["site-a"]
quorum = 1

[model]
kind = "phenotype-ranker"
dim = 8
"""
IDENTITIES = ("site", "operator", "anonymous")
#: Generated cases per operation and identity (twelve operations, three identities: 3,600
#: requests); the coverage phase adds its own, derived from each schema's edges.
MAX_EXAMPLES = 100
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass
class TlsPeer:
    """ASGI middleware: the TLS peer's certificate, as uvicorn's protocol subclass hands it over.

    It forwards to ``app`` and tallies the response statuses per identity for the summary.
    """

    app: ASGIApp
    identity: str = "anonymous"
    peer_der: bytes | None = None
    statuses: dict[str, Counter[int]] = field(default_factory=dict)

    def act_as(self, identity: str, peers: dict[str, bytes | None], label: str = "") -> None:
        self.identity, self.peer_der = label or identity, peers[identity]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope["state"] = {**scope.get("state", {}), "tls_peer_der": self.peer_der}
        tally = self.statuses.setdefault(self.identity, Counter())

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                tally[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counted)


# The spec does not depend on the service, so the schema is read at import (the pytest plugin
# needs it then) from an app over none; the `coordinator` fixture puts the real one in place.
PEER = TlsPeer(create_app(None, pages=add_dashboard))  # type: ignore[arg-type]
schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    PEER,
    # A schema-valid string is rarely a valid study file, nor are random bytes a signed update:
    # those are refused with 400, which the spec documents.
    config=SchemathesisConfig.from_dict(
        {
            "checks": {
                # 409: cancelling a study that has already ended.
                "positive_data_acceptance": {
                    "expected-statuses": ["2xx", "400", "403", "404", "409"]
                },
                # 413: a body over the route's byte cap is refused before it is read, whatever
                # the schema says of its length in characters (one may take four bytes).
                "negative_data_rejection": {
                    "expected-statuses": [
                        *("400", "401", "403", "404", "405", "406", "409", "413", "415"),
                        *("422", "428", "429", "5xx"),
                    ]
                },
            }
        }
    ),
)
SUBMIT = schema["/v1/studies"]["POST"]
UPDATE = schema["/v1/updates"]["POST"]
STATUS = schema["/v1/studies/{study_id}"]["GET"]
SPEC = schema["/v1/studies/{study_id}/spec"]["GET"]


@schema.hook("before_generate_path_parameters")
def _real_study(context: Any, strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Half the generated study paths name the seeded study, so they get past the 404."""
    if "{study_id}" not in context.operation.path:
        return strategy
    return st.one_of(strategy, st.just({"study_id": STUDY_ID}))


def _service(root: Path) -> tuple[CoordinatorService, dict[str, bytes | None]]:
    """A coordinator service over SQLite in ``root``, and each identity's certificate (DER)."""
    ca = CertificateAuthority.create(FEDERATION)
    coord = ca.issue(COORDINATOR, Role.COORDINATOR, hosts=["127.0.0.1"])
    der = serialization.Encoding.DER
    peers: dict[str, bytes | None] = {
        "site": ca.issue("site-a", Role.SITE).certificate.public_bytes(der),
        "operator": ca.issue("operator", Role.OPERATOR).certificate.public_bytes(der),
        "anonymous": None,
    }
    service = CoordinatorService(
        federation=FEDERATION,
        store=SqlStore(f"sqlite:///{root / 'c.db'}"),
        signer=Signer(coord.signing_key, coord.certificate),
        trust=TrustStore(ca.certificate),
        audit=AuditLog(root / "audit.log", actor=COORDINATOR),
    )
    return service, peers


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, bytes | None]]:
    """The app over a real service with one study; yields each identity's certificate."""
    service, peers = _service(tmp_path_factory.mktemp("fuzz"))
    service.submit_study("operator", STUDY)
    service.stop()  # nothing ticks: a long-poll can never get a message, so it returns at once
    spec_only, PEER.app = PEER.app, create_app(service, pages=add_dashboard)
    PEER.statuses.clear()  # not the schema's own download
    try:
        yield peers
    finally:
        PEER.app = spec_only
        service.store.close()
    print("\nstatuses per identity:")
    for identity, tally in PEER.statuses.items():
        print(f"  {identity}: {sum(tally.values())} requests, {dict(sorted(tally.items()))}")


@pytest.fixture(params=IDENTITIES)
def identity(request: pytest.FixtureRequest, coordinator: dict[str, bytes | None]) -> str:
    PEER.act_as(str(request.param), coordinator)
    return PEER.identity


@FUZZ
@schema.parametrize()
def test_no_request_makes_the_coordinator_fail(case: Any, identity: str) -> None:
    response = case.call_and_validate()  # the spec's statuses, bodies and headers, no 5xx
    assert response.status_code < 500, (
        f"{identity}: {case.method} {case.formatted_path} answered {response.status_code}: "
        f"{response.text[:500]}"
    )
    if identity == "anonymous" and case.path != "/v1/health":
        assert 400 <= response.status_code < 500, (
            f"no certificate, yet {case.method} {case.formatted_path} answered "
            f"{response.status_code}"
        )


# --- study files ------------------------------------------------------------------------------

_SCALARS = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),  # 'inf', 'nan', '1e+300' are TOML too
    st.sampled_from(["true", "false", "1979-05-27", "07:32:00", "1979-05-27T07:32:00Z"]),
    st.text(max_size=12).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),  # deeper than tomllib can recurse
)
TOML_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.dictionaries(st.sampled_from(["a", "name", "kind"]), inner, max_size=2).map(
            lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"
        ),
    ),
    max_leaves=6,
)
_VALID = {
    "study": {
        "id": st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,15}\Z").map(json.dumps),
        "title": st.just('"fuzzed"'),
        "rounds": st.just("2"),
        "seed": st.just("7"),
        "sites": st.sampled_from(['["site-a"]', '"all"']),
        "quorum": st.just("1"),
        "round_timeout_s": st.just("60"),
    },
    "strategy": {"name": st.just('"fedavg"'), "server_lr": st.just("1.0")},
    "plan": {
        "local_epochs": st.just("1"),
        "batch_size": st.just("8"),
        "learning_rate": st.just("0.01"),
    },
    "model": {"kind": st.just('"phenotype-ranker"'), "dim": st.just("8")},
}


@st.composite
def study_files(draw: st.DrawFn) -> str:
    """A valid study file with some values fuzzed, some keys left out, perhaps one extra."""
    lines = []
    for table, keys in _VALID.items():
        lines.append(f"[{table}]")
        for key, valid in keys.items():
            how = draw(st.sampled_from(["keep", "keep", "keep", "fuzz", "drop"]))
            if how != "drop":
                lines.append(f"{key} = {draw(valid if how == 'keep' else TOML_VALUES)}")
    lines.append(draw(st.sampled_from(["", "extra = 1", "[extra]"])))
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=study_files())
def test_no_study_file_makes_the_coordinator_fail(
    coordinator: dict[str, bytes | None], text: str
) -> None:
    PEER.act_as("operator", coordinator, label="operator (study files)")
    submitted = SUBMIT.Case(body={"spec": text}).call_and_validate()
    assert submitted.status_code in (201, 400), submitted.text[:500]
    if submitted.status_code == 201:
        study = {"study_id": submitted.json()["study"]}
        assert STATUS.Case(path_parameters=study).call_and_validate().status_code == 200
        served = SPEC.Case(path_parameters=study).call_and_validate()
        assert served.text == text


@pytest.mark.parametrize(
    "model", ["dim = 1.5", "sources = 5", 'kind = ["phenotype-ranker"]', "dim = 1099511627776"]
)
def test_a_study_whose_model_cannot_be_built_is_refused_at_submit(
    tmp_path: Path, model: str
) -> None:
    """Model options of the wrong type or size are refused when the study is submitted (before,
    they were queued and failed, or blocked the queue, when the model was built)."""
    service, peers = _service(tmp_path)
    peer = TlsPeer(create_app(service))
    try:
        peer.act_as("operator", peers)
        text = f'[study]\nid = "bad-model"\nrounds = 1\n\n[model]\n{model}\n'
        submitted = SUBMIT.Case(body={"spec": text}).call_and_validate(app=peer)
        assert submitted.status_code == 400, submitted.text
        assert "[model]" in submitted.json()["detail"]
        assert service.list_studies() == []
    finally:
        service.store.close()
