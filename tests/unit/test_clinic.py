"""The clinician's page: which model it serves, its routes, and what it never logs.

Routes are called through FastAPI's TestClient over a real ranker kept in a real hospital
store; the server test runs the real uvicorn server of :func:`serve_clinic` on a free port.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.clinic_site import CARD, hospital_site_toml, write_model
from typer.testing import CliRunner

from alliance.cli.app import app as cli_app
from alliance.core.errors import ConfigError, DataError, ModelError
from alliance.data.ontology import Ontology
from alliance.data.suggest import LabelIndex
from alliance.models.features import PhenotypeFeatures
from alliance.site.config import SiteConfig
from alliance.site.model_store import ModelStore
from alliance.web.clinic import (
    RESEARCH_NOTICE,
    Clinic,
    load_clinic_model,
)
from alliance.web.clinic_app import create_clinic_app, serve_clinic

with warnings.catch_warnings():
    # Starlette 1.x prefers its httpx2 fork for TestClient, which the project does not install.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

SEIZURE, GDD = "HP:0001250", "HP:0001263"
UNKNOWN = "HP:9999999"


@pytest.fixture(scope="module")
def site_toml(tmp_path_factory: pytest.TempPathFactory, features: PhenotypeFeatures) -> Path:
    return hospital_site_toml(tmp_path_factory.mktemp("hospital"), with_model=features)


@pytest.fixture(scope="module")
def clinic(site_toml: Path, ontology: Ontology) -> Clinic:
    return Clinic(load_clinic_model(config=site_toml, ontology=ontology), LabelIndex(ontology))


@pytest.fixture(scope="module")
def client(clinic: Clinic) -> Iterator[TestClient]:
    with TestClient(create_clinic_app(clinic)) as test_client:
        yield test_client


def test_the_newest_model_of_the_hospital_is_served_with_its_card(clinic: Clinic) -> None:
    model = clinic.model.describe()
    assert (model["study"], model["version"]) == ("rare-2026", 3)
    assert model["source"] == "study rare-2026 version 3"
    assert model["notices"][0] == RESEARCH_NOTICE
    assert any(CARD["not_intended_use"] in text for text in model["notices"])


def test_an_unreadable_card_still_shows_the_research_notice(
    tmp_path: Path, site_toml: Path, ontology: Ontology
) -> None:
    state = SiteConfig.load(site_toml).state_dir
    newest = ModelStore(state).newest()
    assert newest is not None
    copy = site_toml.with_name("site-unreadable-card.toml")
    copy.write_text(site_toml.read_text().replace('dir = "state"', f'dir = "{tmp_path}/state"'))
    config = SiteConfig.load(copy)
    assert config.state_dir != state
    ModelStore(config.state_dir).add("s", 1, newest.model_path.read_bytes(), b"\x00 not json")
    described = load_clinic_model(config=copy, ontology=ontology).describe()
    assert described["notices"] == [RESEARCH_NOTICE]
    assert (described["study"], described["version"]) == ("s", 1)


def test_a_model_file_is_served_without_a_card(
    tmp_path: Path, features: PhenotypeFeatures, ontology: Ontology
) -> None:
    path = write_model(tmp_path / "demo.alliance", features)
    described = load_clinic_model(model=path, ontology=ontology).describe()
    assert described["source"] == "demo.alliance"
    assert (described["study"], described["version"]) == (None, None)
    assert described["notices"] == [RESEARCH_NOTICE]
    assert described["diseases"] == features.n_diseases


@pytest.mark.parametrize(
    ("card", "shown"),
    [
        ({"card": {"intended_use": "research", "not_intended_use": "care"}}, "research. care."),
        ({"notice": "synthetic cohort"}, "synthetic cohort"),
        ({"notice": 3}, None),
        ([1, 2], None),
    ],
)
def test_the_card_beside_a_model_file_gives_its_notice(
    tmp_path: Path, features: PhenotypeFeatures, ontology: Ontology, card: object, shown: str | None
) -> None:
    path = write_model(tmp_path / "downloaded.alliance", features)
    path.with_name("downloaded.card.json").write_text(json.dumps(card))
    notices = load_clinic_model(model=path, ontology=ontology).notices
    assert notices[0] == RESEARCH_NOTICE
    assert list(notices[1:]) == ([] if shown is None else [shown])


def test_a_hospital_without_a_model_or_a_wrong_choice_is_told_what_to_do(
    tmp_path: Path, ontology: Ontology, site_toml: Path
) -> None:
    empty = hospital_site_toml(tmp_path, with_model=None)
    with pytest.raises(ModelError, match="has received no model yet"):
        load_clinic_model(config=empty, ontology=ontology)
    with pytest.raises(ConfigError, match="give exactly one of"):
        load_clinic_model(ontology=ontology)
    with pytest.raises(ConfigError, match="both were given"):
        load_clinic_model(config=site_toml, model=tmp_path / "m.alliance", ontology=ontology)
    result = CliRunner().invoke(cli_app, ["site", "clinic", "--config", str(empty)])
    assert result.exit_code == 1, result.output
    assert "has received no model yet" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_the_page_and_its_assets_are_served_under_a_same_origin_policy(
    client: TestClient,
) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert 'src="/static/clinic.js"' in page.text
    assert "http://" not in page.text
    assert "https://" not in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "connect-src 'self'" in policy
    for name in ("clinic.js", "clinic.css"):
        asset = client.get(f"/static/{name}")
        assert asset.status_code == 200
        assert asset.text
        assert "http" not in asset.text, f"{name} must name no other host"
    assert client.get("/static/other.js").status_code == 404
    assert client.get("/docs").status_code == 404  # FastAPI's docs load from a CDN


def terms(client: TestClient, text: str) -> list[dict[str, Any]]:
    answer = client.post("/api/terms", json={"q": text})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["terms"]
    return found


def test_terms_are_found_by_english_name_with_their_chinese_label(client: TestClient) -> None:
    found = terms(client, "seizures")
    assert found[0]["hpo_id"] == SEIZURE
    assert found[0]["name"] == "Seizure"
    assert found[0]["name_zh"] == "癫痫发作"
    assert len(found) > 1


def test_terms_are_found_by_chinese_label(client: TestClient) -> None:
    assert terms(client, "全面发育迟缓")[0]["hpo_id"] == GDD
    hypotonia = terms(client, "肌张力低下")[0]  # the official label says 肌张力减退
    assert (hypotonia["hpo_id"], hypotonia["name"]) == ("HP:0001252", "Hypotonia")
    assert hypotonia["name_zh"] == "肌张力减退"


def test_terms_are_found_by_id_and_obsolete_ids_are_followed(client: TestClient) -> None:
    (found,) = terms(client, " hp:0001263 ")
    assert (found["hpo_id"], found["name"], found["name_zh"]) == (
        GDD,
        "Global developmental delay",
        "全面发育迟缓",
    )
    (moved,) = terms(client, "HP:0002355")  # obsolete "Difficulty walking"
    assert moved["hpo_id"] == "HP:0001288"
    assert terms(client, "   ") == []


def test_a_bad_search_is_a_json_error_the_page_can_show(client: TestClient) -> None:
    answer = client.post("/api/terms", json={"q": UNKNOWN})
    assert answer.status_code == 400
    assert UNKNOWN in answer.json()["error"]
    too_long = client.post("/api/terms", json={"q": "x" * 201})
    assert too_long.status_code == 422
    assert too_long.json()["error"].startswith("bad request: q:")


def test_the_differential_names_findings_for_and_against(
    client: TestClient, features: PhenotypeFeatures
) -> None:
    first = client.post("/api/differential", json={"observed": [SEIZURE, GDD], "top": 1})
    top = first.json()["candidates"][0]
    disease = next(d for d in features.catalogue.diseases if d.id == top["disease_id"])
    # A finding of the leading disease's own profile, excluded: evidence against it.
    against = sorted(set(disease.phenotypes) - {SEIZURE, GDD})[0]
    answer = client.post(
        "/api/differential",
        json={"observed": [SEIZURE, GDD], "excluded": [against], "top": 50},
    )
    assert answer.status_code == 200, answer.text
    data = answer.json()
    candidates = data["candidates"]
    assert [c["rank"] for c in candidates] == list(range(1, 51))
    probabilities = [c["probability"] for c in candidates]
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0
    for c in candidates:
        assert c["disease_id"].startswith("OMIM:")
        assert c["name"]
        named = {t["id"] for t in c["supporting"] + c["against"]}
        assert named <= {SEIZURE, GDD, against}
        assert all(t["name"] for t in c["supporting"] + c["against"])
    same = next(c for c in candidates if c["disease_id"] == top["disease_id"])
    assert against in {t["id"] for t in same["against"]}
    assert {SEIZURE, GDD} <= {t["id"] for t in same["supporting"]}
    by_id = {t["id"]: t for c in candidates for t in c["supporting"] + c["against"]}
    assert by_id[GDD]["name_zh"] == "全面发育迟缓"
    assert by_id[SEIZURE]["name"] == "Seizure"
    assert [t["id"] for t in data["observed"]] == [SEIZURE, GDD]
    assert [t["id"] for t in data["excluded"]] == [against]
    assert data["model"]["version"] == 3


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"observed": [SEIZURE, UNKNOWN]}, 400, UNKNOWN),
        ({"observed": []}, 400, "at least one observed"),
        ({"observed": [SEIZURE], "excluded": [SEIZURE]}, 400, "both observed and excluded"),
        ({"observed": "HP:0001250"}, 422, "bad request: observed"),
        ({"observed": [SEIZURE], "top": 0}, 422, "bad request: top"),
        ({"observed": [SEIZURE] * 101}, 422, "bad request: observed"),
        ({"observed": [SEIZURE], "note": "x" * 70_000}, 413, "request body over 65536 bytes"),
    ],
)
def test_bad_findings_are_a_json_error_the_page_can_show(
    client: TestClient, body: dict[str, Any], status: int, message: str
) -> None:
    answer = client.post("/api/differential", json=body)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    assert "Traceback" not in answer.text


def test_what_the_clinician_types_is_never_logged(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    typed = ("hypotonia of the trunk", "全面发育迟缓", "HP:0001252", "HP:0004322", UNKNOWN)
    with caplog.at_level(logging.DEBUG):
        for text in typed[:2]:
            client.post("/api/terms", json={"q": text})
        client.post("/api/differential", json={"observed": [typed[2]], "excluded": [typed[3]]})
        client.post("/api/differential", json={"observed": [typed[4]]})
        client.post("/api/differential", json={"observed": typed[4]})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for text in typed:
        assert text not in logged


def test_the_real_server_logs_no_request_and_refuses_a_port_in_use(
    clinic: Clinic, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    bound: list[int] = []
    ready = threading.Event()

    def on_ready(port: int) -> None:
        bound.append(port)
        ready.set()

    kwargs: dict[str, Any] = {"port": 0, "ready": on_ready, "should_exit": stop.is_set}
    server = threading.Thread(target=serve_clinic, args=(clinic,), kwargs=kwargs, daemon=True)
    with caplog.at_level(logging.DEBUG):
        server.start()
        assert ready.wait(30)
        base = f"http://127.0.0.1:{bound[0]}"
        try:
            assert httpx.get(f"{base}/").status_code == 200
            answer = httpx.post(f"{base}/api/terms", json={"q": "hypotonia"})
            assert answer.json()["terms"][0]["hpo_id"] == "HP:0001252"
            answer = httpx.post(f"{base}/api/differential", json={"observed": ["HP:0001252"]})
            assert answer.status_code == 200
            with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{bound[0]}"):
                serve_clinic(clinic, port=bound[0])
            with pytest.raises(ConfigError, match="not an address of this machine"):
                serve_clinic(clinic, host="no-such-host.invalid", port=0)
        finally:
            stop.set()
            server.join(10)
    # The server's loggers only: httpx, the test's own client, names what it sent.
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    logged = "\n".join(r.getMessage() for r in server_side)
    assert "hypotonia" not in logged
    assert "HP:0001252" not in logged
    assert "/api/terms" not in logged, "uvicorn's access log must be off"
    with socket.create_server(("127.0.0.1", bound[0])):  # released on exit
        pass


def test_diagnoses_through_the_library_equal_the_routes(clinic: Clinic, client: TestClient) -> None:
    direct = clinic.differential([SEIZURE], top=3)
    routed = client.post("/api/differential", json={"observed": [SEIZURE], "top": 3}).json()
    assert json.loads(json.dumps(direct)) == routed["candidates"]
    with pytest.raises(DataError, match="at most 100"):
        clinic.differential([SEIZURE] * 60, [GDD] * 60)
