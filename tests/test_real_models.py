"""Short checks on the real packaged models (MiniLM-L6, MiniLM-L3) and Rotten Tomatoes.

Kept short: a few training steps at short sequences. The full main job (accuracy floor on the
real test split) is marked slow: `make test-slow`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slimtune.data import DataConfig, load_splits
from slimtune.export import write as export
from slimtune.methods import METHODS, StageContext
from slimtune.measure.metrics import parity
from slimtune.artifacts import load_model
from slimtune.artifacts import load_predictor
from slimtune.measure.predictors import TorchPredictor, batched_logits
from slimtune.recipe import build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rt():
    return load_splits(DataConfig(name="rotten_tomatoes", max_train_samples=48))


def test_minilm_l6_trains_a_few_steps_and_exports_with_parity(rt, tmp_path):
    model, tok = load_model("minilm-l6", rt.label_names)
    assert sum(p.numel() for p in model.parameters()) == 22_713_986  # 22,713,216 + 384*2+2 head
    cfg = build(METHODS["last_n"].config_cls, {"layers": 1, "max_steps": 3, "batch_size": 8, "max_length": 32, "warmup": 0}, "last_n")
    result = METHODS["last_n"].apply(model, tok, cfg, StageContext(rt, tmp_path / "w", log=lambda m: None))
    model, tok, info = result.model, result.tokenizer, result.facts
    assert info["trainable_params"] == 1_774_464 + 147_840 + 770  # one layer, pooler, classifier
    texts = rt.test.texts[:64]
    source = batched_logits(TorchPredictor(model, tok, 64), texts)
    export(model, tok, "onnx", tmp_path / "onnx")
    p = parity(source, batched_logits(load_predictor(tmp_path / "onnx", 64), texts))
    assert p["max_abs_logit_diff"] < 1e-4 and p["argmax_agreement"] == 1.0, p


def test_minilm_l3_packaged_name_converts_once_and_loads(rt, tmp_path, monkeypatch):
    monkeypatch.setenv("SLIMTUNE_CACHE", str(tmp_path))
    model, tok = load_model("minilm-l3", rt.label_names)
    assert model.config.num_hidden_layers == 3 and model.config.id2label == {0: "fresh", 1: "rotten"}
    # 17,241,984 converted + a new pooler (147,840) and classifier (770)
    assert sum(p.numel() for p in model.parameters()) == 17_241_984 + 147_840 + 770
    assert (tmp_path / "minilm-l3" / "model.safetensors").is_file()
    assert tok("a test")["input_ids"] == [101, 1037, 3231, 102]


@pytest.mark.slow
def test_main_job_reaches_accuracy_floor(tmp_path):
    """The shipped main job on the real data: >= 0.80 test accuracy; the compact artifact within 1 point of fp32."""
    from slimtune.recipe import parse
    from slimtune.runner import run

    raw = yaml.safe_load((REPO / "recipes/default.yaml").read_text())
    report = run(parse(raw), tmp_path, log=lambda m: None)
    acc = {s["name"]: s["metrics"]["accuracy"] for s in report["stages"]}
    assert acc["finetune"] >= 0.80, acc
    assert acc["finetune"] - acc["compact"] <= 0.01, acc
