"""Pruning: exact sparsity, least-important-first, physical removal = masking, round trips, ONNX."""

from __future__ import annotations

import pytest
import torch
import yaml

from slimtune.methods.prune import scores as P
from slimtune.errors import SlimtuneError


def tiny_classifier(layers=2, heads=4, hidden=32, inter=64, seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=200, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=64, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def batch(n=3, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (n, t), generator=g)
    mask = torch.ones(n, t, dtype=torch.long)
    mask[0, 6:] = 0  # padding in one row
    return {"input_ids": ids, "attention_mask": mask}


def logits(model, b):
    with torch.no_grad():
        return model(**b).logits


# ---- unstructured ----------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9])
def test_masks_remove_exactly_the_asked_fraction(scope, sparsity):
    m = tiny_classifier()
    w = P.prunable_weights(m, include_embeddings=True)
    masks = P.masks_for({n: p.detach().abs() for n, p in w.items()}, sparsity, scope)
    P.apply_masks(w, masks)
    rep = P.sparsity_report(w)
    # golden size: 2 layers x (4 x 32x32 attention + 2 x 32x64 FFN) + 200x32 embeddings
    assert rep["prunable_weights"] == 2 * (4 * 32 * 32 + 2 * 32 * 64) + 200 * 32 == 22_784
    if scope == "global":
        assert rep["pruned_weights"] == round(sparsity * 22_784)
    else:
        assert all(int((p == 0).sum()) == round(sparsity * p.numel()) for p in w.values())


def test_magnitude_masks_drop_the_smallest_weights():
    m = tiny_classifier()
    w = P.prunable_weights(m)
    scores = {n: p.detach().abs() for n, p in w.items()}
    masks = P.masks_for(scores, 0.6, "global")
    kept = torch.cat([scores[n][masks[n]] for n in w])
    dropped = torch.cat([scores[n][~masks[n]] for n in w])
    assert dropped.max() <= kept.min()


def test_cubic_schedule_golden():
    s = P.cubic_schedule(0.8, 4, 100, fraction=0.8)
    assert list(s) == [20, 40, 60, 80]
    assert [round(v, 6) for v in s.values()] == [0.4625, 0.7, 0.7875, 0.8]


def test_sparse_storage_round_trip_is_exact_and_small(tmp_path, tokenizer):
    from slimtune.artifacts import compact as storage
    from slimtune.measure.bench import artifact_size

    m = tiny_classifier()
    w = P.prunable_weights(m, include_embeddings=True)
    P.apply_masks(w, P.masks_for({n: p.detach().abs() for n, p in w.items()}, 0.8))
    m.save_pretrained(tmp_path / "dense")
    storage.save(tmp_path / "sparse", m, tokenizer, "sparse") if (tmp_path / "sparse").mkdir() is None else None
    state, header = storage.read_state_dict(tmp_path / "sparse" / storage.WEIGHTS_FILE)
    for k, v in m.state_dict().items():
        assert torch.equal(state[k], v), k
    assert header["tensors"]["bert.encoder.layer.0.attention.self.query.weight"]["codec"] == "sparse"
    # the prunable matrices are 22,784 of the model's weights; 80% zeros cost 1 bit each instead of 32
    assert artifact_size(tmp_path / "sparse") < 0.45 * artifact_size(tmp_path / "dense")
    from slimtune.artifacts import load_model

    loaded, _ = load_model(tmp_path / "sparse")
    b = batch()
    assert torch.equal(logits(loaded, b), logits(m, b))


def test_corrupt_compact_weights_is_one_line_error(tmp_path, tokenizer):
    from slimtune.artifacts import compact as storage
    from slimtune.artifacts import load_model

    m = tiny_classifier()
    (tmp_path / "s").mkdir()
    storage.save(tmp_path / "s", m, tokenizer, "sparse")
    f = tmp_path / "s" / storage.WEIGHTS_FILE
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(SlimtuneError, match="cannot read compact weights"):
        load_model(tmp_path / "s")


# ---- structured ------------------------------------------------------------------------------


def test_choose_removes_the_lowest_scores_globally_and_keeps_one_per_layer():
    scores = [torch.tensor([5.0, 1.0, 7.0, 2.0]), torch.tensor([0.1, 0.2, 0.3, 0.4])]
    keep = P.choose(scores, 5, "global")
    # lowest five: 0.1, 0.2, 0.3, (0.4 would empty layer 1, so skipped), 1.0, 2.0
    assert keep == [[0, 2], [3]]
    assert P.choose(scores, 4, "layer") == [[0, 2], [2, 3]]


@pytest.mark.parametrize("score", ["magnitude", "taylor"])
def test_physically_pruned_model_equals_the_masked_model(score):
    m = tiny_classifier()
    b = batch()
    if score == "magnitude":
        hs, fs = P.group_scores(m)
    else:
        hs, fs = P.taylor_scores(m, [b | {"labels": torch.tensor([0, 1, 1])}])
    keep_h, keep_f = P.choose(hs, 3, "global"), P.choose(fs, 64, "global")
    pruned = P.remove_structure(tiny_classifier(), keep_h, keep_f)
    masked = tiny_classifier()
    P.mask_structure(masked, keep_h, keep_f)
    assert P.counts(pruned)["heads"] == [len(k) for k in keep_h] and sum(P.counts(pruned)["heads"]) == 5
    assert sum(P.counts(pruned)["ffn"]) == 64
    torch.testing.assert_close(logits(pruned, b), logits(masked, b), atol=1e-5, rtol=1e-5)
    # and removal changed the function (the test can fail)
    assert not torch.allclose(logits(pruned, b), logits(tiny_classifier(), b), atol=1e-4)


def test_removed_heads_are_the_least_important_by_magnitude():
    m = tiny_classifier()
    with torch.no_grad():  # make head 2 of layer 1 clearly the weakest
        d = 8
        for lin in (m.bert.encoder.layer[1].attention.self.query, m.bert.encoder.layer[1].attention.self.key,
                    m.bert.encoder.layer[1].attention.self.value):
            lin.weight[2 * d : 3 * d] *= 0.01
            lin.bias[2 * d : 3 * d] *= 0.01
        m.bert.encoder.layer[1].attention.output.dense.weight[:, 2 * d : 3 * d] *= 0.01
    hs, _ = P.group_scores(m)
    assert P.choose(hs, 1, "global") == [[0, 1, 2, 3], [0, 1, 3]]


def test_pruned_model_saves_and_loads_with_auto_classes(tmp_path):
    import slimtune.model.slim_bert  # noqa: F401
    from transformers import AutoModelForSequenceClassification

    m = tiny_classifier(layers=3)
    hs, fs = P.group_scores(m)
    pruned = P.remove_structure(m, P.choose(hs, 4, "global"), P.choose(fs, 100, "global"), keep_layers=[0, 2])
    pruned.save_pretrained(tmp_path)
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(back).__name__ == "SlimBertForSequenceClassification"
    assert P.counts(back) == P.counts(pruned) and P.counts(back)["layers"] == 2
    b = batch()
    torch.testing.assert_close(logits(back, b), logits(pruned, b), atol=0, rtol=0)


def test_onnx_export_of_pruned_model_passes_parity(tmp_path, tokenizer):
    import numpy as np

    from slimtune.export import write
    from slimtune.measure.predictors import OnnxPredictor, TorchPredictor

    m = tiny_classifier(hidden=32, heads=4)
    m.resize_token_embeddings(len(tokenizer))
    m.config.id2label, m.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
    hs, fs = P.group_scores(m)
    pruned = P.remove_structure(m, P.choose(hs, 3, "global"), P.choose(fs, 50, "global"))
    for int8 in (False, True):
        out = write(pruned, tokenizer, "onnx-int8" if int8 else "onnx", tmp_path / f"onnx{int8}")
        texts = ["a short one", "the film was brilliant and moving, a real delight", "dull"]
        a = OnnxPredictor(out / "model.onnx", tokenizer, ["neg", "pos"]).logits(texts)
        b = TorchPredictor(pruned, tokenizer).logits(texts)
        assert np.abs(a - b).max() < (0.05 if int8 else 1e-4)


def test_structured_pruning_rejects_non_bert():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    m = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, num_labels=2))
    with pytest.raises(SlimtuneError, match="BERT-family"):
        P.remove_structure(m, [[0]], [[0]])


