"""TFLite exports of tiny classifiers (plain BERT and a pruned SlimBERT): parity with torch through
LiteRT's interpreter, int8 size and closeness, the static length, and the one-line error when the
optional tools are absent. The export tests skip (with the install line) when slimtune[tflite]
is not installed; the error test runs exactly then."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from slimtune.artifacts import load_model, load_predictor
from slimtune.errors import SlimtuneError
from slimtune.export import write as export
from slimtune.measure.metrics import parity
from slimtune.measure.predictors import TorchPredictor, batched_logits
from tests.conftest import synthetic_rows

HAVE_TFLITE = all(importlib.util.find_spec(m) is not None for m in ("litert_torch", "ai_edge_litert", "ai_edge_quantizer"))
needs_tflite = pytest.mark.skipif(not HAVE_TFLITE, reason="optional TFLite tools absent: pip install 'slimtune[tflite]'")

TEXTS = [t for t, _ in synthetic_rows(24, seed=5)] + ["a", "an extraordinarily long review " * 20]
LENGTH = 32


@pytest.fixture(scope="module")
def source(tiny_clf_dir):
    model, tok = load_model(tiny_clf_dir)
    return model, tok, batched_logits(TorchPredictor(model, tok, LENGTH), TEXTS, batch_size=8)


@needs_tflite
def test_tflite_parity_with_torch_at_the_static_length(source, tmp_path):
    model, tok, logits = source
    export(model, tok, "tflite", tmp_path / "t", max_length=LENGTH)
    meta = json.loads((tmp_path / "t" / "config.json").read_text())["slimtune_tflite"]
    assert meta == {"sequence_length": LENGTH, "inputs": ["input_ids", "attention_mask", "token_type_ids"], "int8": False}
    pred = load_predictor(tmp_path / "t", 256)  # the graph's own length wins over the one asked for
    assert pred.kind == "tflite" and pred.max_length == LENGTH and pred.label_names == ["neg", "pos"]
    p = parity(logits, batched_logits(pred, TEXTS, batch_size=8))  # padding to the full length changes nothing
    assert p["max_abs_logit_diff"] < 1e-4 and p["argmax_agreement"] == 1.0, p
    # the .tflite file itself is an artifact too (config and tokenizer read beside it)
    assert np.allclose(load_predictor(tmp_path / "t" / "model.tflite").logits(TEXTS[:3]), logits[:3], atol=1e-4)
    n_torch = sum(p.numel() for p in model.parameters())
    assert abs(pred.num_params() - n_torch) / n_torch < 0.01  # constant tensors of the graph = the weights


@needs_tflite
def test_tflite_int8_is_smaller_and_close(source, tmp_path):
    from slimtune.measure.bench import artifact_size

    model, tok, logits = source
    export(model, tok, "tflite", tmp_path / "fp32", max_length=LENGTH)
    export(model, tok, "tflite-int8", tmp_path / "int8", max_length=LENGTH)
    fp32, int8 = (tmp_path / "fp32" / "model.tflite").stat().st_size, (tmp_path / "int8" / "model.tflite").stat().st_size
    # int8 weights, per-channel scales: 2.8x here, where the 30522 x 32 word table has a scale per
    # row; 3.8x on MiniLM-L6 (hidden 384)
    assert fp32 / int8 > 2.5, (fp32, int8)
    assert artifact_size(tmp_path / "int8") < artifact_size(tmp_path / "fp32")
    p = parity(logits, batched_logits(load_predictor(tmp_path / "int8"), TEXTS))
    assert p["max_abs_logit_diff"] < 0.05, p
    assert not list((tmp_path / "int8").glob("model-fp32.tflite"))


@needs_tflite
def test_pruned_slimbert_exports_to_tflite(tiny_clf_dir, tmp_path):
    """A structurally pruned model (SlimBERT: its own head count per layer) converts and matches."""
    from slimtune.methods.prune import scores as P

    model, tok = load_model(tiny_clf_dir)  # 2 layers x 2 heads, FFN 64
    hs, fs = P.group_scores(model)
    slim = P.remove_structure(model, P.choose(hs, 1, "global"), P.choose(fs, 50, "global")).eval()
    assert slim.config.model_type == "slimtune_bert"
    want = batched_logits(TorchPredictor(slim, tok, LENGTH), TEXTS, batch_size=8)
    export(slim, tok, "tflite", tmp_path / "t", max_length=LENGTH)
    p = parity(want, batched_logits(load_predictor(tmp_path / "t"), TEXTS))
    assert p["max_abs_logit_diff"] < 1e-4 and p["argmax_agreement"] == 1.0, p


@needs_tflite
def test_tflite_export_in_a_recipe_reports_parity(tiny_base_dir, tiny_csv, tmp_path):
    from slimtune import recipe, runner

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir),
           "eval": {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "max_length": LENGTH, "floor": False},
           "stages": [{"name": "ft", "method": "head_only", "max_steps": 2, "max_length": LENGTH}],
           "export": ["tflite-int8"]}
    report = runner.run(recipe.parse(raw), tmp_path / "o", log=lambda m: None)
    row = report["stages"][-1]
    assert row["name"] == "tflite-int8" and row["metrics"]["runtime"] == "tflite"
    assert row["metrics"]["parity"]["argmax_agreement"] >= 0.9
    assert row["metrics"]["tflite_sequence_length"] == LENGTH


@pytest.mark.skipif(HAVE_TFLITE, reason="the TFLite tools are installed: the missing-extra error cannot happen")
def test_missing_extra_is_one_line_naming_it(source, tmp_path):
    model, tok, _ = source
    with pytest.raises(SlimtuneError, match=r"slimtune\[tflite\]") as e:
        export(model, tok, "tflite", tmp_path / "t", max_length=LENGTH)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "t").exists()  # nothing half-written
