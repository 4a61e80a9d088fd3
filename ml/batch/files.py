"""Portfolio files in and out, CSV or Parquet, one record batch at a time (never whole).

pyarrow reads and writes both formats: ``pyarrow.csv`` streams a CSV in blocks of about
``chunksize`` rows, every column as text (so cells come out as they went in, and the
conversion rules of :mod:`ml.spec.cells` see what the file says); ``pyarrow.parquet``
reads row groups in batches with their own types. A record the reader cannot take (a
CSV row with the wrong number of fields, a cell that is not UTF-8) is handed on as a
rejected row, with its number, and reading carries on.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ml.batch.arrays import from_numpy, strings

FORMATS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet"}
ERROR_COLUMNS = ("row", "line", "problem")
MIN_BLOCK_BYTES = 1 << 16  # a record longer than a CSV block cannot be read
MAX_BLOCK_BYTES = 1 << 26
NOT_UTF8 = "has bytes that are not UTF-8 text"


def file_format(path: Path, given: str | None = None) -> str:
    """``"csv"`` or ``"parquet"``: ``given``, else from the file's extension."""
    if given:
        if given not in FORMATS.values():
            raise ValueError(f"unknown format {given!r}: use csv or parquet")
        return given
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"cannot tell the format of {path.name} from its extension: name it "
                         ".csv or .parquet, or pass --format")
    return kind


@dataclass
class Batch:
    """Records read from a file.

    Attributes:
        table: the records that were read, every input column.
        rows: each record's 1-based number in the file (rejected records count).
        rejected: records the reader could not take: (row, problem, cells as read,
            or the raw record text when its fields could not be told apart).
        position: how far the file has been read (bytes of a CSV, rows of a Parquet
            file), for the progress bar.
    """

    table: pa.RecordBatch
    rows: np.ndarray
    rejected: list[tuple[int, str, Any]] = field(default_factory=list)
    position: int = 0


class CsvSource:
    """A CSV read in record batches, every column as text; ragged rows are rejected."""

    def __init__(self, path: Path, chunksize: int):
        self.path = path
        self.names = self._header()
        self._ragged: list[tuple[int, str, str]] = []
        parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=self._on_ragged)
        self._file = pa.OSFile(str(path))
        self.total = self._file.size()
        # One reading thread: the row numbers of rejected rows are known only then.
        options = pacsv.ReadOptions(block_size=self._block_size(chunksize), use_threads=False)
        convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in self.names},
                                       check_utf8=False, strings_can_be_null=False)
        try:
            self._reader = _arrow(lambda: pacsv.open_csv(self._file, read_options=options,
                                                         parse_options=parse,
                                                         convert_options=convert), path)
        except ValueError:
            self._file.close()
            raise
        self.schema = self._reader.schema
        self._read = 0  # records handed on, rejected ones included

    def _header(self) -> list[str]:
        probe = _arrow(lambda: pacsv.open_csv(
            str(self.path), parse_options=pacsv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=lambda row: "skip")), self.path)
        names = probe.schema.names
        probe.close()
        return names

    def _block_size(self, chunksize: int) -> int:
        with open(self.path, "rb") as fh:
            head = fh.read(1 << 20)
        per_row = len(head) / max(1, head.count(b"\n"))
        return int(min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, chunksize * per_row)))

    def _on_ragged(self, row: Any) -> str:
        """pyarrow's invalid-row handler: note the row, skip it (``number`` counts the header)."""
        self._ragged.append((row.number - 1, f"has {row.actual_columns} fields, the header "
                             f"has {row.expected_columns}", row.text))
        return "skip"

    def __iter__(self) -> Iterator[Batch]:
        while True:
            try:
                table = self._reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as exc:
                raise ValueError(f"cannot read {self.path.name} after row {self._read}: "
                                 f"{exc} (a record longer than a block? raise --chunksize)"
                                 ) from None
            yield self._batch(table)
        if self._ragged:  # ragged rows after the last good one
            empty = pa.RecordBatch.from_arrays([strings([]) for _ in self.names],
                                               schema=self.schema)
            yield self._batch(empty, last=True)

    def _batch(self, table: pa.RecordBatch, last: bool = False) -> Batch:
        """Number a batch's records: the ragged rows between them are the numbers skipped."""
        pending = sorted(self._ragged)
        n, k = table.num_rows, 0
        # The n-th good record is number read + n + k, k the ragged rows before it.
        while k < len(pending) and (last or pending[k][0] <= self._read + n + k):
            k += 1
        ragged, self._ragged[:] = pending[:k], pending[k:]
        end = self._read + n + k
        taken = np.array([r[0] for r in ragged], dtype=np.int64)
        rows = np.setdiff1d(np.arange(self._read + 1, end + 1), taken, assume_unique=True)
        self._read = end
        batch, rows, rejected = utf8_checked(table, rows)
        return Batch(batch, rows, [*ragged, *rejected], self._file.tell())

    def close(self) -> None:
        self._reader.close()
        self._file.close()


