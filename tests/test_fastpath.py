"""The compiled model gives sklearn's probabilities, for every family the trainer can pick,
as compiled and as read back from its model files (JSON + npz)."""
from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (GradientBoostingClassifier, HistGradientBoostingClassifier,
                              VotingClassifier)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC

from helpers import blanked_german
from ml.serving import modelfile, trees
from ml.serving.errors import UnsupportedModelError
from ml.training.compile import check_against, compile_model, predict_frame, raw_from_frame
from ml.training.data import records_to_frame
from ml.training.pipeline import build_blend, build_pipeline
from ml.spec.schema import CATEGORICAL, DatasetSpec
from ml.training.train import record_from_row

TOLERANCE = 1e-9
# Batches of fewer rows than this once took another tree walk: kept as the batch size of
# the "small batches" checks, so each walk strategy still sees several batch sizes.
SMALL_BATCH = 255
# Small but representative settings: the whole file must stay fast on 2 cores.
FAMILIES = {
    "logistic_regression": {"model__C": 0.3},
    "random_forest": {"model__n_estimators": 30, "model__min_samples_leaf": 3},
    "hist_gradient_boosting": {"model__max_iter": 40, "model__max_leaf_nodes": 15},
}
CALIBRATIONS = (None, "sigmoid", "isotonic")
# The trainer's soft-voting blends: a linear and a tree member, and all three families.
BLENDS = {"two families": ("logistic_regression", "random_forest"),
          "three families": tuple(FAMILIES)}


def fit(spec: DatasetSpec, X: pd.DataFrame, y: np.ndarray, family: str,
        calibration: str | None = None) -> object:
    """A fitted pipeline, or a CalibratedClassifierCV of one, as the trainer builds them."""
    pipeline = build_pipeline(spec, family, seed=0, params=FAMILIES[family])
    if calibration is None:
        return pipeline.fit(X, y)
    return CalibratedClassifierCV(pipeline, method=calibration, cv=5,
                                  ensemble=False).fit(X, y)


def records_of(X: pd.DataFrame, spec: DatasetSpec) -> list[dict]:
    """API-style records (None for missing) of a validated frame, as the trainer writes them."""
    return [record_from_row(row, spec) for _, row in X.iterrows()]


@pytest.fixture(scope="module")
def full(dataset):
    return dataset.X, dataset.y


@pytest.fixture(scope="module")
def blanked(spec, tmp_path_factory):
    """The German data with ~10% of feature cells blanked, read with every feature nullable."""
    X, y, nullable_spec = blanked_german(spec, tmp_path_factory.mktemp("blanked"), seed=7)
    assert X[spec.feature_names].isna().to_numpy().mean() > 0.08
    return X, y, nullable_spec


@pytest.fixture(scope="module")
def models(spec, full, blanked):
    """Every family × calibration, fitted on the full and on the blanked data (lazily)."""
    cache = {}

    def get(family, calibration, variant):
        key = (family, calibration, variant)
        if key not in cache:
            X, y = full if variant == "full" else blanked[:2]
            cache[key] = fit(spec, X, y, family, calibration)
        return cache[key]
    return get


@pytest.fixture(scope="module")
def blends(spec, full, blanked):
    """Every blend of BLENDS, fitted on the full and on the blanked data (lazily)."""
    cache = {}

    def get(name, variant):
        if (name, variant) not in cache:
            X, y = full if variant == "full" else blanked[:2]
            members = {family: FAMILIES[family] for family in BLENDS[name]}
            cache[name, variant] = build_blend(spec, 0, members).fit(X, y)
        return cache[name, variant]
    return get


@pytest.mark.parametrize("variant", ["full", "blanked"])
@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_predict_proba_on_every_row(models, full, blanked, spec, family, calibration,
                                            variant):
    X = full[0] if variant == "full" else blanked[0]
    model = models(family, calibration, variant)
    fast = compile_model(model)
    expected = model.predict_proba(X)[:, 1]
    from_frame = predict_frame(fast, X)
    from_records = fast.predict_records(records_of(X, spec))
    step = SMALL_BATCH
    in_small_batches = np.concatenate([predict_frame(fast, X.iloc[i:i + step])
                                       for i in range(0, len(X), step)])
    assert np.max(np.abs(from_frame - expected)) <= TOLERANCE
    assert np.max(np.abs(from_records - expected)) <= TOLERANCE
    assert np.max(np.abs(in_small_batches - expected)) <= TOLERANCE


