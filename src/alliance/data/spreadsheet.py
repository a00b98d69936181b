"""Spreadsheet files as rows of cells: CSV, TSV and text files, and Excel workbooks.

The cells mean nothing here; :mod:`alliance.data.tabular` gives them a meaning through the
hospital's table layout. What this module knows is bytes:

- a text file is decoded one physical line at a time, so that a line in another encoding costs
  only its own row: it becomes a :class:`~alliance.data.records.RecordError` of kind
  :attr:`~alliance.data.records.IssueKind.ENCODING` naming the line, the byte and the column, and
  the other lines still load (a bad line inside a quoted cell costs the row that cell belongs
  to). A leading UTF-8 mark is dropped; UTF-16 and other encodings whose newlines are not
  newline bytes are decoded whole instead. ``.tsv`` files are tab-separated whatever the
  delimiter;
- an Excel workbook (``.xlsx``) is read at once (read-only, cached formula values) and closed
  before the first row is handed out; lines are the spreadsheet's row numbers;
- :func:`write_rows` writes either kind atomically (a temporary file in the same folder, synced,
  then moved into place), and the same rows always give the same bytes.
"""

from __future__ import annotations

import codecs
import csv
import datetime
import io
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import openpyxl
from openpyxl.cell import WriteOnlyCell
from openpyxl.utils.exceptions import IllegalCharacterError, InvalidFileException

from alliance.core.errors import ConfigError, DataError
from alliance.core.files import atomic_output
from alliance.data.records import IssueKind, Location, RecordError

__all__ = ["Cell", "Row", "SheetRows", "cell_text", "write_rows"]

Row = tuple[int, Sequence[object]]
"""A row as read: its line (spreadsheet row number) and its cells (text, or Excel values)."""

Cell = str | float
"""A cell as written: text, or a number (written so that it reads back exactly)."""

_TEXT_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
_EXCEL_SUFFIXES = frozenset({".xlsx", ".xlsm"})
_LINES = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_CORE_STAMP = re.compile(rb"(<dcterms:(?:created|modified)[^>]*>)[^<]*(</dcterms:)")


def cell_text(value: object) -> str:
    """A cell as stripped text: Excel's whole numbers without ``.0``, booleans as ``true``."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


class SheetRows:
    """The rows of a text file or an Excel sheet, in order, and the lines that could not be read.

    Parameters
    ----------
    path
        A ``.csv``, ``.tsv``, ``.txt``, ``.xlsx`` or ``.xlsm`` file.
    delimiter
        The cell delimiter of ``.csv`` and ``.txt`` files.
    encoding
        The encoding of text files.
    sheet
        The Excel sheet; the first one if ``None``.

    Raises
    ------
    DataError
        If the file is missing, of an unsupported type, unreadable, not a workbook, lacks the
        sheet, or is UTF-16 read as an 8-bit encoding.
    """

    def __init__(self, path: Path, *, delimiter: str, encoding: str, sheet: str | None) -> None:
        suffix = path.suffix.lower()
        if suffix not in _TEXT_SUFFIXES | _EXCEL_SUFFIXES:
            raise DataError(
                f"{path}: unsupported file type {suffix[:12]!r}; expected .csv, .tsv, .txt or "
                ".xlsx (save older .xls workbooks as .xlsx)"
            )
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        self.path, self.encoding = path, encoding
        self.delimiter = "\t" if suffix == ".tsv" else delimiter
        self.counted = suffix in _TEXT_SUFFIXES
        """Whether a row's number of cells means something (text files; Excel rows are ragged)."""
        self.columns: Sequence[str] = ()
        """The header, once known: names the column of an undecodable byte."""
        self._excel = None if self.counted else _excel_rows(path, sheet)
        self._lines: list[bytes | str] = [] if self._excel is not None else self._read()
        self._errors: list[RecordError] = []
        self._first = 0  # line where the row being read began
        self._broken = False  # a bad line fell inside the row being read (a quoted cell)
        self._between = True

    def __iter__(self) -> Iterator[Row | RecordError]:
        if self._excel is not None:
            yield from self._excel
            return
        reader = csv.reader(self._decoded(), delimiter=self.delimiter)
        while True:
            self._between, self._broken = True, False
            try:
                cells: Sequence[object] = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                cells, self._broken = [], True
                self._errors.append(
                    RecordError(Location(str(self.path), self._first), f"not valid CSV ({exc})")
                )
            yield from self._errors
            self._errors.clear()
            if not self._broken:
                yield self._first, cells
        yield from self._errors

    def _read(self) -> list[bytes | str]:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise DataError(f"{self.path}: cannot read the file: {exc.strerror}") from None
        if "a\n".encode(self.encoding).endswith(b"a\n"):  # newline bytes are newlines
            if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
                raise DataError(
                    f"{self.path}: the file is UTF-16 (it starts with a UTF-16 mark); set "
                    '[data.table] encoding = "utf-16" or save it as UTF-8'
                )
            # A UTF-8 mark says nothing of the other lines: some tools prepend one to any file.
            return [*data.removeprefix(codecs.BOM_UTF8).splitlines(keepends=True)]
        try:
            return [*_LINES.findall(data.decode(self.encoding))]
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{self.path}: byte {exc.start} is not {self.encoding} text; save the file as "
                "UTF-8 or set [data.table] encoding to the one it was saved in"
            ) from None

    def _decoded(self) -> Iterator[str]:
        for number, raw in enumerate(self._lines, start=1):
            try:
                text = raw if isinstance(raw, str) else raw.decode(self.encoding)
            except UnicodeDecodeError as exc:
                assert isinstance(raw, bytes)
                self._errors.append(self._undecodable(number, raw, exc))
                self._broken = self._broken or not self._between
                continue
            if self._between:
                self._first, self._between = number, False
            yield text

    def _undecodable(self, number: int, raw: bytes, exc: UnicodeDecodeError) -> RecordError:
        before = raw[: exc.start].decode(self.encoding, errors="replace")
        where = f"byte 0x{raw[exc.start]:02X} at character {len(before) + 1}"
        if not self._between:
            where += f", inside a quoted cell of the row from line {self._first} (row skipped),"
        elif self.columns:
            cells = next(csv.reader([before], delimiter=self.delimiter), [""])
            if 0 < len(cells) <= len(self.columns):
                where += f" (column {self.columns[len(cells) - 1][:40]!r})"
        advice = (
            'save the file as UTF-8, or set [data.table] encoding = "gbk" (or whichever encoding '
            "it was saved in)"
            if codecs.lookup(self.encoding).name == "utf-8"
            else "save the file in that encoding, or set [data.table] encoding to the one it uses"
        )
        return RecordError(
            Location(str(self.path), number),
            f"{where} is not {self.encoding} text; {advice}",
            kind=IssueKind.ENCODING,
        )


