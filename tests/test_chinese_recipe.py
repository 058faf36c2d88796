"""recipes/chinese.yaml as shipped, and the CE term's class weights (TrainConfig.class_weight).

The recipe is run end to end on tiny stand-ins in tests/test_shipped_recipes.py; here: it
validates, names the packaged model and data, leaves max_length to the data's profile and weighs
classes only when the data is unbalanced. The weighted loss is checked against a hand computation.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from slimtune.errors import SlimtuneError
from slimtune.recipe import load, parse
from slimtune.train.config import TrainConfig, class_weights
from slimtune.train.losses import IGNORE, ce_term, hard_ce, objective, Batch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "chinese.yaml"


def test_chinese_recipe_validates_and_names_e5_and_chinese_reviews():
    r = load(RECIPE)
    assert r.model == "multilingual-e5-small" and r.data.name == "chinese_reviews"
    assert r.baseline_name == "finetune"  # the fine-tuned fp32 model, not the trimmed untrained one
    methods = [s.method for s in r.stages]
    assert methods == ["trim_vocab", "full", "distill", "prune_structured", "onnx_compact"]
    assert r.stages[0].config.corpus == ["train", "val"]  # texts only, never test
    training = [s for s in r.stages if hasattr(s.config, "max_length")]
    # lengths and class weights come from the data: no stage fixes either
    assert training and all(s.config.max_length is None for s in training)
    assert all(s.config.class_weight == "auto" for s in training)
    assert all(s.config.max_minutes > 0 for s in training)  # every training stage has a wall-time cap
    assert parse(r.to_dict()).to_dict() == r.to_dict()


# ---- class weights ----------------------------------------------------------------------------


def test_balanced_weights_are_n_over_k_times_count():
    labels = [0] * 6 + [1] * 3 + [2] * 1 + [IGNORE] * 5  # unlabelled rows do not count
    assert class_weights("balanced", labels, 3) == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert class_weights("balanced", [0, 1, 0, 1], 2) == [1.0, 1.0]
    assert class_weights("none", labels, 3) is None
    # a class with no training row gets 0 (it never appears as a label)
    assert class_weights("balanced", [0, 0, 1], 3) == pytest.approx([0.75, 1.5, 0.0])


def test_auto_weighs_only_above_the_imbalance_threshold():
    # chinese_reviews' train: 9,031 / 8,332 = 1.08 -> unweighted; 3 : 2 = 1.5 is not above 1.5
    assert class_weights("auto", [0] * 9031 + [1] * 8332, 2) is None
    assert class_weights("auto", [0] * 3 + [1] * 2, 2) is None
    assert class_weights("auto", [0] * 8 + [1] * 5, 2) == pytest.approx([13 / 16, 13 / 10])


def test_class_weight_setting_is_checked():
    assert TrainConfig().class_weight == "none"
    with pytest.raises(SlimtuneError, match=r"class_weight: 'balance' is not one of none, balanced, auto"):
        TrainConfig(class_weight="balance")


def test_weighted_ce_equals_the_hand_computation():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.5]])
    labels = torch.tensor([0, 1, 2, 0])
    w = [0.5, 2.0, 4.0]
    # per row: -log softmax(logits)[y], weighted by w[y]; the mean is over the summed weights
    nll = [math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits.tolist(), labels.tolist())]
    hand = sum(w[y] * l for l, y in zip(nll, labels.tolist())) / sum(w[y] for y in labels.tolist())
    assert hard_ce(logits, labels, torch.tensor(w)).item() == pytest.approx(hand, rel=1e-6)
    assert hard_ce(logits, labels).item() == pytest.approx(sum(nll) / 4, rel=1e-6)  # unweighted: the plain mean
    b = Batch(None, {"logits": logits}, labels, None, class_weights=torch.tensor(w))
    assert ce_term(b).item() == pytest.approx(hand, rel=1e-6)
    # unlabelled (teacher-only) rows are left out of the weighted mean
    b = Batch(None, {"logits": logits}, torch.tensor([0, 1, IGNORE, 0]), None, class_weights=torch.tensor(w))
    kept = [0, 1, 3]
    want = sum(w[labels[i]] * nll[i] for i in kept) / sum(w[labels[i]] for i in kept)
    assert ce_term(b).item() == pytest.approx(want, rel=1e-6)


def test_objective_passes_class_weights_to_the_ce_term():
    class Model(torch.nn.Module):
        def forward(self, logits):
            return {"logits": logits}

    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]])
    labels = torch.tensor([1, 1, 0])
    nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    want = (nll * torch.tensor([3.0, 3.0, 1.0])).sum() / 7
    loss, _ = objective(class_weights=[1.0, 3.0])(Model(), {"logits": logits, "labels": labels})
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    loss, _ = objective()(Model(), {"logits": logits, "labels": labels})
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-6)
