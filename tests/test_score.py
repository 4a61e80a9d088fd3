"""The batch scorer: the same scores as the predictor, bad rows reported, any CSV shape."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.serving.artifact import library_versions
from ml.training.compile import score_frame
from ml.training.publish import save_artifact
from ml.spec.config import DEFAULT_DATA
from ml.training.data import load_dataset, read_raw
from ml.training.pipeline import build_pipeline
from ml.serving.predictor import OUTPUT_COLUMNS, Predictor
from ml.spec.schema import CATEGORICAL
from ml.batch import score as score_module
from ml.batch.score import main, score_csv

GRADES = [{"grade": "A", "max_pd": 0.05}, {"grade": "B", "max_pd": 0.10},
          {"grade": "C", "max_pd": 0.20}, {"grade": "D", "max_pd": 0.35},
          {"grade": "E", "max_pd": 0.50}, {"grade": "F", "max_pd": 1.0}]


@pytest.fixture(scope="module")
def raw():
    return read_raw(DEFAULT_DATA)


@pytest.fixture(scope="module")
def model_dir(spec, tmp_path_factory):
    data = load_dataset(DEFAULT_DATA, spec)
    model = build_pipeline(spec, "hist_gradient_boosting", 0,
                           {"model__max_iter": 30, "model__max_leaf_nodes": 7}).fit(data.X, data.y)
    X = data.X
    baseline = {f.name: (str(X[f.name].mode().iloc[0]) if f.kind == CATEGORICAL
                         else int(X[f.name].median())) for f in spec.features}
    example = {f.name: (str(X[f.name].iloc[0]) if f.kind == CATEGORICAL
                        else int(X[f.name].iloc[0])) for f in spec.features}
    card = {"name": spec.name, "version": "score-test", "threshold": 0.3, "grades": GRADES,
            "spec": spec.to_dict(), "libraries": library_versions(),
            "reference": {"baseline": baseline}, "example": example,
            "self_test": {"record": example, "probability_of_default":
                          float(model.predict_proba(X.iloc[[0]])[0, 1])}}
    root = tmp_path_factory.mktemp("models")
    save_artifact(model, card, root)
    return root


@pytest.fixture(scope="module")
def predictor(model_dir):
    return Predictor.load(model_dir)


def read_out(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def score(predictor, src, out, **kwargs):
    kwargs.setdefault("progress", False)
    return score_csv(None, src, out, predictor=predictor, **kwargs)


def expected_scores(predictor, spec, raw_frame) -> pd.DataFrame:
    data = load_dataset_from_frame(raw_frame, spec)
    return score_frame(predictor, data)


def load_dataset_from_frame(raw_frame, spec):
    from ml.training.data import validate_frame
    X, _ = validate_frame(raw_frame, spec, require_target=False)
    return X


def test_writes_each_input_row_then_its_scores(predictor, spec, raw, tmp_path):
    summary = score(predictor, DEFAULT_DATA, tmp_path / "out.csv")
    assert summary["rows"] == summary["scored"] == len(raw)
    assert summary["rejected"] == 0 and summary["errors"] is None
    assert summary["rows_per_second"] > 0
    out = read_out(tmp_path / "out.csv")
    assert list(out.columns) == [*raw.columns, *OUTPUT_COLUMNS]
    assert out[raw.columns].equals(raw)
    expected = expected_scores(predictor, spec, raw)
    assert np.max(np.abs(out["probability_of_default"].astype(float).to_numpy()
                         - expected["probability_of_default"].to_numpy())) <= 1e-12
    # The score is written with 2 decimals, zero-padded to a fixed width.
    assert out["score"].str.fullmatch(r"-?\d{3,4}\.\d\d").all()
    assert np.max(np.abs(out["score"].astype(float).to_numpy()
                         - expected["score"].to_numpy())) <= 0.005 + 1e-9
    for column in OUTPUT_COLUMNS[2:]:
        assert out[column].tolist() == expected[column].tolist()
    assert not (tmp_path / "out.csv.errors.csv").exists()


def test_scores_equal_the_predictors_answers(predictor, spec, raw, tmp_path):
    rows = raw.head(40)
    rows.to_csv(tmp_path / "in.csv", index=False)
    score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    out = read_out(tmp_path / "out.csv")
    X = load_dataset_from_frame(rows, spec)
    records = [{f.name: (X[f.name].iloc[i] if f.kind == CATEGORICAL
                         else int(X[f.name].iloc[i])) for f in spec.features}
               for i in range(len(X))]
    for i, result in enumerate(predictor.predict(records)):
        assert float(out["probability_of_default"][i]) == pytest.approx(
            result["probability_of_default"], abs=1e-12)
        assert out["decision"][i] == result["decision"]
        assert out["risk_grade"][i] == result["risk_grade"]
        names = [r["feature"] for r in result["reasons"]]
        assert [out[f"reason_{k}"][i] for k in range(1, 5)] == names + [""] * (4 - len(names))


def test_without_reasons_the_reason_columns_are_empty(predictor, tmp_path):
    summary = score(predictor, DEFAULT_DATA, tmp_path / "out.csv", reasons=False)
    out = read_out(tmp_path / "out.csv")
    assert summary["scored"] == len(out)
    assert (out[["reason_1", "reason_2", "reason_3", "reason_4"]] == "").all().all()


@pytest.mark.parametrize("column, value, problem", [
    ("purpose", "spaceship", "purpose is not one of the allowed values"),
    ("credit_amount", "lots", "credit_amount is not a number"),
    ("age_in_years", "", "age_in_years is missing"),
    ("age_in_years", "NA", "age_in_years is missing"),
    ("duration_in_month", "500", r"duration_in_month is outside \[1, 120\]"),
    ("housing", "castle", "housing is not one of the allowed values"),
])
def test_a_bad_row_is_reported_and_the_rest_are_scored(predictor, raw, tmp_path, column,
                                                       value, problem):
    rows = raw.head(30).copy()
    rows.loc[4, column] = value
    rows.to_csv(tmp_path / "in.csv", index=False)
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    assert (summary["rows"], summary["scored"], summary["rejected"]) == (30, 29, 1)
    errors = read_out(Path(summary["errors"]))
    assert list(errors.columns) == ["row", "line", "problem", *raw.columns]
    assert errors["row"].tolist() == ["5"] and errors["line"].tolist() == ["6"]
    assert errors["problem"].str.match(problem).all()
    assert errors[column].tolist() == [value]
    out = read_out(tmp_path / "out.csv")
    assert len(out) == 29
    assert out[raw.columns].equals(rows.drop(index=4).reset_index(drop=True))


def test_several_problems_in_one_row_are_all_named(predictor, raw, tmp_path):
    rows = raw.head(10).copy()
    rows.loc[2, "purpose"] = "spaceship"
    rows.loc[2, "credit_amount"] = "-5"
    rows.loc[7, "telephone"] = "carrier pigeon"
    rows.to_csv(tmp_path / "in.csv", index=False)
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    errors = read_out(Path(summary["errors"]))
    assert errors["row"].tolist() == ["3", "8"]
    assert "purpose" in errors["problem"][0] and "credit_amount" in errors["problem"][0]
    assert errors["problem"][1] == "telephone is not one of the allowed values"


def test_codes_score_like_raw_spellings(predictor, spec, raw, tmp_path):
    coded = raw.head(50).copy()
    for f in spec.categorical:
        coded[f.source_column] = coded[f.source_column].map({c.value: c.code
                                                             for c in f.categories})
    raw.head(50).to_csv(tmp_path / "raw.csv", index=False)
    coded.to_csv(tmp_path / "coded.csv", index=False)
    score(predictor, tmp_path / "raw.csv", tmp_path / "a.csv")
    score(predictor, tmp_path / "coded.csv", tmp_path / "b.csv")
    a, b = read_out(tmp_path / "a.csv"), read_out(tmp_path / "b.csv")
    assert a[list(OUTPUT_COLUMNS)].equals(b[list(OUTPUT_COLUMNS)])


@pytest.mark.parametrize("chunksize", [1, 7, 333])
def test_chunk_size_does_not_change_the_output(predictor, raw, tmp_path, chunksize):
    rows = raw.copy()
    rows.loc[[3, 500, 999], "purpose"] = "spaceship"
    rows.to_csv(tmp_path / "in.csv", index=False)
    first = score(predictor, tmp_path / "in.csv", tmp_path / "a.csv", chunksize=50_000)
    second = score(predictor, tmp_path / "in.csv", tmp_path / "b.csv", chunksize=chunksize)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (Path(first["errors"]).read_bytes() == Path(second["errors"]).read_bytes())
    assert second["rejected"] == 3


def write_awkward(raw: pd.DataFrame, path: Path, blank_line: bool) -> pd.DataFrame:
    """CRLF endings, a quoted note with a newline, commas and quotes, maybe a blank line."""
    rows = raw.head(20).copy()
    rows.insert(0, "note", [f"note {i}" for i in range(len(rows))])
    rows.loc[3, "note"] = 'multi\nline, "quoted" note'
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\r\n")
        writer.writerow(rows.columns)
        for i, record in enumerate(rows.itertuples(index=False)):
            if i == 10 and blank_line:
                fh.write("\r\n")  # skipped, as pandas does
            writer.writerow(record)
    return rows


@pytest.mark.parametrize("blank_line", [False, True], ids=["fast tokenizer", "csv module"])
def test_an_awkward_csv_scores_the_same(predictor, spec, raw, tmp_path, monkeypatch,
                                        blank_line):
    from ml.batch.score import _Chunker
    if not blank_line:  # this one the fast tokenizer must take itself
        monkeypatch.setattr(_Chunker, "_score_slow", None)
    rows = write_awkward(raw, tmp_path / "in.csv", blank_line)
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    assert (summary["rows"], summary["rejected"]) == (20, 0)
    out = read_out(tmp_path / "out.csv")
    assert out["note"][3] == 'multi\nline, "quoted" note'
    assert out[raw.columns].equals(rows[raw.columns].reset_index(drop=True))
    expected = expected_scores(predictor, spec, rows)
    assert np.max(np.abs(out["probability_of_default"].astype(float).to_numpy()
                         - expected["probability_of_default"].to_numpy())) <= 1e-12
    assert np.max(np.abs(out["score"].astype(float).to_numpy()
                         - expected["score"].to_numpy())) <= 0.005 + 1e-9


def test_a_ragged_row_is_reported_with_its_line(predictor, raw, tmp_path):
    raw.head(6).to_csv(tmp_path / "in.csv", index=False)
    lines = (tmp_path / "in.csv").read_text().splitlines(keepends=True)
    lines[3] = lines[3].rstrip("\n") + ",extra\n"
    (tmp_path / "in.csv").write_text("".join(lines))
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    assert (summary["rows"], summary["scored"]) == (6, 5)
    with open(summary["errors"], newline="") as fh:
        header, error = list(csv.reader(fh))
    assert header == ["row", "line", "problem", *raw.columns]
    assert error[:3] == ["3", "4", f"has {len(raw.columns) + 1} fields, the header has "
                                   f"{len(raw.columns)}"]
    assert error[-1] == "extra"  # the record as it was


def test_header_only_gives_header_only(predictor, raw, tmp_path):
    raw.head(0).to_csv(tmp_path / "in.csv", index=False)
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    assert summary["rows"] == 0
    assert read_out(tmp_path / "out.csv").columns.tolist() == [*raw.columns, *OUTPUT_COLUMNS]


@pytest.mark.parametrize("change, message", [
    (lambda r: r.drop(columns=["purpose"]), "no column 'purpose'"),
    (lambda r: r.assign(decision="x"), "already has output columns"),
])
def test_an_unusable_header_stops_before_scoring(predictor, raw, tmp_path, change, message):
    change(raw.head(3)).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ValueError, match=message):
        score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")


def test_a_stale_errors_file_is_removed(predictor, tmp_path):
    (tmp_path / "out.csv.errors.csv").write_text("old\n")
    score(predictor, DEFAULT_DATA, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv.errors.csv").exists()


def test_progress_goes_to_stderr(predictor, tmp_path, capsys):
    score(predictor, DEFAULT_DATA, tmp_path / "out.csv", progress=True)
    captured = capsys.readouterr()
    assert "scoring" in captured.err and captured.out == ""


def test_cli_scores_and_says_so(model_dir, raw, tmp_path, capsys):
    code = main(["--model", str(model_dir), str(DEFAULT_DATA), str(tmp_path / "out.csv"),
                 "--no-progress", "--no-reasons"])
    assert code == 0
    assert f"scored {len(raw):,} of {len(raw):,} rows" in capsys.readouterr().out
    rows = raw.head(5).copy()
    rows.loc[1, "purpose"] = "spaceship"
    rows.to_csv(tmp_path / "in.csv", index=False)
    code = main(["--model", str(model_dir), str(tmp_path / "in.csv"), str(tmp_path / "o.csv"),
                 "--no-progress"])
    assert code == 1
    assert "1 rows rejected" in capsys.readouterr().out


def write_mixed(raw: pd.DataFrame, path: Path, crlf: bool) -> None:
    """Bad rows, a quoted field with a comma and a newline, maybe CRLF endings."""
    rows = raw.head(300).copy()
    rows.loc[[5, 77], "purpose"] = "spaceship"
    rows.loc[[9], "age_in_years"] = "old"
    rows.loc[[10], "credit_history"] = 'all "paid", duly\nback'  # unknown: rejected too
    rows.to_csv(path, index=False, lineterminator="\r\n" if crlf else "\n")


@pytest.mark.skipif(score_module._csvbytes is None, reason="ml/batch/_csvbytes.c is not built")
@pytest.mark.parametrize("crlf", [False, True], ids=["LF", "CRLF"])
@pytest.mark.parametrize("limit", [100_000, 3], ids=["cache", "cache full"])
@pytest.mark.parametrize("chunksize", [50_000, 7])
def test_the_c_and_numpy_byte_work_write_the_same_files(predictor, raw, tmp_path, monkeypatch,
                                                        crlf, limit, chunksize):
    """ml/batch/_csvbytes.c (split, lookup, splice) against the numpy versions it replaces."""
    write_mixed(raw, tmp_path / "in.csv", crlf)
    monkeypatch.setattr(score_module._ColumnCache, "LIMIT", limit)
    native = score(predictor, tmp_path / "in.csv", tmp_path / "c.csv", chunksize=chunksize)
    monkeypatch.setattr(score_module, "_csvbytes", None)
    numpy = score(predictor, tmp_path / "in.csv", tmp_path / "np.csv", chunksize=chunksize)
    assert (native["rows"], native["rejected"]) == (numpy["rows"], numpy["rejected"]) == (300, 4)
    assert (tmp_path / "c.csv").read_bytes() == (tmp_path / "np.csv").read_bytes()
    assert Path(native["errors"]).read_bytes() == Path(numpy["errors"]).read_bytes()


@pytest.mark.skipif(score_module._csvbytes is None, reason="ml/batch/_csvbytes.c is not built")
@pytest.mark.parametrize("block, ncols, expected", [
    (b"a,b\n", 2, [[0, 2], [1, 3], [4]]),
    (b'"x,\n",b\r\n', 2, [[0, 6], [5, 7], [9]]),
    (b"a,b\n\nc,d\n", 2, None),  # blank line
    (b"a,b,c\n", 2, None),  # ragged
    (b'"a,b\n', 2, None),  # unclosed quote
    (b"a,b\nc", 2, None),  # no final newline
])
def test_the_c_split_finds_fields_or_refuses(block, ncols, expected):
    lines = max(1, block.count(b"\n"))
    starts, ends = np.empty((ncols, lines), np.int64), np.empty((ncols, lines), np.int64)
    line_end = np.empty(lines, np.int64)
    n = score_module._csvbytes.split(block, ncols, starts, ends, line_end)
    if expected is None:
        assert n == -1
    else:
        assert n == 1
        assert [starts[:, 0].tolist(), ends[:, 0].tolist(), line_end[:1].tolist()] == expected


@pytest.mark.skipif(score_module._csvbytes is None, reason="ml/batch/_csvbytes.c is not built")
@pytest.mark.parametrize("damage", ["cell outside block", "key index", "key outside keys",
                                    "table size", "split shape", "splice offset",
                                    "splice size"])
def test_the_c_byte_work_refuses_bad_offsets_instead_of_reading_past_them(damage):
    native = score_module._csvbytes
    index = score_module._CellIndex()
    index.add([b"yes", b"no"])
    block = b"yes,no\n"
    starts, lengths = np.array([0, 4], np.int64), np.array([3, 2], np.int64)
    assert index.find(block, starts, lengths).tolist() == [0, 1]
    table, start = index.table.copy(), index.start.copy()
    out = np.empty(2, np.int64)
    with pytest.raises(ValueError):
        if damage == "cell outside block":
            native.lookup(block, np.array([0, 6], np.int64), lengths, index.keys, start,
                          index.length, table, out)
        elif damage in ("key index", "key outside keys"):
            if damage == "key index":
                table[table >= 0] = 7
            else:
                start[:] = 100
            native.lookup(block, starts, lengths, index.keys, start, index.length, table, out)
        elif damage == "table size":
            native.lookup(block, starts, lengths, index.keys, start, index.length,
                          table[:48], out)
        elif damage == "split shape":
            native.split(block, 2, np.empty((2, 1), np.int64), np.empty((2, 2), np.int64),
                         np.empty(1, np.int64))
        else:
            bad_at = np.array([9 if damage == "splice offset" else 6], np.int64)
            size = len(block) + 3 + (1 if damage == "splice size" else 0)
            native.splice(block, np.array([7], np.int64), bad_at, np.ones(1, np.uint8),
                          np.zeros((1, 2), np.uint8), 2, np.zeros(1, np.int64), b"z",
                          np.zeros(1, np.int64), np.ones(1, np.int64), bytearray(size))


def test_the_c_byte_work_is_built_where_ci_runs():
    """`pip install -e .` compiles ml/batch/_csvbytes.c; without it batch scoring is slower."""
    if score_module._csvbytes is None and not os.environ.get("CI"):
        pytest.skip("ml/batch/_csvbytes.c is not built (no compiler?); CI must build it")
    assert score_module._csvbytes is not None