class ParquetSource:
    """A Parquet file read in record batches of ``chunksize`` rows, with its own types."""

    def __init__(self, path: Path, chunksize: int):
        self.path = path
        self._file = _arrow(lambda: pq.ParquetFile(str(path)), path)
        self.schema = self._file.schema_arrow
        self.names = self.schema.names
        self.total = self._file.metadata.num_rows
        self.chunksize = max(1, chunksize)
        self._read = 0

    def __iter__(self) -> Iterator[Batch]:
        batches = self._file.iter_batches(batch_size=self.chunksize)
        while True:
            table = _arrow(lambda: next(batches, None), self.path)
            if table is None:
                return
            rows = np.arange(self._read + 1, self._read + table.num_rows + 1)
            self._read += table.num_rows
            yield Batch(*utf8_checked(table, rows), position=self._read)

    def close(self) -> None:
        self._file.close()


def open_source(path: Path, kind: str, chunksize: int) -> CsvSource | ParquetSource:
    """The reader of ``path`` in format ``kind``."""
    if not path.is_file():
        raise FileNotFoundError(f"no input file {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"the input {path.name} is empty (not even a header)")
    source = (CsvSource if kind == "csv" else ParquetSource)(path, chunksize)
    twice = sorted({n for n in source.names if source.names.count(n) > 1})
    if twice:
        source.close()
        raise ValueError(f"the input's header names columns {twice} more than once")
    return source


def utf8_checked(table: pa.RecordBatch,
                 rows: np.ndarray) -> tuple[pa.RecordBatch, np.ndarray, list[tuple[int, str, Any]]]:
    """The records whose text is valid UTF-8, their numbers, and the others rejected.

    The CSV reader does not check (one bad byte would stop the whole file); one pass
    over the batch does, and only a batch that fails is looked at cell by cell.
    """
    try:
        table.validate(full=True)
        return table, rows, []
    except pa.ArrowInvalid:
        pass
    bad = np.zeros(table.num_rows, dtype=bool)
    cells = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            binary = column.view(pa.large_binary() if pa.types.is_large_string(column.type)
                                 else pa.binary()).to_pylist()
            bad |= [c is not None and not _is_utf8(c) for c in binary]
            cells.append([_text(c) for c in binary])
        else:
            cells.append(column.to_pylist())
    rejected = [(int(rows[i]), NOT_UTF8, [str(col[i]) for col in cells])
                for i in np.flatnonzero(bad)]
    return table.take(from_numpy(np.flatnonzero(~bad))), rows[~bad], rejected


def _is_utf8(cell: bytes) -> bool:
    try:
        cell.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _text(cell: bytes | None) -> str:
    return "" if cell is None else cell.decode("utf-8", "replace")


def _arrow(opener: Any, path: Path) -> Any:
    """``opener()``, its pyarrow errors as one-line ``ValueError``s naming the file."""
    try:
        return opener()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"cannot read {path.name}: {reason}") from None