def _excel_rows(path: Path, sheet: str | None) -> list[Row]:
    """Every row of the sheet, read at once so that the workbook is closed before any yield."""
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (OSError, zipfile.BadZipFile, InvalidFileException, KeyError, ValueError):
        raise DataError(f"{path}: cannot be read as an Excel workbook (.xlsx)") from None
    try:
        names: list[str] = list(book.sheetnames)
        if sheet is not None and sheet not in names:
            shown = ", ".join(repr(name) for name in names)
            raise DataError(f"{path}: no sheet {sheet!r}; set [data.table] sheet to one of {shown}")
        found = book[sheet if sheet is not None else names[0]]
        found.reset_dimensions()  # some writers record wrong dimensions; read every cell
        return list(enumerate(found.iter_rows(values_only=True), start=1))
    finally:
        book.close()


def write_rows(
    path: Path,
    header: Sequence[str],
    rows: Iterable[tuple[str, Sequence[Sequence[Cell]]]],
    *,
    delimiter: str,
    encoding: str,
    sheet: str | None,
) -> None:
    """Write a header and rows as a ``.csv``, ``.tsv``, ``.txt`` or ``.xlsx`` file, atomically.

    Parameters
    ----------
    path
        The file to write; its folder must exist.
    header
        The column names.
    rows
        For each record, its name in messages (a case id) and its rows.
    delimiter, encoding
        For text files (``.tsv`` files are tab-separated).
    sheet
        The Excel sheet's name (``"cases"`` if ``None``).

    Raises
    ------
    ConfigError
        If the file type is unsupported.
    DataError
        If a value cannot be written (a character outside the encoding, a control character
        in Excel); the message names the record, and ``path`` keeps what it held before.
    """
    suffix = path.suffix.lower()
    if suffix not in _TEXT_SUFFIXES | {".xlsx"}:
        raise ConfigError(f"{path}: cannot write {suffix[:12]!r}; use .csv, .tsv, .txt or .xlsx")
    with atomic_output(path) as raw:
        if suffix == ".xlsx":
            _write_excel(raw, header, rows, sheet or "cases", where=str(path))
        else:
            delimiter = "\t" if suffix == ".tsv" else delimiter
            _write_text(raw, header, rows, delimiter, encoding, where=str(path))


def _write_text(
    sink: BinaryIO,
    header: Sequence[str],
    rows: Iterable[tuple[str, Sequence[Sequence[Cell]]]],
    delimiter: str,
    encoding: str,
    *,
    where: str,
) -> None:
    encoder = codecs.getincrementalencoder(encoding)()  # one byte-order mark, not one per row
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")

    def flush(who: str, *, final: bool = False) -> None:
        try:
            sink.write(encoder.encode(buffer.getvalue(), final))
        except UnicodeEncodeError:
            raise DataError(
                f"{where}: {who}: a value cannot be written in {encoding}; choose another "
                '[data.table] encoding, such as "utf-8"'
            ) from None
        buffer.seek(0)
        buffer.truncate()

    writer.writerow(header)
    flush("the header")
    for name, record_rows in rows:
        writer.writerows([[repr(c) if isinstance(c, float) else c for c in r] for r in record_rows])
        flush(f"case {name}")
    flush("the end", final=True)


def _write_excel(
    sink: BinaryIO,
    header: Sequence[str],
    rows: Iterable[tuple[str, Sequence[Sequence[Cell]]]],
    sheet_name: str,
    *,
    where: str,
) -> None:
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet(sheet_name)
    sheet.append(list(header))
    for name, record_rows in rows:
        for row in record_rows:
            try:
                sheet.append([_excel_cell(sheet, value) for value in row])
            except IllegalCharacterError:
                raise DataError(
                    f"{where}: case {name}: a value holds a control character Excel cannot store"
                ) from None
    packed = io.BytesIO()
    book.save(packed)
    # openpyxl stamps the time of saving; fixed stamps make the same rows give the same bytes.
    with zipfile.ZipFile(packed) as source, zipfile.ZipFile(sink, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "docProps/core.xml":
                data = _CORE_STAMP.sub(rb"\g<1>1980-01-01T00:00:00Z\g<2>", data)
            item = zipfile.ZipInfo(info.filename, _ZIP_EPOCH)
            out.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)


def _excel_cell(sheet: Any, value: Cell) -> object:
    if isinstance(value, float):
        # openpyxl keeps 16 significant digits; the rare float that needs 17 goes as text.
        return value if float(f"{value:.16g}") == value else repr(value)
    if value.startswith("="):
        cell = WriteOnlyCell(sheet, value=value)
        cell.data_type = "s"  # text, not a formula
        return cell
    return value