# ---- stages through the runner ---------------------------------------------------------------

FAST_EVAL = {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "isolate": False, "max_length": 32}


def _run(raw, out):
    from slimtune.recipe import parse
    from slimtune.runner import run

    return run(parse(raw, "test"), out, log=lambda *_: None)


def test_prune_stage_exact_sparsity_kept_through_training_and_stored_sparse(tiny_clf_dir, tiny_csv, tmp_path):
    from slimtune.artifacts import load_model

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_clf_dir), "eval": FAST_EVAL,
           "stages": [{"name": "base", "method": "baseline"},
                      {"name": "sparse", "method": "prune", "sparsity": 0.7, "schedule": "cubic", "rounds": 3,
                       "max_steps": 6, "max_length": 32, "batch_size": 8, "l1": 0.1, "alpha": 0.5}]}
    report = _run(raw, tmp_path)
    m = report["stages"][1]["metrics"]
    n = 2 * (2 * 32 * 32 * 2 + 2 * 32 * 64) + 30522 * 32  # tiny_clf: 2 layers, embeddings included
    assert m["prunable_weights"] == n and m["pruned_weights"] == round(0.7 * n)
    assert m["storage"] == "sparse" and m["speedup_kind"] == "size-only"
    model, _ = load_model(tmp_path / "stages/02-sparse")
    w = P.prunable_weights(model, include_embeddings=True)
    assert sum(int((p == 0).sum()) for p in w.values()) == round(0.7 * n)
    # embedding rows of tokens absent from the training texts are pruned first: here they outnumber
    # the weights to prune, so no row of a token the training texts use lost a weight (the padding
    # row was zero from the start)
    from slimtune.data import DataConfig, load_splits
    from slimtune.methods.prune.scores import unused_token_rows

    _, tok = load_model(tmp_path / "stages/02-sparse")
    unused = unused_token_rows(tok, load_splits(DataConfig(path=str(tiny_csv))).train.texts, 30522, 32)
    emb = model.bert.embeddings.word_embeddings.weight
    assert unused.sum() * 32 > round(0.7 * n)
    assert int((emb[~unused] == 0).sum()) == 32 and int((emb[unused] == 0).sum()) == round(0.7 * n) - 32
    base = report["stages"][0]["metrics"]["size_bytes"]
    assert m["size_bytes"] < 0.5 * base
    md = (tmp_path / "report.md").read_text()
    assert "size-only" in md


