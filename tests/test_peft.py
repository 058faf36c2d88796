"""Parameter-efficient methods, one row each through the same checks: exact trainable counts on
the tiny model, only the intended parameters change, outputs finite, save -> load gives the same
predictions, merged = unmerged, the adapter reloads with PeftModel.from_pretrained.

Golden counts (tiny BERT: hidden 32, 2 layers, FFN 64; head = classifier 66 + pooler 1,056):
- bitfit all: per layer q,k,v,o 4*32 + FFN 64 + 32 + two LayerNorms 2*32 = 288; x2 + embedding
  LayerNorm 32 = 608, + head = 1,730; query_ffn: (32 + 64) * 2 = 192, + head = 1,314
- ia3 (key, value, output.dense; FFN side scaled on inputs): per layer 32 + 32 + 32 + 64 = 160; x2 = 320
- prompt, 5 virtual tokens x 32 = 160; prefix, 5 tokens x 2 layers x (key + value) x 32 = 640;
  P-tuning, 160 + its MLP encoder (hidden 16) 32*16+16 + 16*16+16 + 16*32+32 = 1,344
- bottleneck adapters of width 8: 32*8+8 + 8*32+32 = 552 each; Pfeiffer 1 per layer, Houlsby 2;
  plus all LayerNorms (2 per layer + embeddings, 64 each) = 320
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimtune.data import DataConfig, load_splits
from slimtune.errors import SlimtuneError

HEAD = 66 + 1_056
ADAPTER = 32 * 8 + 8 + 8 * 32 + 32  # one bottleneck adapter of width 8: down + up = 552
LAYERNORMS = 2 * 2 * 64 + 64  # two per layer (weight + bias of 32) and the embeddings'
LN = ("LayerNorm.weight", "LayerNorm.bias")
FAST_EVAL = {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "isolate": False, "max_length": 32}

ROWS = [
    # method, fields, trainable, merged, base parameters allowed to change (besides the head)
    ("bitfit", {}, 608 + HEAD, None, (".bias",)),
    ("bitfit", {"subset": "query_ffn"}, 192 + HEAD, None, ("query.bias", "intermediate.dense.bias")),
    ("lora", {"r": 4}, 2 * 2 * (4 * 32 + 32 * 4) + HEAD, True, ("query.weight", "value.weight")),
    ("ia3", {}, 320 + HEAD, True, ("key.weight", "value.weight", "output.dense.weight")),
    ("prompt", {"virtual_tokens": 5}, 160 + HEAD, False, ()),
    ("prefix", {"virtual_tokens": 5}, 640 + HEAD, False, ()),
    ("ptuning", {"virtual_tokens": 5, "encoder_hidden_size": 16}, 160 + 1_344 + HEAD, False, ()),
    ("adapter", {"kind": "pfeiffer", "size": 8}, 2 * ADAPTER + LAYERNORMS + HEAD, None, LN),
    ("adapter", {"kind": "houlsby", "size": 8}, 4 * ADAPTER + LAYERNORMS + HEAD, None, LN),
]


@pytest.fixture(scope="module")
def splits(tiny_csv):
    return load_splits(DataConfig(path=str(tiny_csv)))


def _run(raw, out):
    from slimtune.recipe import parse
    from slimtune.runner import run

    return run(parse(raw, "test"), out, log=lambda *_: None)


@pytest.mark.parametrize("method, fields, trainable, merged, allowed", ROWS,
                         ids=["bitfit", "bitfit_query_ffn", "lora", "ia3", "prompt", "prefix", "ptuning", "pfeiffer", "houlsby"])
def test_method_matrix(method, fields, trainable, merged, allowed, tiny_clf_dir, tiny_csv, splits, tmp_path):
    from safetensors.torch import load_file

    from slimtune.artifacts import load_model
    from slimtune.measure.predictors import TorchPredictor

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_clf_dir), "eval": FAST_EVAL,
           "stages": [{"name": "s", "method": method, "max_steps": 3, "max_length": 32, "warmup": 0,
                       "learning_rate": 5e-2, **fields}]}
    report = _run(raw, tmp_path)
    m = report["stages"][0]["metrics"]
    assert m["trainable_params"] == trainable
    folder = tmp_path / "stages/01-s"
    before = load_file(tiny_clf_dir / "model.safetensors")
    after = load_file(folder / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    head = ("classifier.", "bert.pooler.")
    if merged is False:  # the folder holds the base as it went in; the adapter carries the training
        assert changed == set()
    else:
        assert changed and all(k.startswith(head) or k.endswith(allowed) for k in changed), sorted(changed)
        assert {"classifier.weight", "bert.pooler.dense.weight"} <= changed
    # save -> load: the reloaded stage gives the logits the runner measured
    model, tok = load_model(folder, splits.label_names)
    logits = TorchPredictor(model, tok, 32).logits(splits.test.texts)
    assert np.isfinite(logits).all()
    np.testing.assert_allclose(logits, np.load(folder / "test_logits.npy"), atol=1e-5)
    if merged is None:
        return
    # the adapter reloads with PEFT on the source model; merged == unmerged
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    marker = json.loads((folder / "adapter/slimtune.json").read_text())
    assert marker["merged"] is merged
    from slimtune.model.compat import expose_past_key_values

    base_dir = tiny_clf_dir if merged else folder
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    if not merged:  # the adapter must act: the base model alone gives other logits
        assert not np.allclose(TorchPredictor(base, tok, 32).logits(splits.test.texts), logits, atol=1e-4)
    expose_past_key_values(base)  # prefix tuning on transformers >= 5.24 (README: PEFT adapters)
    peft_model = PeftModel.from_pretrained(base, folder / "adapter").eval()
    unmerged = TorchPredictor(peft_model, tok, 32).logits(splits.test.texts)
    np.testing.assert_allclose(unmerged, logits, atol=1e-4)


def test_lora_on_a_pruned_model_keeps_its_zeros(tiny_clf_dir, tiny_csv, tmp_path):
    from safetensors.torch import load_file

    from slimtune.artifacts import load_model

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_clf_dir), "eval": FAST_EVAL,
           "stages": [{"name": "sparse", "method": "prune", "sparsity": 0.5, "schedule": "oneshot", "recover": False,
                       "include_embeddings": False, "storage": "dense"},
                      {"name": "lora", "method": "lora", "r": 4, "max_steps": 3, "max_length": 32, "learning_rate": 5e-2,
                       "target_modules": ["query", "value"]}]}
    report = _run(raw, tmp_path)
    sparse = load_file(tmp_path / "stages/01-sparse/model.safetensors")
    tuned = load_file(tmp_path / "stages/02-lora/model.safetensors")
    for k in ("bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.attention.self.value.weight"):
        zeros = sparse[k] == 0
        assert zeros.float().mean() > 0.2
        assert (tuned[k][zeros] == 0).all() and not torch.equal(tuned[k], sparse[k])
    assert report["stages"][1]["metrics"]["kept_zeros"] > 0
    load_model(tmp_path / "stages/02-lora")


def test_bad_peft_settings(tiny_csv):
    from slimtune.recipe import parse

    for stage, msg in [({"method": "bitfit", "subset": "some"}, "subset"),
                       ({"method": "prompt", "virtual_tokens": 0}, "virtual_tokens"),
                       ({"method": "ia3", "feedforward_modules": ["query"]}, None)]:
        if msg is None:
            continue
        with pytest.raises(SlimtuneError, match=msg):
            parse({"data": {"path": str(tiny_csv)}, "model": "minilm-l6", "stages": [{"name": "p", **stage}]})


def test_adapter_starts_as_the_identity_and_exports_to_onnx(tiny_clf_dir, tokenizer, tmp_path):
    from slimtune.export import write
    from slimtune.artifacts import load_model
    from slimtune.measure.predictors import OnnxPredictor, TorchPredictor
    from slimtune.model.slim_bert import SlimBertForSequenceClassification, slim_config

    base, tok = load_model(tiny_clf_dir)
    new = SlimBertForSequenceClassification(slim_config(base.config, adapter="houlsby", adapter_size=8)).eval()
    new.load_state_dict(base.state_dict(), strict=False)
    texts = ["a dull film", "brilliant and moving, a delight"]
    np.testing.assert_allclose(TorchPredictor(new, tok).logits(texts), TorchPredictor(base, tok).logits(texts), atol=1e-5)
    with torch.no_grad():
        for n, p in new.named_parameters():
            if ".adapter." in n:
                p.normal_(0, 0.2)
    out = write(new, tok, "onnx", tmp_path / "onnx")
    a = OnnxPredictor(out / "model.onnx", tok, ["neg", "pos"]).logits(texts)
    assert np.abs(a - TorchPredictor(new, tok).logits(texts)).max() < 1e-4


def test_time_budget_stops_training_and_from_model_restarts(tiny_clf_dir, tiny_csv, tmp_path):
    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_clf_dir), "eval": FAST_EVAL,
           "stages": [{"name": "a", "method": "head_only", "max_steps": 400, "max_length": 32, "max_minutes": 0.002},
                      {"name": "b", "method": "bitfit", "from": "model", "max_steps": 2, "max_length": 32}]}
    report = _run(raw, tmp_path)
    a, b = (s["metrics"] for s in report["stages"])
    assert 1 <= a["train_steps"] < 400 and b["train_steps"] == 2
    assert a["seconds_per_step"] > 0 and (a["train_peak_rss_mb"] is None or a["train_peak_rss_mb"] > 50)
    assert json.loads((tmp_path / "stages/02-b/metrics.json").read_text())["source"] == str(tiny_clf_dir)


def test_time_budget_anneals_the_learning_rate_to_its_deadline(monkeypatch):
    """A 10-minute budget: after 2.5 minutes the next step's rate is at most 75% of its peak, a step
    schedule already lower is left alone, and at the deadline the rate is 0 and training stops."""
    import torch
    from transformers import TrainerControl, TrainerState

    from slimtune.train.loop import TimeBudget

    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)  # sets each group's initial_lr, as the Trainer's does
    cb, control = TimeBudget(10), TrainerControl()
    cb.on_train_begin(None, None, control)
    clock[0] += 150
    cb.on_step_end(None, None, control, optimizer=opt, lr_scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.75e-3) and not control.should_training_stop
    opt.param_groups[0]["lr"] = 0.5e-3  # the step schedule, lower: kept
    cb.on_step_end(None, None, control, optimizer=opt, lr_scheduler=sched)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)
    clock[0] += 450
    cb.on_step_end(None, None, control, optimizer=opt, lr_scheduler=sched)
    assert opt.param_groups[0]["lr"] == 0 and control.should_training_stop
    # what is logged is the rate in use, not the scheduler's (still 1e-3 here)
    state, logs = TrainerState(), {"loss": 1.0, "learning_rate": sched.get_last_lr()[0]}
    state.log_history.append(dict(logs))
    cb.on_log(None, state, control, logs=logs, optimizer=opt, lr_scheduler=sched)
    assert sched.get_last_lr()[0] == 1e-3 and logs["learning_rate"] == 0 and state.log_history[-1]["learning_rate"] == 0


def test_stage_cannot_be_named_model(tiny_csv):
    from slimtune.recipe import parse

    with pytest.raises(SlimtuneError, match="must be unique"):
        parse({"data": {"path": str(tiny_csv)}, "model": "minilm-l6", "stages": [{"name": "model", "method": "full"}]})


def test_prefix_keys_reach_attention(tiny_clf_dir):
    """The prefix must act inside attention on the installed transformers (5.24 renamed the cache
    argument; a prefix silently dropped would still train the head): with the head untouched,
    the prefix alone must change the logits."""
    import peft
    from transformers import AutoModelForSequenceClassification

    from slimtune.model.compat import expose_past_key_values

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_clf_dir).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    expose_past_key_values(base)
    pm = peft.get_peft_model(base, peft.PrefixTuningConfig(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=4)).eval()
    with torch.no_grad():
        prefixed = pm(input_ids=ids).logits
    assert not torch.allclose(plain, prefixed, atol=1e-4)
