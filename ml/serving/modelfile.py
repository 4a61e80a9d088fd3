"""The compiled model as files: JSON for its structure, ``.npz`` for its arrays. Data, not code.

A server and the batch scorer read the model with ``json.loads`` and
``np.load(..., allow_pickle=False)``: reading it cannot run code, unlike a pickle
(issue 18). :data:`FORMAT` is recorded in the JSON; a file of another format is refused
(retrain, or re-sign with ``python -m ml resign`` from the sklearn pickle).
"""
from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

from ml.serving.compiled import (CALIBRATORS, ESTIMATORS, Encoder, FastModel, Member)
from ml.serving.errors import ArtifactError
from ml.serving.trees import NODE_ARRAYS, TreeBank

FORMAT = 3
"""Layout of the model files: bump it whenever a change here would misread older files
(2 was the pickled ``FastModel`` of ``fast_model.pkl``)."""

INTEGER_ARRAYS = frozenset({"feature", "left", "right", "starts", "num_out", "table"})


class ModelFileError(ArtifactError):
    """The compiled model's files are malformed or of another format."""


def dump(fast: FastModel) -> tuple[bytes, bytes]:
    """The model as ``(structure JSON bytes, npz bytes)``."""
    arrays: dict[str, np.ndarray] = {}
    encoders: list[Encoder] = []
    members = []
    for m in fast.members:
        same = [i for i, e in enumerate(encoders) if e.same_as(m.encoder)]
        if not same:
            encoders.append(m.encoder)
        estimator = _node(m.estimator, f"m{len(members)}.est", arrays)
        if hasattr(m.estimator, "bank"):
            bank = m.estimator.bank
            estimator["bank"] = {"level_width": bank.level_width, "float32": bank.float32,
                                 "arrays": _put(bank.state(), f"m{len(members)}.bank", arrays)}
        members.append({"encoder": same[0] if same else len(encoders) - 1,
                        "estimator": estimator,
                        "calibrator": None if m.calibrator is None
                        else _node(m.calibrator, f"m{len(members)}.cal", arrays)})
    structure = {"format": FORMAT, "kind": fast.kind, "features": list(fast.features),
                 "encoders": [_node(e, f"e{i}", arrays, typed=False)
                              for i, e in enumerate(encoders)],
                 "members": members}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return json.dumps(structure, indent=1).encode(), buffer.getvalue()


def load(structure_bytes: bytes, arrays_bytes: bytes) -> FastModel:
    """Read a model written by :func:`dump`; raises :class:`ModelFileError` if malformed."""
    try:
        structure = json.loads(structure_bytes)
        with np.load(io.BytesIO(arrays_bytes), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError) as exc:  # includes a pickled (object) array: refused
        raise ModelFileError(f"the compiled model files cannot be read: {exc}") from exc
    if not isinstance(structure, dict) or structure.get("format") != FORMAT:
        got = structure.get("format") if isinstance(structure, dict) else None
        raise ModelFileError(f"the compiled model has format {got!r}, this code reads "
                             f"{FORMAT}: retrain, or re-sign it with `python -m ml resign`")
    try:
        encoders = [Encoder(**_kwargs(e, arrays)) for e in structure["encoders"]]
        members = [_member(m, encoders, arrays) for m in structure["members"]]
        fast = FastModel(members, str(structure["kind"]))
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ModelFileError(f"the compiled model is malformed: {exc!r}") from exc
    if list(fast.features) != structure.get("features"):
        raise ModelFileError("the compiled model's features differ from its encoders'")
    return fast


def _member(node: dict[str, Any], encoders: list[Encoder],
            arrays: dict[str, np.ndarray]) -> Member:
    encoder = encoders[node["encoder"]]
    spec = node["estimator"]
    kwargs = _kwargs(spec, arrays)
    if "bank" in spec:
        bank = spec["bank"]
        nodes = _kwargs(bank, arrays)
        nodes["threshold"] = nodes["threshold"].astype(
            np.float32 if bank["float32"] else np.float64)
        nodes["value"] = nodes["value"].astype(np.float64)
        if set(nodes) != set(NODE_ARRAYS):
            raise ValueError(f"tree arrays {sorted(nodes)}")
        kwargs["bank"] = TreeBank(nodes, bank["level_width"], bank["float32"], encoder.n_out)
    estimator = ESTIMATORS[spec["type"]](**kwargs)
    calibrator = node.get("calibrator")
    if calibrator is not None:
        calibrator = CALIBRATORS[calibrator["type"]](**_kwargs(calibrator, arrays))
    if getattr(estimator, "coef", None) is not None and len(estimator.coef) != encoder.n_out + 1:
        raise ValueError("coefficients and encoder differ in width")
    return Member(encoder, estimator, calibrator)


def _node(obj: Any, prefix: str, arrays: dict[str, np.ndarray],
          typed: bool = True) -> dict[str, Any]:
    """``{"type", "values", "arrays"}`` of one object's state; its arrays go to ``arrays``."""
    state = obj.state()
    node: dict[str, Any] = {}
    if typed:
        registry = {**ESTIMATORS, **CALIBRATORS}
        node["type"] = next(name for name, cls in registry.items() if type(obj) is cls)
    node["values"] = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    node["arrays"] = _put({k: v for k, v in state.items() if isinstance(v, np.ndarray)},
                          prefix, arrays)
    return node


def _put(state: dict[str, np.ndarray], prefix: str,
         arrays: dict[str, np.ndarray]) -> dict[str, str]:
    names = {}
    for key, value in state.items():
        names[key] = f"{prefix}.{key}"
        arrays[names[key]] = np.asarray(value)
    return names


def _kwargs(node: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The constructor arguments of a node: its JSON values and its arrays, type-checked."""
    out = dict(node.get("values", {}))
    for key, name in node.get("arrays", {}).items():
        array = arrays[name]
        if array.dtype.kind not in "biuf":
            raise ValueError(f"array {name} has dtype {array.dtype}")
        out[key] = array.astype(np.intp) if key in INTEGER_ARRAYS else array
    return out