@pytest.mark.parametrize("calibration", CALIBRATIONS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_model_files_a_server_loads_match_predict_proba(
        models, full, spec, family, calibration):
    """What ``save_artifact`` writes for serving: no sklearn objects, same probabilities."""
    model = models(family, calibration, "full")
    X = full[0]
    files = modelfile.dump(compile_model(model))
    fast = modelfile.load(*files)
    expected = model.predict_proba(X)[:, 1]
    baseline = fast.baseline(records_of(X.head(1), spec)[0])
    assert np.max(np.abs(predict_frame(fast, X) - expected)) <= TOLERANCE
    assert np.max(np.abs(fast.predict_records(records_of(X, spec)) - expected)) <= TOLERANCE
    assert np.max(np.abs(predict_frame(fast, X, baseline)[:, 0] - expected)) <= TOLERANCE
    assert b"sklearn" not in b"".join(files)


@pytest.mark.parametrize("rows", [3, 40])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_an_applicant_gets_the_same_pd_wherever_it_stands_in_a_batch(
        models, full, spec, family, rows):
    """Bit for bit, with and without reason-code rows (BLAS products are not: they round a
    row by its position)."""
    fast = compile_model(models(family, None, "full"))
    reference = fast.baseline(records_of(full[0].iloc[[50]], spec)[0])
    for applicant in records_of(full[0].head(5), spec):
        records = records_of(full[0].iloc[10:10 + rows], spec)
        positions = range(0, rows, 2)
        for i in positions:
            records[i] = applicant
        for result in (fast.predict_records(records), fast.predict_records(records, reference)):
            assert all(np.array_equal(result[i], result[0]) for i in positions)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_record_at_a_time_matches_the_batch(models, full, spec, family):
    model = models(family, "sigmoid", "full")
    fast = compile_model(model)
    records = records_of(full[0].head(25), spec)
    batch = fast.predict_records(records)
    single = np.array([fast.predict_records([r])[0] for r in records])
    assert np.max(np.abs(single - batch)) <= TOLERANCE


@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_predict_proba_on_random_applicants(models, blanked, family):
    """Values never seen in training (non-integers, extremes, NaN anywhere) still agree."""
    X, _, nullable_spec = blanked
    model = models(family, "isotonic", "blanked")
    rng = np.random.default_rng(11)
    n = 400
    columns = {}
    for f in nullable_spec.features:
        if f.kind == CATEGORICAL:
            values = rng.choice(np.array(f.codes, dtype=object), size=n)
        else:
            values = rng.uniform(f.minimum, f.maximum, size=n)
            whole = rng.random(n) < 0.3
            values[whole] = np.round(values[whole])
        values = pd.Series(values, dtype=object if f.kind == CATEGORICAL else float)
        values[rng.random(n) < 0.15] = np.nan
        columns[f.name] = values
    frame = pd.DataFrame(columns)
    fast = compile_model(model)
    assert check_against(model, fast, frame) <= TOLERANCE


@pytest.mark.filterwarnings("ignore:Found unknown categories")
@pytest.mark.parametrize("family", list(FAMILIES))
def test_unknown_category_is_all_zeros_like_sklearn(models, full, spec, family):
    model = models(family, None, "full")
    frame = full[0].head(5).copy()
    frame["purpose"] = frame["purpose"].astype(object)
    frame.loc[frame.index[0], "purpose"] = "not_a_purpose"
    fast = compile_model(model)
    records = records_of(frame, spec)
    assert np.max(np.abs(fast.predict_records(records)
                         - model.predict_proba(frame)[:, 1])) <= TOLERANCE


@pytest.mark.parametrize("calibration", [None, "isotonic"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_baseline_rows_swap_exactly_one_feature(models, full, spec, family, calibration):
    model = models(family, calibration, "full")
    fast = compile_model(model)
    records = records_of(full[0].iloc[[3, 10]], spec)
    reference = records_of(full[0].iloc[[20]], spec)[0]
    what_if = fast.predict_records(records, fast.baseline(reference))
    assert what_if.shape == (2, 1 + len(fast.features))
    for i, record in enumerate(records):
        assert what_if[i, 0] == pytest.approx(fast.predict_records([record])[0], abs=TOLERANCE)
        swapped = [{**record, name: reference[name]} for name in fast.features]
        assert np.max(np.abs(what_if[i, 1:] - fast.predict_records(swapped))) <= TOLERANCE
    raw = fast.raw_from_records(records)
    assert np.max(np.abs(fast.predict_raw(raw, fast.baseline(reference)) - what_if)) <= TOLERANCE


@pytest.mark.parametrize("variant", ["full", "blanked"])
@pytest.mark.parametrize("name", list(BLENDS))
def test_a_blend_matches_predict_proba_on_every_row(blends, full, blanked, spec, name, variant):
    """Frames, records, small batches and the model files a server loads all give the vote's
    PD."""
    X, row_spec = (full[0], spec) if variant == "full" else (blanked[0], blanked[2])
    model = blends(name, variant)
    fast = compile_model(model)
    assert len(fast.members) == len(BLENDS[name])
    assert fast.kind == "blend:" + "+".join(BLENDS[name])
    expected = model.predict_proba(X)[:, 1]
    files = modelfile.dump(fast)
    served = modelfile.load(*files)
    records = records_of(X, row_spec)
    step = SMALL_BATCH
    in_small_batches = np.concatenate([predict_frame(fast, X.iloc[i:i + step])
                                       for i in range(0, len(X), step)])
    with_reasons = served.predict_records(records, served.baseline(records[0]))
    for got in (predict_frame(fast, X), fast.predict_records(records), in_small_batches,
                predict_frame(served, X), served.predict_records(records), with_reasons[:, 0]):
        assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert b"sklearn" not in b"".join(files)


@pytest.mark.parametrize("name", list(BLENDS))
def test_a_blends_what_if_rows_are_the_votes_own_probabilities(blends, full, spec, name):
    """Reason codes of a blend: each what-if column is what sklearn's vote gives the
    applicant with that one feature set to the baseline's value."""
    model = blends(name, "full")
    fast = compile_model(model)
    records = records_of(full[0].iloc[[3, 10, 41]], spec)
    reference = records_of(full[0].iloc[[20]], spec)[0]
    what_if = fast.predict_records(records, fast.baseline(reference))
    for i, record in enumerate(records):
        swapped = [{**record, feature: reference[feature]} for feature in fast.features]
        expected = model.predict_proba(records_to_frame(swapped, spec))[:, 1]
        assert np.max(np.abs(what_if[i, 1:] - expected)) <= TOLERANCE


def test_tree_inputs_are_compared_in_float32_like_sklearn(spec, full):
    """Just above a split threshold in float64 but on it in float32: sklearn goes left."""
    X, y = full
    model = fit(spec, X, y, "random_forest")
    scaler = model.named_steps["prep"].named_transformers_["num"].named_steps["scale"]
    roots = [(i, t.tree_.feature[0], t.tree_.threshold[0])
             for i, t in enumerate(model.named_steps["model"].estimators_)]
    usable = [(i, j, th) for i, j, th in roots
              if j < len(scaler.mean_) and np.float32(th) == th]
    if not usable:
        pytest.skip("no root split on a numeric feature at a float32 value")
    _, j, threshold = usable[0]
    scaled = threshold + np.arange(1, 50) * 1e-12  # float32 rounds these onto threshold
    frame = pd.concat([X.iloc[[0]]] * len(scaled), ignore_index=True)
    frame[spec.numeric[j].name] = scaled * scaler.scale_[j] + scaler.mean_[j]
    fast = compile_model(model)
    bank = fast.members[0].estimator.bank
    assert check_against(model, fast, frame) <= TOLERANCE  # native walk (if built)
    native, bank.native = bank.native, None
    assert check_against(model, fast, frame) <= TOLERANCE  # numpy walk
    bank.float32 = False  # the test must be able to tell, in both walks
    with pytest.raises(UnsupportedModelError):
        check_against(model, fast, frame)
    if native is not None:
        bank.native = bank._pack()
        with pytest.raises(UnsupportedModelError):
            check_against(model, fast, frame)


def _pipeline_with(spec, numeric=None, categorical=None, estimator=None):
    numeric = numeric or Pipeline([("impute", SimpleImputer(strategy="median")),
                                   ("scale", StandardScaler())])
    categorical = categorical or Pipeline([
        ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
        ("onehot", OneHotEncoder(handle_unknown="ignore", sparse_output=False))])
    return Pipeline([("prep", ColumnTransformer(
        [("num", numeric, [f.name for f in spec.numeric]),
         ("cat", categorical, [f.name for f in spec.categorical])])),
        ("model", LogisticRegression(max_iter=500) if estimator is None else estimator)])


UNSUPPORTED = {
    "bare estimator": lambda spec: LogisticRegression(max_iter=500),
    "SVC": lambda spec: _pipeline_with(spec, estimator=SVC()),
    "GradientBoostingClassifier": lambda spec: _pipeline_with(
        spec, estimator=GradientBoostingClassifier(n_estimators=5)),
    "scaler without imputer": lambda spec: _pipeline_with(
        spec, numeric=Pipeline([("scale", StandardScaler())])),
    "missing indicator": lambda spec: _pipeline_with(
        spec, numeric=Pipeline([("impute", SimpleImputer(add_indicator=True)),
                                ("scale", StandardScaler())])),
    "one-hot drop=first": lambda spec: _pipeline_with(
        spec, categorical=Pipeline([
            ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
            ("onehot", OneHotEncoder(drop="first", handle_unknown="ignore",
                                     sparse_output=False))])),
    "native categorical splits": lambda spec: _pipeline_with(
        spec, estimator=HistGradientBoostingClassifier(max_iter=5, categorical_features=[7])),
    "temperature calibration": lambda spec: CalibratedClassifierCV(
        _pipeline_with(spec), method="temperature", cv=3, ensemble=False),
    "weighted vote": lambda spec: VotingClassifier(
        [("a", _pipeline_with(spec)), ("b", _pipeline_with(spec))], voting="soft",
        weights=[1, 2]),
    "hard vote": lambda spec: VotingClassifier(
        [("a", _pipeline_with(spec)), ("b", _pipeline_with(spec))], voting="hard"),
    "vote of a calibrated member": lambda spec: VotingClassifier(
        [("a", _pipeline_with(spec)), ("b", CalibratedClassifierCV(
            _pipeline_with(spec), method="sigmoid", cv=3, ensemble=False))], voting="soft"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_rejects_models_it_cannot_reproduce(spec, full, name):
    X, y = full
    model = UNSUPPORTED[name](spec)
    model.fit(X[[f.name for f in spec.numeric]] if name == "bare estimator" else X, y)
    with pytest.raises(UnsupportedModelError, match="fast path cannot compile"):
        compile_model(model)


def test_rejects_more_than_two_classes(spec, full):
    X, y = full
    three = np.where(X["age_in_years"] > 50, 2, y)
    model = build_pipeline(spec, "logistic_regression", 0).fit(X, three)
    with pytest.raises(UnsupportedModelError, match="classes"):
        compile_model(model)


def test_check_against_catches_a_wrong_fast_path(models, full):
    model = models("logistic_regression", None, "full")
    fast = compile_model(model)
    fast.members[0].estimator.intercept += 0.01  # simulate a compiler bug
    with pytest.raises(UnsupportedModelError, match="disagrees with sklearn"):
        check_against(model, fast, full[0].head(20))


def test_ensemble_calibration_averages_its_classifiers(spec, full):
    X, y = full
    model = CalibratedClassifierCV(build_pipeline(spec, "logistic_regression", 0),
                                   method="sigmoid", cv=3, ensemble=True).fit(X, y)
    fast = compile_model(model)
    assert len(fast.members) == 3
    assert check_against(model, fast, X) <= TOLERANCE


@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting"])
def test_large_batches_give_the_same_result(models, full, family):
    model = models(family, "sigmoid", "full")
    frame = full[0].sample(SMALL_BATCH + 11, replace=True, random_state=1)
    fast = compile_model(model)
    assert check_against(model, fast, frame) <= TOLERANCE


def _member(models, family, variant="full"):
    fast = compile_model(models(family, None, variant))
    return fast, fast.members[0]


@pytest.mark.skipif(trees._treewalk is None, reason="the C tree walk is not built")
@pytest.mark.parametrize("variant", ["full", "blanked"])
@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting"])
def test_native_and_numpy_tree_walks_give_the_same_bits(models, full, blanked, family, variant):
    """The C walk adds the same leaves in the same order as the numpy one, row by row."""
    fast, member = _member(models, family, variant)
    X = full[0] if variant == "full" else blanked[0]
    z = member.encoder.encode(raw_from_frame(fast, X))
    bank = member.estimator.bank
    assert bank.native is not None
    native = bank.sums(z)
    numpy_walk = bank.leaf_values(z).sum(axis=0)
    assert np.array_equal(native, numpy_walk)
    for i in (0, len(z) - 1):  # a row alone: the same bits as within the batch
        assert np.array_equal(bank.sums(z[i:i + 1]), numpy_walk[i:i + 1])


@pytest.mark.skipif(trees._treewalk is None, reason="the C tree walk is not built")
@pytest.mark.parametrize("tree", [0, -1], ids=["a full block", "the last block"])
@pytest.mark.parametrize("damage", ["child", "feature", "root", "short path", "sizes"])
def test_native_walk_refuses_damaged_nodes_instead_of_reading_past_them(models, damage, tree):
    """Trees are walked in blocks (full ones by a specialised copy of the loop): damage in
    the first tree or the last is caught alike."""
    _, member = _member(models, "random_forest")
    nodes, values, roots, depths, wide = member.estimator.bank.native
    assert len(roots) % 16, "the last block must be a partial one"
    nodes, roots, depths = nodes.copy(), roots.copy(), depths.copy()
    x = np.zeros((2, member.encoder.n_out), dtype=np.float32)
    out = np.empty(2)
    if damage == "child":
        nodes["left"][roots[tree]] = nodes["right"][roots[tree]] = len(nodes) + 7
    elif damage == "feature":
        nodes["feature"][roots[tree]] = x.shape[1]
    elif damage == "root":
        roots[tree] = -2
    elif damage == "short path":  # the walk would stop on inner nodes
        depths[:] = 0
    else:
        out = np.empty(3)
    with pytest.raises(ValueError):
        trees._treewalk.sum_leaves(nodes, values, roots, depths, x, x.shape[1], out, wide)


@pytest.mark.skipif(trees._treewalk is None, reason="the C tree walk is not built")
def test_a_requests_walk_keeps_the_gil_and_a_batchs_releases_it(models, full):
    """Below KEEP_GIL (row, tree) pairs no other thread (the API's store writer) can run in
    the middle of the walk; both sides of the threshold add the same leaves."""
    fast, member = _member(models, "random_forest")
    bank = member.estimator.bank
    z = member.encoder.encode(raw_from_frame(fast, full[0]))
    small = trees._treewalk.KEEP_GIL // bank.n_trees
    assert small * bank.n_trees < trees._treewalk.KEEP_GIL <= (small + 1) * bank.n_trees
    expected = bank.leaf_values(z).sum(axis=0)
    for rows in (1, small, small + 1):
        assert np.array_equal(bank.sums(z[:rows]), expected[:rows])
    nodes, values, roots, depths, wide = bank.native
    x = np.ascontiguousarray(z[:small], dtype=np.float32)
    out = np.empty(small)
    steps: list[None] = []
    started, stop = threading.Event(), threading.Event()

    def waiter() -> None:  # wants the GIL back as soon as it gives it up
        started.set()
        while not stop.is_set():
            steps.append(None)
            time.sleep(0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(60)  # the main thread then keeps the GIL unless it releases it
    thread = threading.Thread(target=waiter)
    try:
        thread.start()
        started.wait()
        before = len(steps)
        for _ in range(200):
            trees._treewalk.sum_leaves(nodes, values, roots, depths, x, x.shape[1], out, wide)
        assert len(steps) == before
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_the_native_walk_is_built_where_ci_runs():
    """`pip install -e .` compiles ml/serving/_treewalk.c; without it serving is ~5x slower."""
    if trees._treewalk is None and not os.environ.get("CI"):
        pytest.skip("the C tree walk is not built (no compiler?); CI must build it")
    assert trees._treewalk is not None


@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting"])
def test_batches_walked_on_several_threads_at_once_give_the_same_bits(models, full, family):
    """The batch scorer's workers walk their chunks concurrently (without the GIL)."""
    fast, member = _member(models, family)
    z = member.encoder.encode(raw_from_frame(fast, full[0]))
    z = np.concatenate([z] * 4)
    alone = member.estimator.bank.sums(z)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(member.estimator.bank.sums, np.array_split(z, 8)))
    assert np.array_equal(np.concatenate(parts), alone)


def test_a_blends_members_share_one_encoding_and_calibrated_folds_do_not(blends, spec, full):
    """Members fitted on the same rows have the same preprocessing: encoded once per call.
    Cross-validated calibration fits each classifier on other rows: each keeps its own."""
    fast = compile_model(blends("three families", "full"))
    assert fast._encoder_of == [0, 0, 0]
    calibrated = compile_model(CalibratedClassifierCV(
        build_pipeline(spec, "logistic_regression", seed=0, params=FAMILIES[
            "logistic_regression"]), method="sigmoid", cv=3, ensemble=True).fit(*full))
    assert calibrated._encoder_of == [0, 1, 2]
    # The model file stores a shared encoder once; the loaded model shares it again.
    for compiled, encoders in ((fast, 1), (calibrated, 3)):
        structure, arrays = modelfile.dump(compiled)
        assert len(json.loads(structure)["encoders"]) == encoders
        assert modelfile.load(structure, arrays)._encoder_of == compiled._encoder_of
    old = modelfile.load(*modelfile.dump(fast))
    X = full[0].head(50)
    assert np.array_equal(predict_frame(old, X), predict_frame(fast, X))


def test_model_files_refuse_pickles_other_formats_and_damage(models, tmp_path):
    """Reading model files never unpickles: an object array is refused, as is another
    format or arrays that would make the C walk read past its nodes."""
    structure, arrays = modelfile.dump(compile_model(models("random_forest", None, "full")))
    doc = json.loads(structure)
    with np.load(io.BytesIO(arrays)) as npz:
        good = {k: npz[k] for k in npz.files}

    def npz_bytes(values):
        buffer = io.BytesIO()
        np.savez(buffer, **values)
        return buffer.getvalue()

    pickled = dict(good, **{"m0.bank.value": np.array([print], dtype=object)})
    with pytest.raises(modelfile.ModelFileError, match="cannot be read"):
        modelfile.load(structure, npz_bytes(pickled))
    with pytest.raises(modelfile.ModelFileError, match="format 2"):
        modelfile.load(json.dumps({**doc, "format": 2}).encode(), arrays)
    damaged = dict(good, **{"m0.bank.left": good["m0.bank.left"] + 10 ** 6})
    with pytest.raises(UnsupportedModelError, match="child index"):
        modelfile.load(structure, npz_bytes(damaged))
    with pytest.raises(modelfile.ModelFileError, match="malformed"):
        modelfile.load(json.dumps({**doc, "members": [{}]}).encode(), arrays)
