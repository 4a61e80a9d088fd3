"""The batch scorer: the same scores as the predictor, bad rows reported, CSV and Parquet."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ml.serving.artifact import library_versions
from ml.training.compile import score_frame
from ml.training.publish import save_artifact
from ml.spec.config import DEFAULT_DATA
from ml.training.data import load_dataset, read_raw
from ml.training.pipeline import build_pipeline
from ml.serving.predictor import OUTPUT_COLUMNS, Predictor
from ml.spec.schema import CATEGORICAL
from ml.batch import columns as columns_module
from ml.batch import score as score_module
from ml.batch.score import main, score_file

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
    return score_file(None, src, out, predictor=predictor, **kwargs)


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
    # The score is written at full precision, like the PD (and as the API answers it).
    assert np.max(np.abs(out["score"].astype(float).to_numpy()
                         - expected["score"].to_numpy())) <= 1e-9
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


@pytest.mark.parametrize("blank_line", [False, True], ids=["no blank line", "blank line"])
def test_an_awkward_csv_scores_the_same(predictor, spec, raw, tmp_path, blank_line):
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
                         - expected["score"].to_numpy())) <= 1e-9


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


@pytest.mark.parametrize("crlf", [False, True], ids=["LF", "CRLF"])
@pytest.mark.parametrize("limit", [200_000, 3], ids=["cache", "cache full"])
@pytest.mark.parametrize("chunksize", [50_000, 7])
def test_line_endings_cache_and_batches_do_not_change_the_files(predictor, raw, tmp_path,
                                                                monkeypatch, crlf, limit,
                                                                chunksize):
    """The same records, bad ones included, scored with other line ends, a full cell cache
    (cells read per batch) and small batches give the same files."""
    write_mixed(raw, tmp_path / "in.csv", crlf)
    reference = score(predictor, tmp_path / "in.csv", tmp_path / "ref.csv")
    monkeypatch.setattr(columns_module.ColumnReader, "LIMIT", limit)
    got = score(predictor, tmp_path / "in.csv", tmp_path / "got.csv", chunksize=chunksize)
    assert (got["rows"], got["rejected"]) == (reference["rows"], reference["rejected"]) == (300, 4)
    assert (tmp_path / "ref.csv").read_bytes() == (tmp_path / "got.csv").read_bytes()
    errors = read_out(Path(got["errors"]))
    assert errors["row"].tolist() == ["6", "10", "11", "78"]
    # row 11 holds a quoted newline: row 78 starts one line later than its number says
    assert errors["line"].tolist() == ["7", "11", "12", "80"]
    assert Path(reference["errors"]).read_bytes() == Path(got["errors"]).read_bytes()


def test_lines_count_blank_lines_and_quoted_newlines(predictor, raw, tmp_path):
    rows = write_awkward(raw, tmp_path / "in.csv", blank_line=True)
    text = (tmp_path / "in.csv").read_bytes().decode()
    records = text.split("\r\n")
    at = next(i for i, line in enumerate(records) if line.startswith("note 15,"))
    records[at] = records[at].replace(rows.iloc[15]["purpose"], "spaceship", 1)
    (tmp_path / "in.csv").write_bytes("\r\n".join(records).encode())
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    errors = read_out(Path(summary["errors"]))
    # record 16, after a quoted newline and a blank line: line 1 + 16 + 2
    assert errors[["row", "line"]].values.tolist() == [["16", "19"]]


def test_scores_of_100k_rows_read_in_several_batches(predictor, spec, raw, tmp_path,
                                                     monkeypatch):
    big = raw.sample(100_000, replace=True, random_state=1).reset_index(drop=True)
    big.loc[[17, 54_321, 99_999], "credit_amount"] = "lots"
    big.to_csv(tmp_path / "big.csv", index=False)
    batches = []
    real = score_module._Scorer.score
    monkeypatch.setattr(score_module._Scorer, "score",
                        lambda self, batch: batches.append(batch.table.num_rows)
                        or real(self, batch))
    summary = score(predictor, tmp_path / "big.csv", tmp_path / "out.csv", reasons=False,
                    chunksize=20_000)
    assert (summary["rows"], summary["scored"], summary["rejected"]) == (100_000, 99_997, 3)
    assert len(batches) >= 4 and sum(batches) == 100_000
    assert read_out(Path(summary["errors"]))["row"].tolist() == ["18", "54322", "100000"]
    out = pd.read_csv(tmp_path / "out.csv", usecols=["probability_of_default"])
    good = big.drop(index=[17, 54_321, 99_999])
    expected = expected_scores(predictor, spec, good)["probability_of_default"].to_numpy()
    assert np.max(np.abs(out["probability_of_default"].to_numpy() - expected)) <= 1e-12


def test_parquet_in_and_out_round_trip(predictor, spec, raw, tmp_path):
    rows = raw.head(200).copy()
    rows.loc[5, "purpose"] = "spaceship"
    rows.to_csv(tmp_path / "in.csv", index=False)
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "in.parquet")
    by_csv = score(predictor, tmp_path / "in.csv", tmp_path / "a.csv")
    to_parquet = score(predictor, tmp_path / "in.csv", tmp_path / "b.parquet")
    from_parquet = score(predictor, tmp_path / "in.parquet", tmp_path / "c.csv")
    both = score(predictor, tmp_path / "in.parquet", tmp_path / "d.parquet", chunksize=64)
    for summary in (by_csv, to_parquet, from_parquet, both):
        assert (summary["rows"], summary["rejected"]) == (200, 1)
    a = read_out(tmp_path / "a.csv")
    assert read_out(tmp_path / "c.csv").equals(a)
    for name in ("b.parquet", "d.parquet"):
        table = pq.read_table(tmp_path / name).to_pandas()
        assert list(table.columns) == [*raw.columns, *OUTPUT_COLUMNS]
        assert table[raw.columns].astype(str).equals(a[raw.columns])
        assert table["probability_of_default"].to_numpy().tolist() == \
            a["probability_of_default"].astype(float).tolist()
        for column in OUTPUT_COLUMNS[1:]:
            assert table[column].astype(str).tolist() == a[column].tolist()
    errors = read_out(Path(both["errors"]))
    assert errors[["row", "line"]].values.tolist() == [["6", ""]]


def test_typed_and_dictionary_parquet_columns_score_like_text(predictor, spec, raw, tmp_path):
    rows = raw.head(100)
    X = load_dataset_from_frame(rows, spec)
    columns = {}
    for f in spec.features:
        text = rows[f.source_column]
        if f.kind == CATEGORICAL:
            columns[f.source_column] = pa.array(text).dictionary_encode()
        else:
            columns[f.source_column] = pa.array(text.astype(int).to_numpy())
    columns["age_in_years"] = pa.array([None, *X["age_in_years"].iloc[1:].tolist()],
                                       pa.float64())
    pq.write_table(pa.table(columns), tmp_path / "typed.parquet")
    summary = score(predictor, tmp_path / "typed.parquet", tmp_path / "out.csv")
    assert (summary["rows"], summary["rejected"]) == (100, 1)
    errors = read_out(Path(summary["errors"]))
    assert errors["problem"].tolist() == ["age_in_years is missing and the spec does not "
                                          "allow missing values"]
    out = read_out(tmp_path / "out.csv")
    expected = expected_scores(predictor, spec, rows.iloc[1:])
    assert np.max(np.abs(out["probability_of_default"].astype(float).to_numpy()
                         - expected["probability_of_default"].to_numpy())) <= 1e-12


def test_bad_utf8_rejects_only_its_rows(predictor, raw, tmp_path):
    raw.head(5).to_csv(tmp_path / "in.csv", index=False)
    data = (tmp_path / "in.csv").read_bytes().split(b"\n")
    data[2] = data[2].replace(b"radio/television", b"radio/tele\xffvision")
    (tmp_path / "in.csv").write_bytes(b"\n".join(data))
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    assert (summary["rows"], summary["scored"]) == (5, 4)
    errors = read_out(Path(summary["errors"]))
    assert errors[["row", "line", "problem"]].values.tolist() == [
        ["2", "3", "has bytes that are not UTF-8 text"]]
    assert errors["purpose"][0] == "radio/tele\ufffdvision"


@pytest.mark.parametrize("content, name, message", [
    (b"", "in.csv", "is empty"),
    (b"a,b\n1,2\n", "in.csv", "no column"),
    (b"a,a\n1,2\n", "in.csv", "more than once"),
    (b"not parquet at all", "in.parquet", "cannot read in.parquet"),
    (b"a,b\n", "in.json", "cannot tell the format"),
])
def test_unusable_inputs_stop_with_a_clear_error(predictor, tmp_path, content, name, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        score(predictor, tmp_path / name, tmp_path / "out.csv")


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"purpose\nx\n", "no column"),
])
def test_the_cli_says_what_is_wrong_without_a_traceback(model_dir, tmp_path, capsys, content,
                                                        message):
    from ml.__main__ import main as ml_main
    (tmp_path / "in.csv").write_bytes(content)
    code = ml_main(["score", "--model", str(model_dir), str(tmp_path / "in.csv"),
                    str(tmp_path / "out.csv"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert main(["--model", str(model_dir), str(tmp_path / "in.csv"),
                 str(tmp_path / "out.csv"), "--no-progress"]) == 2


def test_the_cli_takes_a_format_flag(model_dir, raw, tmp_path):
    raw.head(20).to_csv(tmp_path / "in.data", index=False)
    assert main(["--model", str(model_dir), str(tmp_path / "in.data"),
                 str(tmp_path / "out.data"), "--no-progress", "--format", "csv"]) == 0
    assert main(["--model", str(model_dir), str(tmp_path / "in.data"),
                 str(tmp_path / "out.pq"), "--no-progress", "--input-format", "csv"]) == 0
    assert len(read_out(tmp_path / "out.data")) == len(pq.read_table(tmp_path / "out.pq")) == 20


def test_batch_scoring_loads_no_training_library(model_dir, tmp_path):
    """Scoring a file imports neither the training code nor sklearn, scipy, pandas or
    matplotlib: the compiled model is all it needs, as the API."""
    (tmp_path / "in.csv").write_bytes(DEFAULT_DATA.read_bytes())
    code = (
        "import sys\n"
        "from ml.batch.score import score_file\n"
        f"score_file({str(model_dir)!r}, {str(tmp_path / 'in.csv')!r}, "
        f"{str(tmp_path / 'out.parquet')!r}, progress=False)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('sklearn', 'scipy', 'pandas', 'matplotlib') or m.startswith('ml.training'))\n"
        "print(bad)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_output_never_overwrites_the_input(predictor, raw, tmp_path):
    raw.head(3).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ValueError, match="overwrite the input"):
        score(predictor, tmp_path / "in.csv", tmp_path / "in.csv")
    assert len(read_out(tmp_path / "in.csv")) == 3


def test_parquet_columns_csv_cannot_hold_give_a_clear_error(predictor, raw, tmp_path):
    table = pa.Table.from_pandas(raw.head(5), preserve_index=False)
    nested = table.append_column("tags", pa.array([[1, 2]] * 5))
    pq.write_table(nested, tmp_path / "nested.parquet")
    with pytest.raises(ValueError, match="cannot write out.csv"):
        score(predictor, tmp_path / "nested.parquet", tmp_path / "out.csv")
    assert score(predictor, tmp_path / "nested.parquet", tmp_path / "out.parquet")["scored"] == 5
    listed = table.set_column(table.schema.get_field_index("purpose"), "purpose",
                              pa.array([["car"]] * 5))
    pq.write_table(listed, tmp_path / "listed.parquet")
    with pytest.raises(ValueError, match="column 'purpose' holds list"):
        score(predictor, tmp_path / "listed.parquet", tmp_path / "out.parquet")


def test_bad_utf8_in_a_large_string_parquet_column_rejects_its_row(predictor, raw, tmp_path):
    table = pa.Table.from_pandas(raw.head(4), preserve_index=False)
    note = pa.Array.from_buffers(pa.large_string(), 4, [
        None, pa.py_buffer(np.array([0, 2, 4, 5, 7], np.int64)), pa.py_buffer(b"okok\xffok")])
    pq.write_table(table.append_column("note", note), tmp_path / "in.parquet")
    summary = score(predictor, tmp_path / "in.parquet", tmp_path / "out.parquet")
    assert (summary["rows"], summary["scored"]) == (4, 3)
    assert read_out(Path(summary["errors"]))["row"].tolist() == ["3"]


def test_ragged_rows_after_the_last_good_one_are_reported(predictor, raw, tmp_path):
    raw.head(4).to_csv(tmp_path / "in.csv", index=False)
    with open(tmp_path / "in.csv", "a") as fh:
        fh.write("a,b\nc\n")
    summary = score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")
    assert (summary["rows"], summary["scored"]) == (6, 4)
    errors = read_out(Path(summary["errors"]))
    assert errors[["row", "line"]].values.tolist() == [["5", "6"], ["6", "7"]]
    assert errors["problem"].tolist() == [f"has {n} fields, the header has {len(raw.columns)}"
                                          for n in (2, 1)]


def test_a_record_longer_than_a_batch_stops_with_advice(predictor, raw, tmp_path):
    rows = raw.head(300).copy()
    rows.insert(0, "note", "")
    rows.loc[250, "note"] = "x" * 200_000
    rows.to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(ValueError, match="raise --chunksize"):
        score(predictor, tmp_path / "in.csv", tmp_path / "out.csv", chunksize=1)
    assert score(predictor, tmp_path / "in.csv", tmp_path / "out.csv")["scored"] == 300


def test_a_missing_input_file_is_named(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="no input file"):
        score(predictor, tmp_path / "nothing.csv", tmp_path / "out.csv")
