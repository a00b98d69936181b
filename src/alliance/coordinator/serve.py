"""``alliance coordinator serve``: the coordinator's config file and the running service.

:func:`serve` wires the parts: the consortium CA and CRL, the coordinator's signing identity,
the store (SQLite by default, PostgreSQL by URL), the audit log, the study driver thread and
the HTTPS server (mutual TLS 1.3). The store is checked first (:func:`open_checked_store`): a
damaged one is refused, naming what is damaged, rather than served. Everything durable is in
the store, so stopping the process at any moment, even with SIGKILL, and starting it again
continues where it was.

The CRL file (``[tls] crl``) is followed while the service runs: a renewed or extended list is
used from the next handshake on, an older one is refused (the highest CRL number relied on is
kept in ``[tls] crl_state``, by default ``crl-number.json`` beside the audit log, so a restart
does not forget it), and an expired or soon expiring list is logged (``[tls] crl_warn_days``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alliance.coordinator.offline import FilesConfig, OfflineSites
from alliance.coordinator.registry import ModelRegistry
from alliance.coordinator.service import CoordinatorService
from alliance.core.config import TomlFile
from alliance.core.errors import ConfigError
from alliance.crypto.keyfiles import load_signing_key
from alliance.crypto.pki import TrustStore
from alliance.crypto.revocation import DEFAULT_WARN_DAYS, CrlNotices
from alliance.crypto.signing import Signer
from alliance.crypto.tls import follow_crl, server_context
from alliance.protocol.envelope import COORDINATOR
from alliance.store.audit import AuditLog
from alliance.store.sql import SqlStore
from alliance.transport.http import CoordinatorEndpoints, create_app, run_server

__all__ = [
    "CoordinatorConfig",
    "build_service",
    "open_checked_store",
    "open_offline_sites",
    "serve",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoordinatorConfig:
    """A coordinator's ``coordinator.toml`` (paths resolved relative to the file)."""

    path: Path
    federation: str
    host: str
    port: int
    certificate: Path
    key: Path
    signing_key: Path
    ca: Path
    crl: Path | None
    store_url: str
    audit: Path
    files: FilesConfig | None = None
    crl_state: Path | None = None
    crl_warn_days: float = DEFAULT_WARN_DAYS

    @property
    def models_dir(self) -> Path:
        """The model registry's folder: ``models`` beside the audit log."""
        return self.audit.parent / "models"

    @property
    def crl_floor(self) -> Path:
        """The file keeping the highest CRL number this coordinator relied on."""
        return self.crl_state or self.audit.parent / "crl-number.json"

    @classmethod
    def load(cls, path: str | Path) -> CoordinatorConfig:
        """Read and validate ``coordinator.toml``."""
        f = TomlFile(path)
        url = f.string("store", "url", default="sqlite:///coordinator.db")
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix:
            # A relative SQLite path lives beside the config file, wherever it is run from.
            url = prefix + str((f.path.parent / url[len(prefix) :]).resolve())
        warn_days = f.number("tls", "crl_warn_days", default=DEFAULT_WARN_DAYS)
        return cls(
            path=f.path,
            federation=f.string(None, "federation"),
            host=f.string("server", "host", default="0.0.0.0"),  # noqa: S104 - a server
            port=f.integer("server", "port", default=8443, minimum=0),
            certificate=f.required_path("tls", "certificate"),
            key=f.required_path("tls", "key"),
            signing_key=f.required_path("tls", "signing_key"),
            ca=f.required_path("tls", "ca"),
            crl=f.path_of("tls", "crl", optional=True),
            store_url=url,
            audit=f.required_path("audit", "path", must_exist=False),
            files=FilesConfig.from_toml(f),
            crl_state=f.path_of("tls", "crl_state", must_exist=False, optional=True),
            crl_warn_days=warn_days,
        )


def build_service(config: CoordinatorConfig) -> CoordinatorService:
    """The service of ``config`` (store opened, identity and trust loaded)."""
    signer = Signer.from_files(config.certificate, config.signing_key)
    if signer.name != COORDINATOR:
        raise ConfigError(
            f"{config.path}: {config.certificate} is issued to {signer.name!r}, not to the "
            f"coordinator"
        )
    trust = TrustStore.load(config.ca, config.crl, floor=config.crl_floor)
    audit = AuditLog(config.audit, actor=COORDINATOR)
    return CoordinatorService(
        federation=config.federation,
        store=open_checked_store(config.store_url),
        signer=signer,
        trust=trust,
        audit=audit,
        offline=open_offline_sites(config, signer, trust),
        registry=ModelRegistry(config.models_dir, signer=signer, audit=audit),
    )


def open_checked_store(url: str) -> SqlStore:
    """The store at ``url``, checked before anything is served from it.

    Raises
    ------
    StoreDamaged
        If the database file is damaged (SQLite ``quick_check``) or the newest model version of
        a study that has not ended no longer matches its digest; the message names which.
    """
    store = SqlStore(url)
    try:
        checked = store.verify()
    except BaseException:
        store.close()
        raise
    logger.info(
        "coordinator store %s checked: %d current model version(s) intact", store.url, checked
    )
    return store


def open_offline_sites(
    config: CoordinatorConfig, signer: Signer | None = None, trust: TrustStore | None = None
) -> OfflineSites | None:
    """The hospitals on files of ``config`` (``None`` without a ``[files]`` table)."""
    if config.files is None:
        return None
    return OfflineSites.from_config(
        federation=config.federation,
        config=config.files,
        signer=signer or Signer.from_files(config.certificate, config.signing_key),
        key=load_signing_key(config.signing_key),
        trust=trust or TrustStore.load(config.ca, config.crl, floor=config.crl_floor),
    )


def serve(
    config: CoordinatorConfig,
    *,
    ready: Callable[[int], None] | None = None,
    should_exit: Callable[[], bool] | None = None,
    pages: Callable[[Any, CoordinatorEndpoints], None] | None = None,
) -> None:
    """Run the coordinator until interrupted (``ready`` gets the bound port); ``pages`` adds
    the routes of pages served beside the API (the CLI adds the dashboard of
    :mod:`alliance.web.dashboard_app`)."""
    service = build_service(config)
    context = server_context(
        certificate=config.certificate, key=config.key, ca=config.ca, crl=config.crl
    )
    if config.crl is not None:
        follow_crl(context, service.trust, CrlNotices(config.crl, warn_days=config.crl_warn_days))
    driver = threading.Thread(target=service.serve_forever, name="study-driver", daemon=True)
    driver.start()
    try:
        run_server(
            create_app(service, pages=pages),
            host=config.host,
            port=config.port,
            ssl_context=context,
            ready=ready,
            should_exit=should_exit,
        )
    finally:
        service.stop()
        driver.join(timeout=5)
        service.store.close()
        if service.offline is not None:
            service.offline.close()
