"""Batch scoring: a portfolio CSV in, the same rows with their scores out, at CSV speed.

``python -m ml score --model DIR in.csv out.csv`` streams the input in chunks, scores
each valid row with the same :class:`ml.serving.predictor.Predictor` the API uses, and writes
each input line unchanged followed by ``probability_of_default`` (12 decimals),
``score`` (points, 2 decimals, zero-padded: :func:`_score_digits`), ``decision``,
``risk_grade`` and ``reason_1`` … ``reason_4`` (feature names, empty when
there are fewer reasons or with ``--no-reasons``). Rows that cannot be scored (unknown
category, not a number, out of range, missing where the spec forbids it, wrong number
of fields) go to ``<out>.errors.csv`` with their row and line numbers and the problem,
and scoring carries on. Cells are read as :func:`ml.training.data.read_raw` reads them and
converted by :func:`ml.training.data.convert_column`, so raw CSV spellings and codes both work.

Why not ``pandas.read_csv(chunksize=…)`` / ``to_csv``: on the 2-vCPU nodes this runs
on they manage about 250k and 140k rows/s on their own (a Python string per cell, a
formatted row per line), so together with conversion the naive pipeline does ~25k
rows/s. Here a chunk stays bytes: the field boundaries (commas and newlines outside
quotes) are found in one pass, each feature cell is looked up by its bytes in its
column's cache, only cells not seen before in the file become strings and go through
``convert_column``, and the output is the input bytes with the score columns inserted
before each line end. Those three loops over bytes run in C (``ml/batch/_csvbytes.c``) when
it is built, else in numpy (cells grouped by hashing their bytes in 8-byte words,
every cell then checked word for word against its group, so a hash collision can only
cost speed); both write the same bytes. A chunk the fast tokenizer does not accept
(blank lines, ragged rows, stray quotes) is read with the ``csv`` module instead; the
results are the same, only slower.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ml.training.data import MISSING_TOKENS, convert_column
from ml.serving.predictor import OUTPUT_COLUMNS, Predictor, Scores
from ml.spec.schema import CATEGORICAL, Feature

try:  # the C byte work (ml/batch/_csvbytes.c), built by `pip install`; optional
    from ml.batch import _csvbytes
except ImportError:  # pragma: no cover - the tests run the numpy versions by hiding it
    _csvbytes = None

PD_DECIMALS = 12
# Chunks are cut near this size whatever the chunksize: numpy then works on data that
# is still in the CPU caches (measured 1.6x faster than 13 MB chunks, and faster than
# 512 KiB or 2 MiB ones).
BLOCK_BYTES = 1 << 20
ERROR_COLUMNS = ("row", "line", "problem")
_QUOTE, _COMMA, _NEWLINE, _CR = 34, 44, 10, 13


def score_csv(model_dir: str | Path, in_csv: str | Path, out_csv: str | Path,
              chunksize: int = 50_000, progress: bool = True, reasons: bool = True,
              predictor: Predictor | None = None) -> dict[str, Any]:
    """Score every row of ``in_csv`` into ``out_csv``; bad rows go to ``<out_csv>.errors.csv``.

    Args:
        model_dir: an artifact directory or a models directory with ``LATEST``.
        in_csv: the portfolio, with a header naming at least the spec's feature columns.
        out_csv: where the scored rows go (overwritten).
        chunksize: at most this many rows are scored at once; chunks are also kept
            near :data:`BLOCK_BYTES` so that they stay in the CPU caches.
        progress: show a tqdm progress bar on stderr.
        reasons: fill ``reason_1`` … ``reason_4`` (one what-if row per feature that
            differs from the baseline: roughly 10 times the model work).
        predictor: an already loaded predictor (then ``model_dir`` is ignored).

    Returns:
        ``{"rows", "scored", "rejected", "seconds", "rows_per_second", "output",
        "errors"}``; ``errors`` is ``None`` when no row was rejected (no file is left).
    """
    predictor = predictor or Predictor.load(model_dir)
    start = time.perf_counter()  # scoring time: loading the model is not throughput
    in_csv, out_csv = Path(in_csv), Path(out_csv)
    errors_path = out_csv.with_name(out_csv.name + ".errors.csv")
    size = in_csv.stat().st_size
    # One BLAS thread: each chunk's matrix products are small, and idle OpenBLAS threads
    # spinning between them slowed the whole run 2.4x (measured, reasons on). The cores
    # are used by scoring chunks in parallel instead (see _score_blocks).
    with threadpool_limits(limits=1, user_api="blas"), \
            open(in_csv, "rb") as src, open(out_csv, "wb") as out, \
            _ErrorLog(errors_path) as errors, \
            tqdm(total=size, unit="B", unit_scale=True, desc="scoring", file=sys.stderr,
                 disable=not progress) as bar:
        header_line = src.readline()
        chunker = _Chunker(predictor, header_line, reasons)
        out.write(chunker.output_header())
        errors.header = chunker.error_header()
        rows = scored = 0
        line = 1 + header_line.count(b"\n")
        bar.update(len(header_line))
        for block, result in _score_blocks(chunker, _blocks(src, chunksize),
                                           ahead=len(os.sched_getaffinity(0))):
            out.write(result.output)
            errors.write([chunker.error_line(rows + i + 1, line + rel_line - 1, problem, record)
                          for i, rel_line, problem, record in result.errors])
            rows += result.rows
            scored += result.scored
            line += result.lines
            bar.update(len(block))
            bar.set_postfix(rows=rows, rejected=rows - scored, refresh=False)
    seconds = time.perf_counter() - start
    return {"rows": rows, "scored": scored, "rejected": rows - scored,
            "seconds": round(seconds, 3), "rows_per_second": round(rows / seconds, 1),
            "output": str(out_csv), "errors": str(errors_path) if errors.count else None}


def _score_blocks(chunker: "_Chunker", blocks: Iterator[tuple[bytes, int]],
                  ahead: int) -> Iterator[tuple[bytes, "_BlockResult"]]:
    """(block, result) in input order, the model work of ``ahead`` blocks at a time
    overlapped with the reading of the next.

    This thread tokenises and converts a block (the column caches are not shared), then
    hands the rest (the model, the output bytes) to one of ``ahead`` workers while it
    reads the next: the C tree walk and numpy's large operations release the GIL, so
    they run on all the cores (on 2 cores, one worker per core measured 1.4x the rows/s
    of one thread doing everything, and 1.1x one worker whose tree walks are split in
    two). Threads, not processes: forked workers measured no faster on the 2-vCPU nodes
    this runs on, and a fork after sklearn has started its OpenMP pool (large tree
    batches do) can deadlock the child.
    """
    with ThreadPoolExecutor(ahead, thread_name_prefix="score") as pool:
        pending: deque[tuple[bytes, Future]] = deque()
        for block, lines in blocks:
            pending.append((block, pool.submit(*chunker.prepare(block, lines))))
            if len(pending) > ahead:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


# --------------------------------------------------------------------------- reading


def _blocks(src: BinaryIO, chunksize: int) -> Iterator[tuple[bytes, int]]:
    """Chunks of about ``chunksize`` whole records, never cut inside a quoted field, each
    with its count of newline bytes (quoted ones included).

    Rows per chunk are set from the bytes per row seen so far (the first read is 1 MiB).
    Every chunk ends with a newline.
    """
    want = BLOCK_BYTES
    seen_rows = seen_bytes = 0
    carry = b""
    while True:
        data = src.read(want)
        buf = carry + data
        if not data:
            if buf:
                block = buf if buf.endswith(b"\n") else buf + b"\n"
                yield block, _count(block, _NEWLINE)
            return
        cut = buf.rfind(b"\n") + 1
        while cut and _count(buf, _QUOTE, cut) % 2:  # that newline is inside quotes
            cut = buf.rfind(b"\n", 0, cut - 1) + 1
        if not cut:
            carry = buf
            continue
        block, carry = buf[:cut], buf[cut:]
        lines = _count(block, _NEWLINE)
        seen_rows += lines
        seen_bytes += len(block)
        want = min(BLOCK_BYTES, max(1 << 16, int(chunksize * seen_bytes / seen_rows)))
        want = max(1, want - len(carry))
        yield block, lines


@dataclass
class _BlockResult:
    output: bytes
    errors: list[tuple[int, int, str, str]]
    rows: int
    scored: int
    lines: int


def _done(result: _BlockResult) -> _BlockResult:
    """A chunk that :meth:`_Chunker.prepare` scored completely (the slow path)."""
    return result


def _count(data: bytes, byte: int, stop: int | None = None) -> int:
    """How many times ``byte`` occurs in ``data[:stop]`` (numpy: 7x ``bytes.count``)."""
    view = np.frombuffer(data, dtype=np.uint8)
    return int(np.count_nonzero(view[:stop] == byte))


@dataclass
class _Column:
    """One feature column of a chunk: row → distinct value, and per distinct value its raw
    value (fast-path layout) and problem code (0 = fine; see :func:`_messages`)."""

    codes: np.ndarray
    values: np.ndarray
    problems: np.ndarray


class _Chunker:
    """Scores chunks of CSV bytes against one header and one predictor."""

    def __init__(self, predictor: Predictor, header_line: bytes, reasons: bool):
        self.predictor = predictor
        self.reasons = reasons
        text = header_line.decode("utf-8-sig").rstrip("\r\n")
        self.header = next(csv.reader([text])) if text else []
        self.header_line = header_line.rstrip(b"\r\n")
        if self.header_line.startswith(b"\xef\xbb\xbf"):
            self.header_line = self.header_line[3:]
        missing = [predictor.spec.feature(n).source_column for n in predictor.features
                   if predictor.spec.feature(n).source_column not in self.header]
        if missing:
            raise ValueError(f"the input has no column {', '.join(map(repr, missing))} "
                             f"(its header: {self.header[:30]})")
        clash = sorted(set(OUTPUT_COLUMNS) & set(self.header))
        if clash:
            raise ValueError(f"the input already has output columns {clash}; "
                             "drop them before scoring")
        self.features: list[Feature] = [predictor.spec.feature(n) for n in predictor.features]
        self.positions = [self.header.index(f.source_column) for f in self.features]
        self.caches = [_ColumnCache(predictor, f) for f in self.features]
        self.messages = [c.messages for c in self.caches]
        self.tails = _Tails(predictor, reasons)

    def output_header(self) -> bytes:
        """The output's header line."""
        return self.header_line + ("," + ",".join(OUTPUT_COLUMNS) + "\n").encode()

    def error_header(self) -> str:
        """The error file's header line."""
        return _csv_line([*ERROR_COLUMNS, *self.header])

    def prepare(self, block: bytes, lines: int) -> tuple[Any, ...]:
        """Read and convert a chunk of whole records (``lines`` newline bytes); returns
        ``(function, *args)``, whose call gives the chunk's :class:`_BlockResult` and may
        run on another thread (it does not touch the column caches).

        Errors come back as (record index in the chunk, line in the chunk (1-based),
        problem, the record's text) so the caller can number them in the file.
        """
        fields = _tokenize(block, len(self.header), lines)
        converted = self._convert_fast(fields) if fields is not None else None
        if converted is None:
            return _done, self._score_slow(block, lines)
        raw, problems = converted
        bad = np.flatnonzero(problems.any(axis=1)) if problems.size else np.zeros(0, int)
        errors = [(int(i), fields.line_of(int(i)), self._problem_text(problems[i]),
                   fields.record(int(i))) for i in bad]
        good = np.ones(fields.n, dtype=bool)
        good[bad] = False
        return self._finish, fields, raw[good], good, errors

    def _finish(self, fields: "_Fields", raw: np.ndarray, good: np.ndarray,
                errors: list[tuple[int, int, str, str]]) -> "_BlockResult":
        """The model's scores of a converted chunk's good rows, and the output bytes."""
        scores = self.predictor.score_raw(raw, reasons=self.reasons)
        output = fields.with_suffixes(good, self._suffixes(scores))
        return _BlockResult(output, errors, fields.n, len(raw), fields.lines)

    def _score_slow(self, block: bytes, lines: int) -> "_BlockResult":
        """The same for a chunk the fast tokenizer refused, via the ``csv`` module."""
        text = block.decode("utf-8", errors="replace")
        records, record_lines = [], []
        line = 1
        reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
        for record in reader:
            if record:  # pandas skips blank lines; so does the row count
                records.append(record)
                record_lines.append(line)
            line = 1 + reader.line_num
        ok = [len(r) == len(self.header) for r in records]
        good_records = [r for r, k in zip(records, ok) if k]
        columns = [cache.resolve_texts([r[j] for r in good_records])
                   for cache, j in zip(self.caches, self.positions)]
        raw, problems = self._convert(columns)
        errors, good_rows = [], []
        g = 0
        for i, record in enumerate(records):
            if not ok[i]:
                problem = f"has {len(record)} fields, the header has {len(self.header)}"
            elif problems.size and problems[g].any():
                problem = self._problem_text(problems[g])
            else:
                problem = None
            if problem:
                errors.append((i, record_lines[i], problem, _csv_line(record).rstrip("\n")))
            if ok[i]:
                if not problem:
                    good_rows.append(g)
                g += 1
        scores = self.predictor.score_raw(raw[good_rows], reasons=self.reasons)
        frame = pd.DataFrame(self.predictor.output_columns(scores))
        digits = _pd_digits(scores.probability)
        frame["probability_of_default"] = [bytes(d[1:]).decode() for d in digits]
        frame["score"] = [bytes(d[1:]).decode() for d in _score_digits(scores.score)]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for g, tail in zip(good_rows, frame.itertuples(index=False)):
            writer.writerow([*good_records[g], *tail])
        return _BlockResult(out.getvalue().encode(), errors, len(records), len(good_rows),
                            lines)

    def _convert_fast(self, fields: "_Fields") -> tuple[np.ndarray, np.ndarray] | None:
        """Raw matrix and problem codes of a tokenised chunk; ``None`` on a hash collision.

        With the C module, each column's cells are looked up in C. Without it, cells are
        grouped by hashing in numpy; columns are then grouped in batches of similar width
        (cells of up to 8, 32 and more bytes), so short columns are not hashed as many
        words as the longest one.
        """
        n = fields.n
        # Column-major: each feature's values are written contiguously.
        raw = np.empty((len(self.features), n)).T
        problems = np.empty((len(self.features), n), dtype=np.int8).T
        if n == 0:
            return raw, problems
        if _csvbytes is not None:
            for f, (cache, j) in enumerate(zip(self.caches, self.positions)):
                raw[:, f], problems[:, f] = cache.lookup_rows(
                    fields.block, fields.column_starts[j], fields.column_lengths[j])
            return raw, problems
        words = (fields.column_lengths[self.positions].max(axis=1) + 7) // 8
        for batch in (words <= 1, (words > 1) & (words <= 4), words > 4):
            features = np.flatnonzero(batch)
            if not len(features):
                continue
            positions = [self.positions[f] for f in features]
            grouped = _group_cells(fields, positions)
            if grouped is None:
                return None
            codes, pick = grouped
            values = np.empty(len(pick))
            codes_of = np.empty(len(pick), dtype=np.int8)
            column = pick // n
            order = np.argsort(column, kind="stable")
            bounds = np.searchsorted(column[order], np.arange(len(features) + 1))
            for c, (f, j) in enumerate(zip(features, positions)):
                groups = order[bounds[c]:bounds[c + 1]]
                rows = pick[groups] - c * n
                starts = fields.column_starts[j][rows]
                stops = starts + fields.column_lengths[j][rows]
                values[groups], codes_of[groups] = self.caches[f].lookup(fields.block,
                                                                         starts, stops)
            raw[:, features] = values[codes].T
            problems[:, features] = codes_of[codes].T
        return raw, problems

    def _convert(self, columns: list[_Column]) -> tuple[np.ndarray, np.ndarray]:
        """Raw matrix (fast-path layout) and the (row, feature) problem codes."""
        n = len(columns[0].codes) if columns else 0
        raw = np.empty((n, len(self.features)))
        problems = np.zeros((n, len(self.features)), dtype=np.int8)
        for j, column in enumerate(columns):
            raw[:, j] = column.values[column.codes]
            problems[:, j] = column.problems[column.codes]
        return raw, problems

    def _problem_text(self, row_problems: np.ndarray) -> str:
        return "; ".join(f"{self.features[j].source_column} "
                         f"{self.messages[j][int(row_problems[j])]}"
                         for j in np.flatnonzero(row_problems))

    def error_line(self, row: int, line: int, problem: str, record: str) -> str:
        """A line of the error file."""
        return _csv_line([str(row), str(line), problem]).rstrip("\n") + "," + record + "\n"

    def _suffixes(self, scores: Scores) -> tuple[np.ndarray, np.ndarray, list[bytes]]:
        """Per row: the PD bytes (",0.123…"), the tail index, and the tail table."""
        tail, table = self.tails.lookup(scores)
        return np.hstack([_pd_digits(scores.probability), _score_digits(scores.score)]), \
            tail, table


