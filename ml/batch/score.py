"""Batch scoring: a portfolio file in, the same records with their scores out.

``python -m ml score --model DIR in.csv out.csv`` (or ``.parquet`` either side, or
``--format``) reads the input in record batches (:mod:`ml.batch.files`), turns each
batch's feature columns into the model's raw matrix with the training's cell rules
(:mod:`ml.batch.columns`), scores the valid records with the same compiled model the API
serves (``Predictor.load``: no sklearn, no unpickling of the training pickle), and writes
every input column followed by ``probability_of_default``, ``decision``, ``risk_grade``
and ``reason_1`` … ``reason_4`` (feature names, empty when there are fewer reasons or
with ``--no-reasons``). Records that cannot be scored (unknown category, not a number,
out of range, missing where the spec forbids it, wrong number of fields, not UTF-8) go
to ``<out>.errors.csv`` with their row and line numbers and the problem, and scoring
carries on. Reading, the model and writing overlap: pyarrow and the compiled tree walk
release the GIL, so the next batch is read and converted while the last one is written.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from queue import Full, Queue
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from ml.batch.arrays import from_numpy, strings
from ml.batch.columns import ColumnReader, code_values
from ml.batch.files import (Batch, CsvSource, ErrorLog, LineFinder, Sink, file_format,
                            open_source)
from ml.serving.predictor import DECISIONS, OUTPUT_COLUMNS, REASON_COLUMNS, Predictor, Scores
from ml.spec.cells import problem_text


def score_file(model_dir: str | Path | None, source: str | Path, output: str | Path,
               chunksize: int = 25_000, progress: bool = True, reasons: bool = True,
               predictor: Predictor | None = None, input_format: str | None = None,
               output_format: str | None = None) -> dict[str, Any]:
    """Score every record of ``source`` into ``output``; bad ones go to ``<output>.errors.csv``.

    Args:
        model_dir: an artifact directory or a models directory with ``LATEST``.
        source: the portfolio (CSV with a header, or Parquet) naming at least the spec's
            feature columns.
        output: where the scored records go (overwritten).
        chunksize: about this many records are read and scored at once.
        progress: show a tqdm progress bar on stderr.
        reasons: fill ``reason_1`` … ``reason_4`` (one what-if row per feature that
            differs from the baseline: several times the model work).
        predictor: an already loaded predictor (then ``model_dir`` is ignored).
        input_format, output_format: ``"csv"`` or ``"parquet"``; by default from the
            files' extensions.

    Returns:
        ``{"rows", "scored", "rejected", "seconds", "rows_per_second", "output",
        "errors"}``; ``errors`` is ``None`` when no record was rejected (no file is left).
    """
    source, output = Path(source), Path(output)
    in_kind = file_format(source, input_format)
    out_kind = file_format(output, output_format)
    if output.exists() and source.exists() and output.samefile(source):
        raise ValueError("the output would overwrite the input: name another file")
    predictor = predictor or Predictor.load(model_dir)
    start = time.perf_counter()  # scoring time: loading the model is not throughput
    reader = open_source(source, in_kind, chunksize)
    try:
        scorer = _Scorer(predictor, reader.names, reasons)
        errors = ErrorLog(output.with_name(output.name + ".errors.csv"), reader.names,
                          LineFinder(source) if isinstance(reader, CsvSource) else None)
        sink = Sink(output, out_kind, scorer.output_schema(reader.schema))
        try:
            rows, scored = _run(scorer, reader, sink, errors, progress)
        finally:
            sink.close()
            errors.close()
    finally:
        reader.close()
    seconds = time.perf_counter() - start
    return {"rows": rows, "scored": scored, "rejected": rows - scored,
            "seconds": round(seconds, 3), "rows_per_second": round(rows / seconds, 1),
            "output": str(output), "errors": str(errors.path) if errors.count else None}


def _run(scorer: "_Scorer", reader: Any, sink: Sink, errors: ErrorLog,
         progress: bool) -> tuple[int, int]:
    """Read, score and write every batch; the writing of one overlaps the next's work.

    One BLAS thread: each batch's matrix products are small, and the cores are already
    busy reading, scoring and writing batches side by side.
    """
    rows = scored = 0
    unit = "B" if isinstance(reader, CsvSource) else "rows"
    with threadpool_limits(limits=1, user_api="blas"), \
            ThreadPoolExecutor(1, thread_name_prefix="write") as writer, \
            tqdm(total=reader.total, unit=unit, unit_scale=True, desc="scoring",
                 file=sys.stderr, disable=not progress) as bar, \
            closing(_prefetched(reader)) as batches:
        pending: Future | None = None
        for batch in batches:
            table, rejected = scorer.score(batch)
            if pending is not None:
                pending.result()
            pending = writer.submit(sink.write, table)
            errors.write(rejected)
            rows += table.num_rows + len(rejected)
            scored += table.num_rows
            bar.update(batch.position - bar.n)
            bar.set_postfix(rows=rows, rejected=rows - scored, refresh=False)
        if pending is not None:
            pending.result()
    return rows, scored


def _prefetched(batches: Iterable[Batch], depth: int = 2) -> Iterator[Batch]:
    """``batches``, read on a thread of their own up to ``depth`` ahead.

    pyarrow parses without the GIL, so the next batch is read while this one is
    converted and scored (the reader itself runs single-threaded: see
    :class:`ml.batch.files.CsvSource`).
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[Batch | None, BaseException | None]) -> bool:
        while not stop.is_set():  # the consumer may have given up: do not block then
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((None, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((None, exc))

    thread = threading.Thread(target=read, name="read", daemon=True)
    thread.start()
    try:
        while True:
            batch, error = queue.get()
            if error is not None:
                raise error
            if batch is None:
                return
            yield batch
    finally:
        stop.set()
        thread.join()


class _Scorer:
    """Scores record batches against one predictor and one input header."""

    def __init__(self, predictor: Predictor, names: list[str], reasons: bool):
        self.predictor = predictor
        self.reasons = reasons
        features = [predictor.spec.feature(n) for n in predictor.features]
        missing = [f.source_column for f in features if f.source_column not in names]
        if missing:
            raise ValueError(f"the input has no column {', '.join(map(repr, missing))} "
                             f"(its header: {names[:30]})")
        clash = sorted(set(OUTPUT_COLUMNS) & set(names))
        if clash:
            raise ValueError(f"the input already has output columns {clash}; "
                             "drop them before scoring")
        codes = code_values(predictor)
        self.features = features
        self.columns = [f.source_column for f in features]
        self.readers = [ColumnReader(f, codes.get(f.name)) for f in features]
        self.decisions = strings(list(DECISIONS))
        self.grades = strings([str(g["grade"]) for g in predictor.grades])
        self.reason_names = strings([*predictor.features, ""])  # -1 picks the ""

    def output_schema(self, schema: pa.Schema) -> pa.Schema:
        """The input's columns, then the score columns."""
        labels = pa.dictionary(pa.int32(), pa.string())
        return pa.schema([*schema, pa.field("probability_of_default", pa.float64()),
                          *(pa.field(name, labels) for name in OUTPUT_COLUMNS[1:])])

    def score(self, batch: Batch) -> tuple[pa.RecordBatch, list[tuple[int, str, Any]]]:
        """The scored records of a batch, and every record rejected with its problem."""
        table = batch.table
        n = table.num_rows
        raw = np.empty((len(self.readers), n)).T  # column-major: each feature's contiguous
        problems = np.empty((len(self.readers), n), dtype=np.int8).T
        for j, (reader, name) in enumerate(zip(self.readers, self.columns)):
            raw[:, j], problems[:, j] = reader.read(table.column(name))
        bad = problems.any(axis=1) if n else np.zeros(0, dtype=bool)
        rejected = list(batch.rejected)
        if bad.any():
            rejected += self._rejected(table, batch.rows, problems, np.flatnonzero(bad))
            table = table.take(from_numpy(np.flatnonzero(~bad)))
            raw = raw[~bad]
        scores = self.predictor.score_raw(raw, reasons=self.reasons)
        return self._with_scores(table, scores), rejected

    def _rejected(self, table: pa.RecordBatch, rows: np.ndarray, problems: np.ndarray,
                  bad: np.ndarray) -> list[tuple[int, str, list[str]]]:
        """(row, every problem of the record, its cells) for the bad records."""
        cells = table.take(from_numpy(bad)).to_pylist()
        out = []
        for i, record in zip(bad.tolist(), cells):
            text = "; ".join(f"{self.columns[j]} {problem_text(self.features[j], p)}"
                             for j, p in enumerate(problems[i].tolist()) if p)
            out.append((int(rows[i]), text, ["" if v is None else str(v)
                                             for v in record.values()]))
        return out

    def _with_scores(self, table: pa.RecordBatch, scores: Scores) -> pa.RecordBatch:
        """The records followed by their score columns (labels dictionary-encoded)."""
        none = len(self.reason_names) - 1
        columns = [from_numpy(scores.probability.astype(np.float64, copy=False)),
                   _labels(scores.decline.astype(np.int32), self.decisions),
                   _labels(scores.grade.astype(np.int32), self.grades)]
        for k in range(len(REASON_COLUMNS)):
            index = (np.where(scores.reasons[:, k] < 0, none, scores.reasons[:, k])
                     if scores.reasons is not None else np.full(table.num_rows, none))
            columns.append(_labels(index.astype(np.int32), self.reason_names))
        return pa.RecordBatch.from_arrays([*table.columns, *columns],
                                          names=[*table.schema.names, *OUTPUT_COLUMNS])


def _labels(index: np.ndarray, names: pa.Array) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(from_numpy(index), names)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m ml score``."""
    parser.add_argument("--model", type=Path, default=None,
                        help="artifact or models directory (default: MODEL_DIR or models/)")
    parser.add_argument("input", type=Path, help="portfolio to score (.csv or .parquet)")
    parser.add_argument("output", type=Path, help="scored file to write (.csv or .parquet)")
    parser.add_argument("--format", choices=("csv", "parquet"), default=None,
                        help="format of both files (default: from their extensions)")
    parser.add_argument("--input-format", choices=("csv", "parquet"), default=None)
    parser.add_argument("--output-format", choices=("csv", "parquet"), default=None)
    parser.add_argument("--chunksize", type=int, default=25_000, help="records per batch")
    parser.add_argument("--no-reasons", action="store_true",
                        help="leave reason_1..4 empty (several times faster)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Score from parsed CLI arguments; prints the summary; 0 if every record was scored."""
    from ml.spec import config

    if args.chunksize < 1:
        raise ValueError("--chunksize must be at least 1")
    summary = score_file(args.model or config.models_dir(), args.input, args.output,
                         chunksize=args.chunksize, progress=not args.no_progress,
                         reasons=not args.no_reasons,
                         input_format=args.input_format or args.format,
                         output_format=args.output_format or args.format)
    print(f"scored {summary['scored']:,} of {summary['rows']:,} rows in "
          f"{summary['seconds']:.2f} s ({summary['rows_per_second']:,.0f} rows/s) "
          f"-> {summary['output']}")
    if summary["rejected"]:
        print(f"{summary['rejected']:,} rows rejected -> {summary['errors']}")
    return 0 if not summary["rejected"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m ml.batch.score`` (the same as ``python -m ml score``)."""
    parser = argparse.ArgumentParser(prog="python -m ml score",
                                     description=(__doc__ or "").split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as exc:  # the input or the model: say which, briefly
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover - thin CLI shim, tested through main()
    sys.exit(main())