class Sink:
    """The scored records, written batch by batch as CSV or Parquet.

    Parquet keeps dictionary-encoded columns as they are; for CSV they are decoded
    first, which pyarrow's CSV writer does faster itself than casting them.
    """

    def __init__(self, path: Path, kind: str, schema: pa.Schema):
        self.path = path
        self._decode = kind == "csv"
        if self._decode:
            schema = pa.schema([pa.field(f.name, f.type.value_type)
                                if pa.types.is_dictionary(f.type) else f for f in schema])
        writer = pacsv.CSVWriter if self._decode else pq.ParquetWriter
        self._writer: Any = self._check(lambda: writer(str(path), schema))

    def write(self, batch: pa.RecordBatch) -> None:
        """Append records (of the schema given at the start)."""
        if not batch.num_rows:
            return
        if self._decode:
            batch = pa.RecordBatch.from_arrays(
                [c.dictionary.take(c.indices) if pa.types.is_dictionary(c.type) else c
                 for c in batch.columns], names=batch.schema.names)
        self._check(lambda: self._writer.write_batch(batch))

    def _check(self, call: Any) -> Any:
        try:
            return call()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"cannot write {self.path.name}: {str(exc).splitlines()[0]} "
                             "(a column CSV cannot hold? write Parquet)") from None

    def close(self) -> None:
        self._writer.close()


class LineFinder:
    """The line of the file where a CSV record starts, for the errors file.

    pyarrow numbers records, not lines (a quoted newline or a blank line makes them
    differ), so the ``csv`` module follows the file up to each rejected record, on
    demand: a file without rejected rows is never read twice.
    """

    def __init__(self, path: Path):
        self.path = path
        self._handle: Any = None
        self._reader: Any = None
        self._record = 0
        self._start = 0
        self._next_line = 1

    def line(self, row: int) -> int | None:
        """The line where record ``row`` (1-based, after the header) starts; rows ascending."""
        try:
            if self._reader is None:
                self._handle = open(self.path, encoding="utf-8-sig", errors="replace",
                                    newline="")
                self._reader = csv.reader(self._handle)
                next(self._reader, None)
                self._next_line = self._reader.line_num + 1
            while self._record < row:
                start = self._next_line
                record = next(self._reader)
                self._next_line = self._reader.line_num + 1
                if record:  # a blank line is no record, for pyarrow either
                    self._record += 1
                    self._start = start
            return self._start
        except (StopIteration, csv.Error):  # a field past csv's size limit, say
            return None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()


class ErrorLog:
    """``<out>.errors.csv``: the rejected records, created on the first, removed if none."""

    def __init__(self, path: Path, names: list[str], lines: LineFinder | None):
        self.path = path
        self.names = names
        self.lines = lines
        self.count = 0
        self._fh: Any = None
        self._writer: Any = None
        if path.exists():
            path.unlink()

    def write(self, rejected: list[tuple[int, str, Any]]) -> None:
        """Rows ``(row, problem, cells or raw text)``, in row order."""
        for row, problem, cells in sorted(rejected, key=lambda r: r[0]):
            if self._fh is None:
                self._fh = open(self.path, "w", encoding="utf-8", newline="")
                self._writer = csv.writer(self._fh, lineterminator="\n")
                self._writer.writerow([*ERROR_COLUMNS, *self.names])
            line = self.lines.line(row) if self.lines is not None else None
            head = [row, "" if line is None else line, problem]
            if isinstance(cells, str):  # a raw record: kept as it was
                text = io.StringIO()
                csv.writer(text, lineterminator="").writerow(head)
                self._fh.write(text.getvalue() + "," + cells + "\n")
            else:
                self._writer.writerow([*head, *cells])
            self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self.lines is not None:
            self.lines.close()