def _score_digits(score: np.ndarray) -> np.ndarray:
    """``",0612.34"`` for each score: 2 decimals, zero-padded to 7 characters (a fixed
    width, as the splice of the PD bytes needs; every CSV reader reads it as 612.34),
    clipped to [-999.99, 9999.99], far beyond any score of a PD the model can give."""
    cents = np.rint(np.clip(score, -999.99, 9999.99) * 100).astype(np.int64)
    digits = np.empty((len(cents), 8), dtype=np.uint8)
    digits[:, 0] = _COMMA
    digits[:, 5] = ord(".")
    rest = np.abs(cents)
    for k in (7, 6, 4, 3, 2, 1):
        rest, d = np.divmod(rest, 10)
        digits[:, k] = 48 + d
    digits[cents < 0, 1] = ord("-")
    return digits


def _pd_digits(p: np.ndarray) -> np.ndarray:
    """``",0.123456789012"`` for each PD, as rows of bytes (fixed width, no Python loop)."""
    digits = np.empty((len(p), PD_DECIMALS + 3), dtype=np.uint8)
    scaled = np.rint(np.asarray(p) * 10.0 ** PD_DECIMALS).astype(np.int64)
    whole, frac = np.divmod(scaled, 10 ** PD_DECIMALS)
    digits[:, 0] = _COMMA
    digits[:, 1] = 48 + whole
    digits[:, 2] = ord(".")
    for k in range(PD_DECIMALS):
        frac, d = np.divmod(frac, 10)
        digits[:, PD_DECIMALS + 2 - k] = 48 + d
    return digits


