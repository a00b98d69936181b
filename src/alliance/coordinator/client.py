"""The operator's side of the coordinator API: submit a study, follow its status and log.

The consortium's data scientist holds an operator certificate (``operator/`` from
``alliance consortium init``); :class:`StudyClient` calls the coordinator with it over mutual
TLS. ``alliance study submit|status|logs`` are thin wrappers around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.coordinator.study_check import load_study
from alliance.core.config import TomlFile
from alliance.core.errors import ConfigError
from alliance.crypto.tls import client_context
from alliance.protocol.study import is_study_id
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
