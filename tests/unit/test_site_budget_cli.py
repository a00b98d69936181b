"""``alliance site budget`` reports a lost privacy ledger instead of an unspent budget.

The hospital is provisioned with ``alliance consortium init`` (its real ``site.toml``); the
ledger is created by opening it as the agent does, then deleted while its anchor remains.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alliance.cli.app import app
from alliance.cli.consortium import app as consortium_app
from alliance.site.runner import SiteConfig


@pytest.fixture(scope="module")
def site_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("consortium")
    sites = root / "sites.toml"
    sites.write_text(
        '[coordinator]\nhost = "127.0.0.1"\nport = 8443\n\n[[site]]\nid = "bch"\nname = "BCH"\n',
        encoding="utf-8",
    )
    out = root / "consortium"
    result = CliRunner().invoke(
        consortium_app, ["init", "guardian", "--sites", str(sites), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    site = out / "sites" / "bch"
    # Case files are read only by `site run`; the config must name existing ones all the same.
    for name in ("cases.train.jsonl", "cases.test.jsonl"):
        (site / name).write_text("", encoding="utf-8")
    toml = site / "site.toml"
    toml.write_text(toml.read_text().replace('test = ""', 'test = "cases.test.jsonl"'))
    return toml


def budget(config: Path, *extra: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["site", "budget", "--config", str(config), *extra])
    return result.exit_code, result.output


def test_a_hospital_that_never_trained_has_spent_nothing(site_toml: Path) -> None:
    code, output = budget(site_toml)
    assert code == 0, output
    # The terminal wraps the line where the ledger's path ends, which depends on the temp dir.
    assert "no study has spent any of the budget" in " ".join(output.split())


def test_a_deleted_ledger_with_its_anchor_is_reported_as_damage(site_toml: Path) -> None:
    config = SiteConfig.load(site_toml)
    config.open_ledger().close()  # the agent's first start creates the ledger and its anchor
    code, output = budget(site_toml, "--json")
    assert code == 0, output
    assert json.loads(output)["spent"]["epsilon"] == 0.0
    config.ledger_path.unlink()
    for as_json in ((), ("--json",)):
        code, output = budget(site_toml, *as_json)
        assert code == 1, output
        flat = " ".join(output.split())
        assert "no study has spent" not in flat
        assert "missing or empty" in flat
        assert "Restore the ledger from backup" in flat
        assert "Traceback" not in output
    # Nothing was re-created behind the report's back.
    assert not config.ledger_path.exists()