class _Tails:
    """The bytes after the PD (``,decision,grade,r1,r2,r3,r4``), one per distinct combination."""

    def __init__(self, predictor: Predictor, reasons: bool):
        self.grades = [str(g["grade"]) for g in predictor.grades]
        self.names = [*predictor.features, ""]
        self.reasons = reasons
        self.base = len(self.names)
        self.cache: dict[int, bytes] = {}

    def lookup(self, scores: Scores) -> tuple[np.ndarray, list[bytes]]:
        key = scores.decline.astype(np.int64) + 2 * scores.grade.astype(np.int64)
        if self.reasons:
            for k in range(scores.reasons.shape[1]):
                key = key * self.base + (scores.reasons[:, k] % self.base)
        codes, uniques = pd.factorize(key)
        table = []
        for u in uniques.tolist():
            tail = self.cache.get(u)
            if tail is None:
                tail = self.cache[u] = self._tail(u)
            table.append(tail)
        return codes.astype(np.intp, copy=False), table

    def _tail(self, key: int) -> bytes:
        reasons = []
        if self.reasons:
            for _ in range(4):
                key, r = divmod(key, self.base)
                reasons.append(self.names[r])
            reasons.reverse()
        else:
            reasons = [""] * 4
        decline, grade = key % 2, key // 2
        fields = ["decline" if decline else "approve", self.grades[grade], *reasons]
        return ("," + _csv_line(fields).rstrip("\n")).encode()


