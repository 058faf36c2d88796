"""Distillation: losses against hand-computed values, layer maps, students, cache, resume."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerCallback

from slimtune.data import DataConfig, load_splits
from slimtune.errors import SlimtuneError
from slimtune.methods import METHODS, StageContext
from slimtune.methods.distill import truncate
from slimtune.train.losses import attention_kl, combined, hard_ce, hidden_mse, soft_kl, uniform_layer_map
from slimtune.artifacts import load_model
from slimtune.recipe import build
from tests.conftest import tiny_config


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def test_soft_kl_matches_hand_computation_with_t_squared():
    s, t = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    for temp in (1.0, 2.0, 4.0):
        expected = temp**2 * sum(kl(softmax([x / temp for x in tr]), softmax([x / temp for x in sr])) for sr, tr in zip(s.tolist(), t.tolist())) / 2
        assert soft_kl(s, t, temp).item() == pytest.approx(expected, rel=1e-5)
    assert soft_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_alpha_limits():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert combined(1.0, 2.0, s, t, y).item() == pytest.approx(hard_ce(s, y).item())
    assert combined(0.0, 2.0, s, t, y).item() == pytest.approx(soft_kl(s, t, 2.0).item())
    mid = combined(0.3, 2.0, s, t, y).item()
    assert mid == pytest.approx(0.3 * hard_ce(s, y).item() + 0.7 * soft_kl(s, t, 2.0).item(), rel=1e-6)


def test_hidden_mse_ignores_padding():
    s = torch.tensor([[[1.0, 1.0], [9.0, 9.0]]])
    t = torch.tensor([[[0.0, 3.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 0]])
    assert hidden_mse(s, t, mask).item() == pytest.approx((1 + 4) / 2)


def test_attention_kl_hand_value_and_zero():
    p = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])  # (B=1, heads=1, T=2, T=2)
    q = torch.tensor([[[[0.25, 0.75], [0.9, 0.1]]]])
    mask = torch.tensor([[1, 1]])
    assert attention_kl(q, p, mask).item() == pytest.approx(kl([0.5, 0.5], [0.25, 0.75]) / 2, rel=1e-4)
    assert attention_kl(p, p, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_uniform_layer_map():
    assert uniform_layer_map(3, 6) == [2, 4, 6]
    assert uniform_layer_map(6, 6) == [1, 2, 3, 4, 5, 6]
    assert uniform_layer_map(1, 12) == [12]
    m = uniform_layer_map(4, 6)
    assert m[-1] == 6 and m == sorted(set(m)) and len(m) == 4
    with pytest.raises(ValueError):
        uniform_layer_map(7, 6)


@pytest.fixture(scope="module")
def teacher4():
    from transformers import BertForSequenceClassification

    torch.manual_seed(1)
    cfg = tiny_config(num_hidden_layers=4, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})
    return BertForSequenceClassification(cfg).eval()


def test_truncation_keeps_chosen_layers_exactly(teacher4, tokenizer):
    student = truncate(teacher4, [0, 3])
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    for s_i, t_i in ((0, 0), (1, 3)):
        for (n, a), (_, b) in zip(student.bert.encoder.layer[s_i].state_dict().items(), teacher4.bert.encoder.layer[t_i].state_dict().items()):
            assert torch.equal(a, b), n
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher4.bert.embeddings.word_embeddings.weight)
    assert len(teacher4.bert.encoder.layer) == 4  # the teacher is untouched
    enc = tokenizer(["a test"], return_tensors="pt")
    assert student(**enc).logits.shape == (1, 2)
    with pytest.raises(SlimtuneError, match="must be increasing indices in 0..3"):
        truncate(teacher4, [0, 4])


@pytest.fixture(scope="module")
def splits(tiny_csv):
    return load_splits(DataConfig(path=str(tiny_csv)))


def distill(teacher_dir, splits, tmp_path, callbacks=(), cache=None, ckpt=None, **fields):
    teacher, tok = load_model(teacher_dir, splits.label_names)
    calls = []
    # deepcopy (truncate) copies hooks onto the student: count only the teacher's own forwards
    teacher.register_forward_hook(lambda mod, *a: calls.append(1) if mod is teacher else None)
    cfg = build(METHODS["distill"].config_cls, {"max_length": 32, "warmup": 0, **fields}, "distill")
    ctx = StageContext(splits, tmp_path / "work", log=lambda m: None, cache_dir=cache or tmp_path / "cache",
                       checkpoint_dir=ckpt, callbacks=list(callbacks))
    result = METHODS["distill"].apply(teacher, tok, cfg, ctx)
    student, s_tok, info = result.model, result.tokenizer, result.facts
    return student, s_tok, info, calls, teacher


def test_teacher_outputs_cached_and_teacher_released(tiny_clf_dir, splits, tmp_path):
    fields = dict(student="truncate", layers=[1], max_steps=2)
    student, _, info, calls, teacher = distill(tiny_clf_dir, splits, tmp_path, **fields)
    assert calls and not info["teacher_logits_reused"]
    assert next(teacher.parameters()).device.type == "meta"  # logits only: weights released
    assert student.config.num_hidden_layers == 1 and info["total_params"] == 999_138 - 8_544
    _, _, info2, calls2, _ = distill(tiny_clf_dir, splits, tmp_path, **fields)
    assert calls2 == [] and info2["teacher_logits_reused"]  # the teacher did not run again
    assert len(list((tmp_path / "cache").glob("teacher-logits-*.safetensors"))) == 1


class _CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resumed_distillation_continues(tiny_clf_dir, splits, tmp_path):
    fields = dict(student="truncate", layers=[0], max_steps=6, checkpoint_steps=2)
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_clf_dir, splits, tmp_path, [_CrashAt(4)], ckpt=tmp_path / "ckpt", **fields)
    _, _, info, calls, _ = distill(tiny_clf_dir, splits, tmp_path, ckpt=tmp_path / "ckpt", **fields)
    assert info["resumed_from_step"] == 4 and info["train_steps"] == 6
    assert calls == []  # teacher logits came from the cache


def test_hidden_and_attention_matching_with_narrower_student(tiny_clf_dir, splits, tmp_path):
    student, _, info, _, teacher = distill(
        tiny_clf_dir, splits, tmp_path, student="shrink", num_layers=1, hidden_size=16, intermediate_size=32,
        init="teacher", hidden_weight=1.0, attention_weight=1.0, max_steps=3)
    assert info["layer_map"] == [2] and math.isfinite(info["train_loss"])
    assert student.config.hidden_size == 16 and not hasattr(student, "distill_projection")
    teacher_emb = load_model(tiny_clf_dir)[0].bert.embeddings.word_embeddings.weight
    assert student.bert.embeddings.word_embeddings.weight.shape == (30522, 16)
    assert teacher_emb.shape == (30522, 32)


def test_shrink_initialised_from_teacher_is_a_slice(teacher4):
    from slimtune.methods.distill import DistillConfig, shrink

    student = shrink(teacher4, DistillConfig(student="shrink", num_layers=2, intermediate_size=32))
    assert torch.equal(student.bert.encoder.layer[1].intermediate.dense.weight, teacher4.bert.encoder.layer[3].intermediate.dense.weight[:32])
    assert torch.equal(student.bert.encoder.layer[0].attention.self.query.weight, teacher4.bert.encoder.layer[1].attention.self.query.weight)


def test_extra_unlabelled_texts_exclude_held_out(tiny_clf_dir, splits, tmp_path):
    extra = tmp_path / "extra.csv"
    extra.write_text("text\nan unlabelled sentence\nanother one\n" + f"\"{splits.test.texts[0]}\"\n")
    _, _, info, _, _ = distill(tiny_clf_dir, splits, tmp_path, student="truncate", layers=[0], max_steps=1, extra_texts=str(extra))
    assert info["extra_texts"] == 2


def test_vocabulary_mismatch_is_an_error_for_hidden_matching(tiny_clf_dir, splits, tmp_path):
    from transformers import BertForSequenceClassification, BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]) + "\n")
    folder = tmp_path / "other"
    BertForSequenceClassification(tiny_config(vocab_size=7, num_labels=2, id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1})).save_pretrained(folder)
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(folder)
    with pytest.raises(SlimtuneError, match="vocabulary differs"):
        distill(tiny_clf_dir, splits, tmp_path, student=str(folder), hidden_weight=1.0, max_steps=1)
    # logits-only distillation across vocabularies is sound: each model tokenizes the text itself
    student, s_tok, info, _, _ = distill(tiny_clf_dir, splits, tmp_path, student=str(folder), max_steps=1)
    assert len(s_tok.get_vocab()) < 10 and info["train_steps"] == 1  # the student kept its own tokenizer


def test_unlabelled_rows_count_only_in_the_soft_term():
    s, t = torch.randn(4, 2), torch.randn(4, 2)
    y = torch.tensor([1, -100, 0, -100])
    labelled = y != -100
    expected = 0.3 * hard_ce(s[labelled], y[labelled]) + 0.7 * soft_kl(s, t, 2.0)
    assert combined(0.3, 2.0, s, t, y).item() == pytest.approx(expected.item(), rel=1e-6)
    all_unlabelled = torch.full((4,), -100)
    assert combined(0.3, 2.0, s, t, all_unlabelled).item() == pytest.approx(0.7 * soft_kl(s, t, 2.0).item(), rel=1e-6)
