"""A hospital's ``site.toml``, read and validated once: :class:`SiteConfig`.

Paths are resolved relative to the file. ``[policy] approved_studies`` can be read again while
the agent runs (:meth:`SiteConfig.reread_approved_studies`), so a study the hospital approves
later needs no restart. The agent that runs from it is :mod:`alliance.site.runner`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from alliance.core.config import TomlFile, parse_toml
from alliance.core.errors import ConfigError
from alliance.data.loading import DataConfig
from alliance.privacy.ledger import PrivacyLedger

__all__ = ["ClinicChoice", "FilesFolders", "SiteConfig", "describe"]


class ClinicChoice(Enum):
    """``[clinic] model``: which model the hospital's clinicians use (diagnose, evaluate, the
    clinic page): the federated model as received, or the hospital's personalised one
    (:mod:`alliance.site.personalise`)."""

    FEDERATED = "federated"
    PERSONALISED = "personalised"


@dataclass(frozen=True)
class FilesFolders:
    """``[files]`` of a hospital on files: inbox, outbox and its approved study files."""

    inbox: Path
    outbox: Path
    studies: Path

    def study_text(self, study_id: str) -> str:
        """The text of the study file in :attr:`studies` whose ``[study] id`` is ``study_id``.

        Raises
        ------
        ConfigError
            No such file, or two of them.
        """
        found = []
        files = sorted(self.studies.glob("*.toml")) if self.studies.is_dir() else []
        for file in files:
            text = file.read_text(encoding="utf-8")
            try:
                declared = parse_toml(text, where=str(file)).get("study", {}).get("id")
            except ConfigError:
                continue
            if declared == study_id:
                found.append((file, text))
        if not found:
            raise ConfigError(
                f"no study file with [study] id = {study_id!r} in {self.studies}; put the "
                "study.toml the hospital approved there (its hash must be in [policy] "
                "approved_studies)"
            )
        if len(found) > 1:
            names = ", ".join(str(f) for f, _ in found)
            raise ConfigError(f"several study files declare id {study_id!r}: {names}; keep one")
        return found[0][1]


@dataclass(frozen=True)
class SiteConfig:
    """A hospital's ``site.toml`` (paths resolved relative to the file)."""

    path: Path
    federation: str
    site: str
    coordinator: str
    certificate: Path
    key: Path
    signing_key: Path
    ca: Path
    crl: Path | None
    data: DataConfig
    approved_studies: tuple[str, ...]
    min_cohort: int
    state_dir: Path
    poll_s: float = 25.0
    budget_epsilon: float = 8.0
    budget_delta: float = 1e-5
    files: FilesFolders | None = None
    clinic_model: ClinicChoice = ClinicChoice.FEDERATED

    @property
    def transport(self) -> str:
        """``"https"`` or ``"files"``."""
        return "https" if self.files is None else "files"

    @property
    def ledger_path(self) -> Path:
        """The hospital's privacy ledger."""
        return self.state_dir / "privacy.ledger"

    def open_ledger(self) -> PrivacyLedger:
        """Open (or create) the privacy ledger with this config's budget."""
        return PrivacyLedger.open(
            self.ledger_path, budget_epsilon=self.budget_epsilon, delta=self.budget_delta
        )

    def reread_approved_studies(self) -> tuple[str, ...]:
        """``[policy] approved_studies`` as the file says now (a running agent calls it before
        refusing a study, so a hash added since it started is seen).

        Raises
        ------
        ConfigError
            The file or the list is no longer valid.
        """
        return _approved_studies(TomlFile(self.path))

    @classmethod
    def load(cls, path: str | Path) -> SiteConfig:
        """Read and validate ``site.toml``.

        Raises
        ------
        ConfigError
            Naming the file, table and key that is missing or wrong.
        """
        f = TomlFile(path)
        approved = _approved_studies(f)
        transport = f.string(None, "transport", default="https")
        if transport not in ("https", "files"):
            raise ConfigError(
                f'{f.path}: transport = {transport!r}; use "https" (the default) or "files" '
                "(a hospital without a network connection)"
            )
        files = None
        if transport == "files":
            files = FilesFolders(
                inbox=_folder(f, "inbox"),
                outbox=_folder(f, "outbox"),
                studies=_folder(f, "studies"),
            )
        return cls(
            path=f.path,
            federation=f.string(None, "federation"),
            site=f.string(None, "site"),
            coordinator=f.string(None, "coordinator", default="files" if files else None),
            certificate=f.required_path("tls", "certificate"),
            key=f.path_of("tls", "key", optional=files is not None)  # TLS: online only
            or f.path.parent / "site.key",
            signing_key=f.required_path("tls", "signing_key"),
            ca=f.required_path("tls", "ca"),
            crl=f.path_of("tls", "crl", optional=True),
            data=DataConfig.from_toml(f),
            approved_studies=approved,
            min_cohort=f.integer("policy", "min_cohort", default=20, minimum=1),
            state_dir=f.required_path("state", "dir", must_exist=False),
            budget_epsilon=f.number(
                "privacy", "budget_epsilon", default=8.0, minimum=0.0, exclusive_minimum=True
            ),
            budget_delta=f.number(
                "privacy", "delta", default=1e-5, minimum=0.0, maximum=0.01, exclusive_minimum=True
            ),
            files=files,
            clinic_model=_clinic_choice(f),
        )


def _clinic_choice(f: TomlFile) -> ClinicChoice:
    value = f.string("clinic", "model", default=ClinicChoice.FEDERATED.value)
    try:
        return ClinicChoice(value)
    except ValueError:
        raise ConfigError(
            f'{f.path}: [clinic] model = {value!r}; use "federated" (the model as received, '
            'the default) or "personalised" (corrected at this hospital for its case mix, '
            "built by `alliance site personalise`)"
        ) from None


def _approved_studies(f: TomlFile) -> tuple[str, ...]:
    approved = f.strings("policy", "approved_studies")
    for h in approved:
        if not h.startswith("sha256:") or len(h) != 71:
            raise ConfigError(
                f"{f.path}: [policy] approved_studies: {h!r} is not a study hash; "
                "`alliance study hash study.toml` prints one"
            )
    return approved


def _folder(f: TomlFile, key: str) -> Path:
    """A folder of ``[files]`` (default: its key's name beside the config file)."""
    path = f.path_of("files", key, must_exist=False, optional=True)
    return path if path is not None else f.path.parent / key


def describe(config: SiteConfig) -> dict[str, Any]:
    """What ``alliance site run`` prints at start: the config without secrets."""
    return {
        "site": config.site,
        "federation": config.federation,
        "coordinator": config.coordinator,
        "transport": config.transport,
        "train": config.data.train.location,
        "test": config.data.test.location if config.data.test else None,
        "format": config.data.train.format.value,
        "approved_studies": len(config.approved_studies),
        "min_cohort": config.min_cohort,
        "clinic_model": config.clinic_model.value,
        "privacy_budget": {"epsilon": config.budget_epsilon, "delta": config.budget_delta},
    }
