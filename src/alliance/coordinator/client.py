"""The operator's side of the coordinator API: submit a study, follow its status and log.

The consortium's data scientist holds an operator certificate (``operator/`` from
``alliance consortium init``); :class:`StudyClient` calls the coordinator with it over mutual
TLS. ``alliance study submit|status|logs|model`` are thin wrappers around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.coordinator.study_check import load_study
from alliance.core.config import TomlFile
from alliance.core.errors import ConfigError
from alliance.core.files import write_atomically
from alliance.crypto.pki import Role, TrustStore
from alliance.crypto.tls import client_context
from alliance.crypto.verifier import MessageVerifier
from alliance.protocol.model_card import ModelCard, verify_card
from alliance.protocol.study import is_study_id, spec_hash
from alliance.transport.http import HttpClient, RetryPolicy

__all__ = ["OperatorConfig", "StudyClient"]


@dataclass(frozen=True)
class OperatorConfig:
    """An operator's ``operator.toml``."""

    path: Path
    federation: str
    coordinator: str
    certificate: Path
    key: Path
    ca: Path

    @classmethod
    def load(cls, path: str | Path) -> OperatorConfig:
        """Read and validate ``operator.toml``."""
        f = TomlFile(path)
        return cls(
            path=f.path,
            federation=f.string(None, "federation"),
            coordinator=f.string(None, "coordinator"),
            certificate=f.required_path("tls", "certificate"),
            key=f.required_path("tls", "key"),
            ca=f.required_path("tls", "ca"),
        )


class StudyClient:
    """Submit and follow studies on the coordinator named in ``config``.

    Network failures are retried for ``give_up_s`` seconds; the coordinator's refusals raise
    at once with its reason.
    """

    def __init__(self, config: OperatorConfig, *, give_up_s: float = 30.0) -> None:
        self.config = config
        self.http = HttpClient(
            config.coordinator,
            ssl_context=client_context(
                certificate=config.certificate, key=config.key, ca=config.ca
            ),
            retry=RetryPolicy(base_s=0.2, cap_s=5.0, give_up_s=give_up_s),
        )

    def close(self) -> None:
        """Close the connection."""
        self.http.close()

    def submit(self, study_file: Path) -> dict[str, Any]:
        """Submit a study file (validated here first); returns its status."""
        text = study_file.read_text(encoding="utf-8")
        load_study(text, where=str(study_file))
        result: dict[str, Any] = self.http.request(
            "POST", "/v1/studies", json={"spec": text}
        ).json()
        return result

    def status(self, study_id: str) -> dict[str, Any]:
        """A study's status and per-round metrics."""
        result: dict[str, Any] = self.http.request("GET", _path(study_id)).json()
        return result

    def cancel(self, study_id: str) -> dict[str, Any]:
        """Cancel a queued or running study; returns its status."""
        result: dict[str, Any] = self.http.request("POST", _path(study_id, "cancel")).json()
        return result

    def studies(self) -> list[dict[str, Any]]:
        """Every study."""
        result: list[dict[str, Any]] = self.http.request("GET", "/v1/studies").json()
        return result

    def spec(self, study_id: str) -> str:
        """The study file's text as the coordinator serves it."""
        return self.http.request("GET", _path(study_id, "spec")).text

    def model(self, study_id: str, version: int | None = None) -> bytes:
        """A finished study's published model file (the newest version unless ``version``)."""
        params = {} if version is None else {"version": version}
        return self.http.request("GET", _path(study_id, "model"), params=params).content

    def model_card(self, study_id: str, version: int | None = None) -> bytes:
        """The published model's newest signed card."""
        params = {} if version is None else {"version": version}
        return self.http.request("GET", _path(study_id, "model", "card"), params=params).content

    def download_model(
        self, study_id: str, out: Path, *, version: int | None = None, force: bool = False
    ) -> tuple[Path, Path, ModelCard]:
        """Download a study's model and card, verify the card (the coordinator's signature
        through the consortium CA, the model's hash, the study's hash and id, the version) and
        only then write ``out`` and its card beside it (``<out stem>.card.json``).

        Raises
        ------
        ConfigError
            ``out`` or its card exists and ``force`` is not set.
        IntegrityError
            The card does not verify (nothing is written).
        """
        card_path = out.with_name(out.stem + ".card.json")
        for path in (out, card_path):
            if path.exists() and not force:
                raise ConfigError(f"{path} exists; choose another --out or pass --force")
        model, card_bytes = self.model(study_id, version), self.model_card(study_id, version)
        trust = TrustStore.load(self.config.ca, None)
        card = verify_card(
            card_bytes,
            model,
            MessageVerifier(trust, role=Role.COORDINATOR),
            spec_hash(self.spec(study_id)),
            study=study_id,
            version=version,
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(out, model)
        write_atomically(card_path, card_bytes)
        return out, card_path, card

    def logs(self, study_id: str, *, after: int = 0) -> list[dict[str, Any]]:
        """A study's log lines after ``after``."""
        result: list[dict[str, Any]] = self.http.request(
            "GET", _path(study_id, "logs"), params={"after": after}
        ).json()
        return result


def _path(study_id: str, *rest: str) -> str:
    """``/v1/studies/<id>/...``, for a well-formed study id only (nothing else reaches a URL)."""
    if not is_study_id(study_id):
        raise ConfigError(
            f"{study_id!r} is not a study id (1-63 lowercase letters, digits or '-'); "
            "`alliance study status` lists the studies"
        )
    return "/".join(("/v1/studies", study_id, *rest))
