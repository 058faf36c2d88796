"""Fine-tuning methods on a tiny BERT: exact trainable counts, what changes, merged = unmerged.

Golden counts for the tiny config (hidden 32, 2 layers, FFN 64, vocab 30522, 2 labels):
classifier 32*2+2 = 66, pooler 32*32+32 = 1,056, one encoder layer 4*(32*32+32) + 32*64+64 +
64*32+32 + 2*2*32 = 8,544, embeddings 30522*32 + 128*32 + 2*32 + 2*32 = 980,928; total 999,138.
LoRA r=8 on query+value: 2 layers * 2 modules * (8*32 + 32*8) = 2,048, plus the head.
"""

from __future__ import annotations

import pytest
import torch

from slimtune.data import DataConfig, load_splits
from slimtune.errors import SlimtuneError
from slimtune.methods import METHODS, StageContext
from slimtune.measure.metrics import evaluate
from slimtune.artifacts import load_model
from slimtune.measure.predictors import TorchPredictor
from slimtune.recipe import build

TOTAL = 999_138
HEAD = 66 + 1_056
LAYER = 8_544


@pytest.fixture(scope="module")
def splits(tiny_csv):
    return load_splits(DataConfig(path=str(tiny_csv)))


def apply(method, model_dir, splits, tmp_path, **fields):
    model, tok = load_model(model_dir, splits.label_names)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = build(METHODS[method].config_cls, fields, method)
    result = METHODS[method].apply(model, tok, cfg, StageContext(splits, tmp_path, log=lambda m: None))
    out, tok, info = result.model, result.tokenizer, result.facts
    return out, tok, info, before


@pytest.mark.parametrize(
    "method, fields, trainable, changed_prefixes",
    [
        ("full", {}, TOTAL, None),
        ("head_only", {}, HEAD, ("classifier.", "bert.pooler.")),
        ("last_n", {"layers": 1}, LAYER + HEAD, ("classifier.", "bert.pooler.", "bert.encoder.layer.1.")),
        ("last_n", {"layers": 2}, 2 * LAYER + HEAD, ("classifier.", "bert.pooler.", "bert.encoder.layer.")),
        ("lora", {"r": 8}, 2_048 + HEAD, ("classifier.", "bert.pooler.", "bert.encoder.layer.0.attention.self.query.weight",
                                         "bert.encoder.layer.0.attention.self.value.weight", "bert.encoder.layer.1.attention.self.query.weight",
                                         "bert.encoder.layer.1.attention.self.value.weight")),
    ],
    ids=["full", "head_only", "last_1", "last_2", "lora"],
)
def test_trainable_counts_and_only_intended_parameters_change(method, fields, trainable, changed_prefixes, tiny_base_dir, splits, tmp_path):
    model, _, info, before = apply(method, tiny_base_dir, splits, tmp_path, max_steps=3, learning_rate=1e-2, warmup=0, **fields)
    assert info["trainable_params"] == trainable
    assert info["total_params"] == (TOTAL if method != "lora" else TOTAL + 2_048 + HEAD)  # PEFT keeps a copy of the head
    assert info["train_steps"] == 3
    after = dict(model.named_parameters())
    assert set(after) == set(before), "merged model must have the original parameter names"
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    if changed_prefixes is None:
        assert len(changed) > 0.9 * len(before)
    else:
        assert changed and all(n.startswith(changed_prefixes) for n in changed), sorted(changed - {n for n in changed if n.startswith(changed_prefixes)})
        # every head tensor moved
        assert {"classifier.weight", "bert.pooler.dense.weight"} <= changed


def test_full_finetune_learns_separable_data(tiny_base_dir, splits, tmp_path):
    model, tok, info, _ = apply("full", tiny_base_dir, splits, tmp_path, epochs=8, batch_size=16, learning_rate=2e-3, max_length=32)
    metrics, _ = evaluate(TorchPredictor(model, tok, 32), splits.test)
    assert metrics["accuracy"] >= 0.9, metrics


def test_sgd_optimizer_trains(tiny_base_dir, splits, tmp_path):
    model, _, info, before = apply("head_only", tiny_base_dir, splits, tmp_path, max_steps=2, optimizer="sgd", learning_rate=0.1, warmup=0)
    assert not torch.equal(before["classifier.weight"], model.classifier.weight)


def test_lora_merge_matches_unmerged(tiny_base_dir, tokenizer):
    import peft

    model, tok = load_model(tiny_base_dir, ["neg", "pos"])
    pm = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=4, target_modules=["query", "value"], init_lora_weights=False))
    enc = tokenizer(["a fine film", "not good at all, really"], padding=True, return_tensors="pt")
    with torch.no_grad():
        unmerged = pm(**enc).logits
        merged_model = pm.merge_and_unload()
        merged = merged_model(**enc).logits
    assert not any("lora" in n for n, _ in merged_model.named_parameters())
    assert torch.allclose(unmerged, merged, atol=1e-5)


def test_early_stopping_records_validation(tiny_base_dir, splits, tmp_path):
    _, _, info, _ = apply("head_only", tiny_base_dir, splits, tmp_path, epochs=2, early_stopping_patience=1)
    assert 1 <= len(info["val_accuracy"]) <= 2


def test_bad_method_fields():
    with pytest.raises(SlimtuneError, match="last_n: layers must be >= 1"):
        build(METHODS["last_n"].config_cls, {"layers": 0}, "last_n")
    with pytest.raises(SlimtuneError, match="optimizer: 'adam' is not one of adamw, sgd"):
        build(METHODS["full"].config_cls, {"optimizer": "adam"}, "full")


def test_last_n_more_layers_than_model(tiny_base_dir, splits, tmp_path):
    with pytest.raises(SlimtuneError, match="layers=5 but the model has 2 layers"):
        apply("last_n", tiny_base_dir, splits, tmp_path, layers=5, max_steps=1)


def test_lora_unknown_target(tiny_base_dir, splits, tmp_path):
    with pytest.raises(SlimtuneError, match="target module 'q_proj' not in the model"):
        apply("lora", tiny_base_dir, splits, tmp_path, target_modules=["q_proj"], max_steps=1)