# --------------------------------------------------------------------------- fast tokenizer


class _Fields:
    """Field boundaries of a chunk of well-formed CSV records (all bytes, no strings).

    ``starts[j, i]`` and ``ends[j, i]`` (end exclusive, before any ``\\r``) bound field
    ``j`` of record ``i``: column-major, so that each column's cells are contiguous for
    the per-column work; ``line_end[i]`` is one past record ``i``'s newline.
    """

    def __init__(self, block: bytes, starts: np.ndarray, ends: np.ndarray,
                 line_end: np.ndarray, lines: int):
        self.block = block
        self.lines = lines  # newline bytes, quoted ones included
        self.column_starts = starts
        self.column_lengths = ends - starts
        self.ends = ends
        self.line_end = line_end
        self.n = starts.shape[1]

    @cached_property
    def words(self) -> np.ndarray:
        """``words[i]``: the 8 bytes from offset ``i``, for :func:`_group_cells`.

        An overlapping, unaligned view of the block plus padding, so that a field's last
        word can run past the block without bounds checks.
        """
        longest = int(self.column_lengths.max()) if self.n else 0
        padded = np.frombuffer(self.block + b"\0" * (longest + 16), dtype=np.uint8)
        return np.ndarray(shape=(len(padded) - 7,), dtype="<u8", buffer=padded, strides=(1,))

    def record(self, i: int) -> str:
        return self.block[self.column_starts[0, i]:self.ends[-1, i]].decode("utf-8", "replace")

    def line_of(self, i: int) -> int:
        """1-based line of record ``i`` within the chunk (quoted newlines count)."""
        return _count(self.block, _NEWLINE, int(self.column_starts[0, i])) + 1

    def with_suffixes(self, keep: np.ndarray,
                      suffix: tuple[np.ndarray, np.ndarray, list[bytes]]) -> bytes:
        """The kept records, each with its suffix inserted before its line end."""
        digits, tail, table = suffix
        table_len = np.array([len(t) for t in table], dtype=np.int64)
        table_start = np.cumsum(table_len) - table_len
        at = self.ends[-1]  # end of the last field: before "\r\n" or "\n"
        if _csvbytes is None:
            return self._with_suffixes(keep, digits, tail, b"".join(table), table_start,
                                       table_len, at)
        record_len = np.diff(self.line_end, prepend=0)
        size = (int(record_len[keep].sum()) + digits.size
                + int(table_len[tail].sum() if len(tail) else 0))
        out = bytearray(size)
        _csvbytes.splice(self.block, self.line_end, at, keep.view(np.uint8), digits,
                         digits.shape[1], tail.astype(np.int64, copy=False),
                         b"".join(table), table_start, table_len, out)
        return bytes(out)

    def _with_suffixes(self, keep: np.ndarray, digits: np.ndarray, tail: np.ndarray,
                       table_bytes: bytes, table_start: np.ndarray, table_len: np.ndarray,
                       at: np.ndarray) -> bytes:
        """:meth:`with_suffixes` in numpy (without the C module)."""
        data = np.frombuffer(self.block, dtype=np.uint8)
        if not keep.all():
            # Drop the bad records' bytes, newline included, and move the insertion
            # points back by the bytes dropped before them.
            drop = np.zeros(len(data) + 1, dtype=np.int64)
            first = np.concatenate([[0], self.line_end[:-1]])
            np.add.at(drop, first[~keep], 1)
            np.add.at(drop, self.line_end[~keep], -1)
            mask = np.cumsum(drop[:-1]) == 0
            dropped_before = np.concatenate([[0], np.cumsum(~mask)])
            data = data[mask]
            at = at[keep] - dropped_before[at[keep]]
        n, width = digits.shape
        # Each row's suffix is its PD bytes then its tail: two segments of one source.
        source = np.concatenate([digits.reshape(-1),
                                 np.frombuffer(table_bytes or b"\0", dtype=np.uint8)])
        seg_start = np.empty(2 * n, dtype=np.int64)
        seg_start[0::2] = np.arange(n) * width
        seg_start[1::2] = digits.size + table_start[tail]
        seg_len = np.empty(2 * n, dtype=np.int64)
        seg_len[0::2] = width
        seg_len[1::2] = table_len[tail]
        suffix_bytes = source[_ragged(seg_start, seg_len)]
        # In the output, row r's suffix starts at its insertion point plus all the
        # suffix bytes before it; everything else is the input, in order.
        row_len = seg_len[0::2] + seg_len[1::2]
        before = np.cumsum(row_len) - row_len
        slots = _ragged(at + before, row_len)
        out = np.empty(len(data) + len(suffix_bytes), dtype=np.uint8)
        is_suffix = np.zeros(len(out), dtype=bool)
        is_suffix[slots] = True
        out[slots] = suffix_bytes
        out[~is_suffix] = data
        return out.tobytes()