def test_movement_pruning_and_l1_run_in_the_training_path(tiny_clf_dir, tiny_csv, tmp_path):
    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_clf_dir), "eval": FAST_EVAL,
           "stages": [{"name": "mv", "method": "prune", "sparsity": 0.5, "score": "movement", "rounds": 2,
                       "include_embeddings": False, "max_steps": 4, "max_length": 32, "batch_size": 8}]}
    m = _run(raw, tmp_path)["stages"][0]["metrics"]
    assert m["pruned_weights"] == round(0.5 * m["prunable_weights"]) and m["train_steps"] == 4


def test_l1_penalty_shrinks_weights(tiny_clf_dir, tiny_csv, tmp_path):
    """Same oneshot pruning and training, with and without the L1 term: L1 leaves smaller weights."""
    from slimtune.artifacts import load_model

    def mean_abs(l1):
        raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_clf_dir), "eval": FAST_EVAL,
               "stages": [{"name": "p", "method": "prune", "sparsity": 0.3, "schedule": "oneshot", "l1": l1,
                           "include_embeddings": False, "max_steps": 5, "max_length": 32, "batch_size": 8,
                           "learning_rate": 1e-3, "storage": "dense"}]}
        _run(raw, tmp_path / str(l1))
        model, _ = load_model(tmp_path / str(l1) / "stages/01-p")
        return float(torch.cat([w.detach().abs().reshape(-1) for w in P.prunable_weights(model).values()]).mean())

    assert mean_abs(50.0) < 0.97 * mean_abs(0.0)


