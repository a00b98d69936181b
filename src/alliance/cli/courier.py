"""``alliance site|coordinator export|import``: bundles to and from the courier's medium.

For hospitals that allow no network connection (``transport = "files"`` in ``site.toml``,
``[files]`` in ``coordinator.toml``):

- ``alliance coordinator export --site X --to DIR``: the bundles waiting for hospital X;
- ``alliance site import DIR``: check them at the hospital and put them in its inbox
  (``alliance site run --until-idle`` then works through it);
- ``alliance site export --to DIR``: the hospital's replies;
- ``alliance coordinator import DIR``: check them and hand them to the coordinator service.

Each bundle exported or imported, and each one refused with its reason, is a line in the
party's audit log. A bundle imported twice is imported once. The checks and folder moves are
:mod:`alliance.transport.courier`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from alliance.cli.common import console, errors
from alliance.cli.deploy import ConfigOption, coordinator_app, site_app
from alliance.core.errors import ConfigError
from alliance.store.audit import AuditLog
from alliance.transport.courier import (
    Exported,
    Imported,
    ImportOutcome,
    bundle_files,
    export_bundles,
    import_bundles,
)

if TYPE_CHECKING:
    from alliance.coordinator.offline import OfflineSites
    from alliance.coordinator.serve import CoordinatorConfig
    from alliance.site.runner import FilesFolders, SiteConfig

__all__: list[str] = []

Sources = Annotated[
    list[Path], typer.Argument(help="Bundle files, or folders of them (e.g. the USB key).")
]
Target = Annotated[Path, typer.Option("--to", help="The courier's folder (e.g. the USB key).")]


def _audit_exports(audit: AuditLog, exported: Iterable[Exported]) -> list[Exported]:
    done = []
    for e in exported:
        h = e.header
        audit.append(
            "bundle_exported",
            recipient=h.recipient,
            study=h.study,
            round=h.round,
            stage=h.stage,
            file=e.name,
            bytes=e.size,
            sha256=e.digest,
            to=str(e.target.parent),
        )
        done.append(e)
    return done


def _audit_imports(audit: AuditLog, results: list[Imported]) -> None:
    for r in results:
        h = r.header
        where = {} if h is None else {"sender": h.sender, "study": h.study, "round": h.round}
        details = {**where, "file": r.source.name, "bytes": r.size, "sha256": r.digest}
        if h is not None:
            details["stage"] = h.stage
        if r.outcome is ImportOutcome.IMPORTED:
            audit.append("bundle_imported", **details)
        elif r.outcome is ImportOutcome.ALREADY:
            audit.append("bundle_import_skipped", **details, reason=r.reason)
        else:
            audit.append("bundle_refused", **details, reason=r.reason)


def _print_exports(exported: list[Exported], source: Path, target: Path) -> None:
    if not exported:
        console.print(f"nothing to export: {escape(str(source))} holds no bundle")
        return
    table = Table("For", "Study", "Round", "Stage", "Bytes", "Bundle")
    table.columns[-1].overflow = "fold"
    for e in exported:
        h = e.header
        table.add_row(
            *map(escape, (h.recipient, h.study, str(h.round), h.stage)),
            f"{e.size:,}",
            escape(e.target.name),
        )
    console.print(table)
    console.print(
        f"{len(exported)} bundle(s) written to {escape(str(target))}; copies kept in "
        f"{escape(str(source / 'sent'))}"
    )


def _print_imports(results: list[Imported], inbox: Path) -> None:
    if not results:
        console.print("no bundle found in what was given")
        return
    table = Table("Result", "From", "Study", "Round", "Stage", "File", "Reason")
    table.columns[-2].overflow = "fold"
    for r in results:
        h = r.header
        colour = {"imported": "green", "refused": "red"}.get(r.outcome.value, "yellow")
        table.add_row(
            f"[{colour}]{r.outcome.value}[/]",
            "" if h is None else escape(h.sender),
            "" if h is None else escape(h.study),
            "" if h is None else str(h.round),
            "" if h is None else escape(h.stage),
            escape(r.source.name),
            escape(r.reason),
        )
    console.print(table)
    counts = {o: sum(r.outcome is o for r in results) for o in ImportOutcome}
    console.print(
        f"{counts[ImportOutcome.IMPORTED]} imported into {escape(str(inbox))}, "
        f"{counts[ImportOutcome.ALREADY]} already imported, "
        f"{counts[ImportOutcome.REFUSED]} refused"
    )


def _fail_if_refused(results: list[Imported]) -> None:
    if any(r.outcome is ImportOutcome.REFUSED for r in results):
        raise typer.Exit(2)


@site_app.command("export")
def site_export(to: Target, config: ConfigOption = Path("site.toml")) -> None:
    """Move the hospital's replies from its outbox to the courier's folder."""
    from alliance.site.runner import SiteConfig

    with errors():
        cfg = SiteConfig.load(config)
        files = _files_of(cfg)
        audit = AuditLog(cfg.state_dir / "audit.log", actor=cfg.site)
        exported = _audit_exports(audit, export_bundles(files.outbox, to))
    _print_exports(exported, files.outbox, to)


@site_app.command("import")
def site_import(sources: Sources, config: ConfigOption = Path("site.toml")) -> None:
    """Check the coordinator's bundles and put them in the hospital's inbox."""
    from alliance.crypto.keyfiles import load_signing_key
    from alliance.crypto.pki import Role, TrustStore
    from alliance.crypto.verifier import MessageVerifier
    from alliance.protocol.bundles import DEFAULT_MAX_BUNDLE_BYTES, open_bundle
    from alliance.site.runner import SiteConfig
    from alliance.transport.files import BundleLedger

    with errors():
        cfg = SiteConfig.load(config)
        files = _files_of(cfg)
        verify = MessageVerifier(TrustStore.load(cfg.ca, cfg.crl), role=Role.COORDINATOR)
        key = load_signing_key(cfg.signing_key)
        ledger = BundleLedger(cfg.state_dir / "bundles.db")
        try:
            results = import_bundles(
                bundle_files(sources),
                inbox=files.inbox,
                open_one=lambda data: open_bundle(
                    data,
                    verify=verify,
                    recipient=cfg.site,
                    recipient_key=key,
                    federation=cfg.federation,
                ),
                ledger=ledger,
                max_bytes=DEFAULT_MAX_BUNDLE_BYTES,
            )
        finally:
            ledger.close()
        _audit_imports(AuditLog(cfg.state_dir / "audit.log", actor=cfg.site), results)
    _print_imports(results, files.inbox)
    _fail_if_refused(results)


def _files_of(cfg: SiteConfig) -> FilesFolders:
    if cfg.files is None:
        raise ConfigError(
            f'{cfg.path}: transport is "https"; export and import are for a hospital on files '
            '(set transport = "files" and its [files] folders)'
        )
    return cfg.files


@coordinator_app.command("export")
def coordinator_export(
    site: Annotated[str, typer.Option("--site", help="The hospital on files.")],
    to: Target,
    config: ConfigOption = Path("coordinator.toml"),
) -> None:
    """Move the bundles waiting for a hospital on files to the courier's folder."""
    from alliance.coordinator.serve import CoordinatorConfig, open_offline_sites
    from alliance.protocol.envelope import COORDINATOR

    with errors():
        cfg = CoordinatorConfig.load(config)
        offline = _offline(cfg, open_offline_sites(cfg))
        try:
            outbox = offline.outbox(site)
        finally:
            offline.close()
        audit = AuditLog(cfg.audit, actor=COORDINATOR)
        exported = _audit_exports(audit, export_bundles(outbox, to))
    _print_exports(exported, outbox, to)


