"""Exports of a tiny classifier: HF round trip exact, ONNX parity bound, int8 close, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.artifacts.atomic import atomic_dir
from slimtune.export import write as export
from slimtune.measure.metrics import parity
from slimtune.artifacts import load_model
from slimtune.artifacts import load_predictor
from slimtune.measure.predictors import TorchPredictor, batched_logits
from tests.conftest import synthetic_rows

TEXTS = [t for t, _ in synthetic_rows(40, seed=3)] + ["a", "an extraordinarily long review " * 20]


@pytest.fixture(scope="module")
def source(tiny_clf_dir):
    model, tok = load_model(tiny_clf_dir)
    return model, tok, batched_logits(TorchPredictor(model, tok, 64), TEXTS, batch_size=7)


def test_hf_export_round_trip_is_exact(source, tmp_path):
    from transformers import AutoModelForSequenceClassification

    model, tok, logits = source
    export(model, tok, "hf", tmp_path / "hf")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert again.config.id2label == {0: "neg", 1: "pos"}
    out = batched_logits(TorchPredictor(again, tok, 64), TEXTS, batch_size=7)  # same batches, same padding
    assert np.array_equal(out, logits)


def test_onnx_parity_dynamic_batch_and_length(source, tmp_path):
    model, tok, logits = source
    export(model, tok, "onnx", tmp_path / "onnx")
    pred = load_predictor(tmp_path / "onnx", 64)
    assert pred.kind == "onnx" and pred.label_names == ["neg", "pos"]
    # batch sizes 1, 7, 32 and lengths from 3 to 64 tokens all run through the same graph
    for bs in (1, 7, 32):
        p = parity(logits, batched_logits(pred, TEXTS, batch_size=bs))
        assert p["max_abs_logit_diff"] < 1e-4 and p["argmax_agreement"] == 1.0, (bs, p)


def test_onnx_int8_close_and_smaller(source, tmp_path):
    from slimtune.measure.bench import artifact_size

    model, tok, logits = source
    export(model, tok, "onnx", tmp_path / "fp32")
    export(model, tok, "onnx-int8", tmp_path / "int8")
    p = parity(logits, batched_logits(load_predictor(tmp_path / "int8", 64), TEXTS))
    assert p["max_abs_logit_diff"] < 0.05, p
    assert artifact_size(tmp_path / "int8") < artifact_size(tmp_path / "fp32")
    # the same weights, quantized: scales and zero points are not counted as parameters
    assert load_predictor(tmp_path / "int8", 64).num_params() == load_predictor(tmp_path / "fp32", 64).num_params()
    assert not list((tmp_path / "int8").glob("model-fp32.onnx"))


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_existing(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old").write_text("old")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new"]