def test_structured_stage_iterative_with_layer_drop(tiny_base6_dir, tiny_csv, tmp_path):
    from slimtune.artifacts import load_model

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base6_dir), "eval": FAST_EVAL | {"isolate": False},
           "stages": [{"name": "ft", "method": "full", "max_steps": 2, "max_length": 32},
                      {"name": "pruned", "method": "prune_structured", "heads": 0.5, "ffn": 0.5, "layers": 2,
                       "rounds": 2, "max_steps": 4, "max_length": 32, "batch_size": 8, "calibration_batches": 2}]}
    report = _run(raw, tmp_path)
    m = report["stages"][1]["metrics"]
    # tiny base6: 6 layers x 2 heads x 64 neurons; two layers dropped, then half of the original
    # 12 heads / 384 neurons removed in total (the dropped layers' share counts)
    assert m["layers_after"] == 4 and sum(m["heads_after"]) == 6 and sum(m["ffn_after"]) == 192
    assert [r["round"] for r in m["rounds"]] == [1, 2] and m["train_steps"] == 4
    model, _ = load_model(tmp_path / "stages/02-pruned")
    assert P.counts(model) == {"layers": 4, "heads": m["heads_after"], "ffn": m["ffn_after"]}
    assert m["params"] < report["stages"][0]["metrics"]["params"]
    assert "layers 6 → 4, heads 12 → 6" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("stage, message", [
    ({"method": "prune", "sparsity": 1.5}, "sparsity must be in"),
    ({"method": "prune", "score": "movement", "schedule": "oneshot"}, "movement scores come from training"),
    ({"method": "prune_structured", "ffn": 1.0}, "fractions in"),
    ({"method": "prune_structured", "layers": 1, "drop_layers": [0]}, "not both"),
])
def test_bad_pruning_settings_are_one_line_errors(stage, message, tiny_csv):
    from slimtune.recipe import parse

    with pytest.raises(SlimtuneError, match=message):
        parse({"data": {"path": str(tiny_csv)}, "model": "minilm-l6", "stages": [{"name": "p", **stage}]})


def test_prune_recipe_is_shipped():
    from pathlib import Path

    raw = yaml.safe_load((Path(__file__).parents[1] / "recipes/prune.yaml").read_text())
    assert [s["method"] for s in raw["stages"]] == ["full", "prune_structured"] and raw["export"] == ["onnx-int8"]


def test_masks_are_exact_with_ties():
    """Ties at the threshold (e.g. weights already zero) still give exactly the asked count."""
    scores = {"a": torch.zeros(100, 10), "b": torch.tensor([[0.0, 1.0], [1.0, 2.0]])}
    masks = P.masks_for(scores, 0.37)
    assert sum(int((~m).sum()) for m in masks.values()) == round(0.37 * 1004)


def test_mask_callback_holds_the_zeros_of_a_resumed_run():
    from types import SimpleNamespace

    from slimtune.methods.prune import MaskCallback, PruneConfig

    m = tiny_classifier()
    w = P.prunable_weights(m)
    P.apply_masks(w, P.masks_for({n: p.detach().abs() for n, p in w.items()}, 0.5))
    cb = MaskCallback(w, PruneConfig(sparsity=0.8, rounds=2, max_steps=10))
    cb.on_train_begin(None, SimpleNamespace(max_steps=10, global_step=3), None)
    with torch.no_grad():
        for p in w.values():
            p.add_(1.0)  # an optimizer step moves every weight
    cb.on_step_end(None, SimpleNamespace(global_step=5), None)  # not a pruning step (4 and 7 are)
    assert P.sparsity_report(w)["sparsity"] == 0.5