@coordinator_app.command("import")
def coordinator_import(sources: Sources, config: ConfigOption = Path("coordinator.toml")) -> None:
    """Check bundles from hospitals on files and hand them to the coordinator service."""
    from alliance.coordinator.serve import CoordinatorConfig, open_offline_sites
    from alliance.protocol.bundles import DEFAULT_MAX_BUNDLE_BYTES
    from alliance.protocol.envelope import COORDINATOR

    with errors():
        cfg = CoordinatorConfig.load(config)
        offline = _offline(cfg, open_offline_sites(cfg))
        try:
            results = import_bundles(
                bundle_files(sources),
                inbox=offline.inbox,
                open_one=offline.open_one,
                ledger=offline.ledger,
                max_bytes=DEFAULT_MAX_BUNDLE_BYTES,
            )
        finally:
            offline.close()
        _audit_imports(AuditLog(cfg.audit, actor=COORDINATOR), results)
    _print_imports(results, offline.inbox)
    _fail_if_refused(results)


def _offline(cfg: CoordinatorConfig, offline: OfflineSites | None) -> OfflineSites:
    if offline is None:
        raise ConfigError(
            f"{cfg.path} has no [files] table: no hospital exchanges files with this "
            "coordinator; add [files] dir and [files.sites] (see the README)"
        )
    return offline