def _ragged(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + l)`` for each (s, l), without a Python loop."""
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()))


def _tokenize(block: bytes, ncols: int, lines: int) -> _Fields | None:
    """Field boundaries of every record of a chunk with ``lines`` newline bytes, or
    ``None`` if the chunk is not plainly regular."""
    if not ncols:
        return None
    if _csvbytes is None:
        return _tokenize_numpy(block, ncols, lines)
    # A record takes at least ncols bytes (its commas and newline): a chunk of blank
    # lines does not get room for a million records.
    room = min(lines, len(block) // ncols + 1)
    starts = np.empty((ncols, room), dtype=np.int64)
    ends = np.empty((ncols, room), dtype=np.int64)
    line_end = np.empty(room, dtype=np.int64)
    n = _csvbytes.split(block, ncols, starts, ends, line_end)
    if n < 0:
        return None
    return _Fields(block, starts[:, :n], ends[:, :n], line_end[:n], lines)


def _tokenize_numpy(block: bytes, ncols: int, lines: int) -> _Fields | None:
    """:func:`_tokenize` in numpy (without the C module)."""
    data = np.frombuffer(block, dtype=np.uint8)
    at = np.flatnonzero((data == _COMMA) | (data == _NEWLINE))
    if b'"' in block:
        # Commas and newlines between an opening and its closing quote are data. Quote
        # characters pair up in order ("" escapes pair with each other), so the
        # separators inside quotes are those between quote 2k and quote 2k + 1.
        quotes = np.flatnonzero(data == _QUOTE)
        if len(quotes) % 2:
            return None
        first_after = np.searchsorted(at, quotes)
        inside = (np.bincount(first_after[0::2], minlength=len(at) + 1)
                  - np.bincount(first_after[1::2], minlength=len(at) + 1))
        at = at[np.cumsum(inside[:-1]) == 0]
    if len(at) == 0 or len(at) % ncols or at[-1] != len(block) - 1:
        return None
    kind = (data[at] == _NEWLINE).reshape(-1, ncols)
    if not kind[:, -1].all() or kind[:, :-1].any():
        return None  # ragged rows or blank lines: let the csv module sort them out
    flat_starts = np.concatenate([[0], at[:-1] + 1])
    starts = np.ascontiguousarray(flat_starts.reshape(-1, ncols).T, dtype=np.int64)
    ends = np.ascontiguousarray(at.reshape(-1, ncols).T, dtype=np.int64)
    line_end = ends[-1] + 1
    if b"\r" in block:
        ends[-1] -= data[np.maximum(ends[-1] - 1, 0)] == _CR
    return _Fields(block, starts, ends, line_end, lines)


_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [(1 << 64) - 1], dtype=np.uint64)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _group_cells(fields: _Fields, positions: list[int]) -> tuple[np.ndarray, np.ndarray] | None:
    """Group every feature cell of a chunk by its bytes, all columns at once.

    Returns the group of each cell, shape ``(len(positions), n)``, and for each group the
    flat index (``column * n + row``) of one of its cells; ``None`` on a hash collision.
    Cells are hashed 8 bytes at a time (bytes past a cell's end masked off) with their
    length and column; the hash only groups them: every cell is then compared, word
    for word and by length and column, with its group's cell, so a collision costs
    speed (the slow path), never a wrong value.
    """
    starts = fields.column_starts[positions]
    length = fields.column_lengths[positions]
    columns, n = length.shape
    if n == 0:
        return np.zeros((columns, 0), dtype=np.intp), np.zeros(0, dtype=np.intp)
    shortest, longest = int(length.min()), int(length.max())
    # masks[longest + r] keeps the first r bytes of a word (r <= 0: none, r >= 8: all)
    masks = np.concatenate([np.zeros(longest, dtype=np.uint64), _MASKS])
    key = length.astype(np.uint64)
    key += np.arange(columns, dtype=np.uint64)[:, None] << np.uint64(40)
    words = []
    for k in range((longest + 7) // 8):
        word = fields.words[starts]
        if 8 * (k + 1) > shortest:  # some cells end within this word: mask their tails
            remaining = np.minimum(length - 8 * k, 8)
            remaining += longest
            word &= masks[remaining]
        words.append(word.reshape(-1))
        key ^= word
        key *= _MIX
        starts += 8
    key ^= key >> np.uint64(29)
    codes, keys = pd.factorize(key.reshape(-1))
    pick = np.zeros(len(keys), dtype=np.intp)
    pick[codes] = np.arange(codes.size)  # some cell of each group: any will do
    if not np.array_equal((pick // n)[codes], np.arange(codes.size) // n):
        return None
    for word in (length.reshape(-1), *words):
        if not np.array_equal(word[pick][codes], word):
            return None
    return codes.reshape(columns, n).astype(np.intp, copy=False), pick


class _ColumnCache:
    """The distinct cells of one feature column seen so far, converted once.

    A dict from the cell's exact bytes to its raw value and problem code, so
    ``convert_column`` runs once per distinct cell per file, not once per chunk. At
    most ``LIMIT`` cells are kept; new cells after that are converted per chunk. With
    the C module built, a :class:`_CellIndex` mirrors the dict's keys so that every row
    of a chunk is looked up in C (:meth:`lookup_rows`).
    """

    LIMIT = 100_000

    def __init__(self, predictor: Predictor, feature: Feature):
        self.predictor, self.feature = predictor, feature
        self.messages = _messages(feature)
        self.slots: dict[bytes, int] = {}
        self.values = np.zeros(0)
        self.problems = np.zeros(0, dtype=np.int8)
        self.index = _CellIndex() if _csvbytes is not None else None

    def lookup(self, block: bytes, starts: np.ndarray,
               stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw values and problem codes of the cells ``block[start:stop]``."""
        return self._resolve([block[a:b] for a, b in zip(starts.tolist(), stops.tolist())])

    def lookup_rows(self, block: bytes, starts: np.ndarray,
                    lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The same for every row of a column (needs the C module): the cached cells are
        found in C, only the others go through :meth:`_resolve`."""
        assert self.index is not None
        slots = self.index.find(block, starts, lengths)
        miss = np.flatnonzero(slots < 0)
        if not len(miss):
            return self.values[slots], self.problems[slots]
        cells = [block[a:a + b] for a, b in zip(starts[miss].tolist(), lengths[miss].tolist())]
        miss_values, miss_problems = self._resolve(cells)  # caches them unless full
        if len(self.values):
            known = np.maximum(slots, 0)
            values, problems = self.values[known], self.problems[known]
        else:
            values, problems = np.zeros(len(slots)), np.zeros(len(slots), dtype=np.int8)
        values[miss], problems[miss] = miss_values, miss_problems
        return values, problems

    def _resolve(self, cells: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Raw values and problem codes of some cells, converting and caching new ones."""
        slots = [self.slots.get(c, -1) for c in cells]
        if -1 not in slots:
            slot_array = np.array(slots, dtype=np.intp)
            return self.values[slot_array], self.problems[slot_array]
        new = list(dict.fromkeys(c for c, slot in zip(cells, slots) if slot < 0))
        texts = [_unquote(c.decode("utf-8", "replace")) for c in new]
        values, problems = _convert_texts(self.predictor, self.feature, texts)
        if len(self.slots) + len(new) > self.LIMIT:  # full: answer without keeping
            fresh = {c: i for i, c in enumerate(new)}
            at = np.array([fresh.get(c, -1) for c in cells], dtype=np.intp)
            known = np.maximum(np.array(slots, dtype=np.intp), 0)
            cell_values = np.where(at < 0, self.values[known] if len(self.values) else 0.0,
                                   values[at])
            cell_problems = np.where(at < 0, self.problems[known] if len(self.values) else 0,
                                     problems[at]).astype(np.int8)
            return cell_values, cell_problems
        self.slots.update(zip(new, range(len(self.slots), len(self.slots) + len(new))))
        self.values = np.concatenate([self.values, values])
        self.problems = np.concatenate([self.problems, problems])
        if self.index is not None:
            self.index.add(new)
        slot_array = np.array([self.slots[c] for c in cells], dtype=np.intp)
        return self.values[slot_array], self.problems[slot_array]

    def resolve_texts(self, texts: list[str]) -> _Column:
        """A column given as text cells (the slow path; nothing cached)."""
        codes, uniques = pd.factorize(np.array(texts, dtype=object))
        values, problems = _convert_texts(self.predictor, self.feature,
                                          [str(u) for u in uniques])
        return _Column(codes.astype(np.intp, copy=False), values, problems)


class _CellIndex:
    """The keys of a :class:`_ColumnCache` as a hash table that ``ml/batch/_csvbytes.c`` probes.

    Key ``i`` (the cache's slot ``i``) is ``keys[start[i]:start[i] + length[i]]``; the
    table holds key indices (-1: empty) and is kept at most half full.
    """

    def __init__(self) -> None:
        self.keys = b""
        self.start = np.zeros(0, dtype=np.int64)
        self.length = np.zeros(0, dtype=np.int64)
        self.table = np.full(64, -1, dtype=np.int64)

    def add(self, cells: list[bytes]) -> None:
        """Append cells (new keys, in slot order) and index them."""
        first = len(self.start)
        lengths = np.array([len(c) for c in cells], dtype=np.int64)
        self.start = np.concatenate([self.start, len(self.keys) + np.cumsum(lengths) - lengths])
        self.length = np.concatenate([self.length, lengths])
        self.keys += b"".join(cells)
        if 2 * len(self.start) > len(self.table):
            size = len(self.table)
            while 2 * len(self.start) > size:
                size *= 4
            self.table = np.full(size, -1, dtype=np.int64)
            first = 0
        _csvbytes.insert(self.keys, self.start, self.length, self.table, first)

    def find(self, block: bytes, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The key index of each cell ``block[start:start + length]``, or -1."""
        out = np.empty(len(starts), dtype=np.int64)
        _csvbytes.lookup(block, np.ascontiguousarray(starts, dtype=np.int64),
                         np.ascontiguousarray(lengths, dtype=np.int64), self.keys,
                         self.start, self.length, self.table, out)
        return out


def _unquote(text: str) -> str:
    """A raw field as the csv module (``skipinitialspace``) would read it."""
    stripped = text.lstrip(" ")
    if len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"':
        return stripped[1:-1].replace('""', '"')
    return stripped


# --------------------------------------------------------------------------- conversion


def _messages(feature: Feature) -> list[str]:
    """What each problem code means for ``feature`` (code 0 is no problem)."""
    low = -np.inf if feature.minimum is None else feature.minimum
    high = np.inf if feature.maximum is None else feature.maximum
    return ["", "is missing and the spec does not allow missing values",
            "is not one of the allowed values" if feature.kind == CATEGORICAL
            else "is not a number", f"is outside [{_fmt(low)}, {_fmt(high)}]"]


def _convert_texts(predictor: Predictor, feature: Feature,
                   texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Raw values and problem codes of distinct cell texts, via :func:`convert_column`."""
    if not texts:
        return np.zeros(0), np.zeros(0, dtype=np.int8)
    text = pd.Series(texts, dtype=object)
    converted, _ = convert_column(text, feature)
    missing = text.str.strip().str.lower().isin(MISSING_TOKENS).to_numpy()
    invalid = converted.isna().to_numpy() & ~missing
    problems = np.where(missing & (not feature.nullable), 1, 0).astype(np.int8)
    problems[invalid] = 2
    if feature.kind == CATEGORICAL:
        values = predictor.fast.category_index(feature.name, converted)
    else:
        values = converted.to_numpy(dtype=np.float64, na_value=np.nan)
        low = -np.inf if feature.minimum is None else feature.minimum
        high = np.inf if feature.maximum is None else feature.maximum
        problems[(values < low) | (values > high)] = 3
    return values, problems


def _fmt(x: float) -> str:
    return str(int(x)) if np.isfinite(x) and float(x).is_integer() else str(x)


def _csv_line(fields: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(fields)
    return out.getvalue()


class _ErrorLog:
    """``<out>.errors.csv``, created on the first bad row and removed if there is none."""

    def __init__(self, path: Path):
        self.path = path
        self.header = ""
        self.count = 0
        self._fh: Any = None

    def __enter__(self) -> "_ErrorLog":
        if self.path.exists():
            self.path.unlink()
        return self

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        if self._fh is None:
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
            self._fh.write(self.header)
        self._fh.writelines(lines)
        self.count += len(lines)

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            self._fh.close()


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml score``."""
    parser.add_argument("--model", type=Path, default=None,
                        help="artifact or models directory (default: MODEL_DIR or models/)")
    parser.add_argument("input", type=Path, help="portfolio CSV to score")
    parser.add_argument("output", type=Path, help="scored CSV to write")
    parser.add_argument("--chunksize", type=int, default=50_000, help="rows per chunk")
    parser.add_argument("--no-reasons", action="store_true",
                        help="leave reason_1..4 empty (several times faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score from parsed CLI arguments; prints the summary; 0 if every row was scored."""
    from ml.spec import config

    summary = score_csv(args.model or config.models_dir(), args.input, args.output,
                        chunksize=args.chunksize, progress=not args.no_progress,
                        reasons=not args.no_reasons)
    print(f"scored {summary['scored']:,} of {summary['rows']:,} rows in "
          f"{summary['seconds']:.2f} s ({summary['rows_per_second']:,.0f} rows/s) "
          f"-> {summary['output']}")
    if summary["rejected"]:
        print(f"{summary['rejected']:,} rows rejected -> {summary['errors']}")
    return 0 if not summary["rejected"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m ml.batch.score`` (the same as ``python -m ml score``)."""
    parser = argparse.ArgumentParser(prog="python -m ml score", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover - thin CLI shim, tested through main()
    sys.exit(main())
