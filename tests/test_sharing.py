"""share_layers: ALBERT-style cross-layer sharing retrofitted onto a trained BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_peft import FAST_EVAL, _run

from slimtune.errors import SlimtuneError


def test_share_layers_stores_each_block_once_and_recovers(tiny_base6_dir, tiny_csv, tmp_path, tokenizer):
    from safetensors.torch import load_file

    from slimtune.export import write
    from slimtune.artifacts import load_model
    from slimtune.measure.predictors import OnnxPredictor, TorchPredictor

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base6_dir), "eval": FAST_EVAL,
           "stages": [{"name": "ft", "method": "full", "max_steps": 2, "max_length": 32},
                      {"name": "shared", "method": "share_layers", "group_size": 2, "max_steps": 2, "max_length": 32}]}
    report = _run(raw, tmp_path)
    m = report["stages"][1]["metrics"]
    layer = 8_544  # one tiny encoder layer
    assert m["groups"] == [[0, 1], [2, 3], [4, 5]] and m["layer_order"] == [0, 0, 1, 1, 2, 2]
    assert m["params_removed"] == 3 * layer and m["train_steps"] == 2
    stored = load_file(tmp_path / "stages/02-shared/model.safetensors")
    assert sorted({k.split(".")[3] for k in stored if ".encoder.layer." in k}) == ["0", "1", "2"]
    model, tok = load_model(tmp_path / "stages/02-shared")
    assert model.config.layer_order == [0, 0, 1, 1, 2, 2]
    out = write(model, tok, "onnx", tmp_path / "onnx")
    texts = ["the plot was dull", "a superb, moving film"]
    a = OnnxPredictor(out / "model.onnx", tok, model.config.id2label.values()).logits(texts)
    assert np.abs(a - TorchPredictor(model, tok).logits(texts)).max() < 1e-4


def test_share_layers_mean_init_is_the_average(tiny_clf_dir):
    from slimtune.methods.sharing import share
    from slimtune.artifacts import load_model

    model, _ = load_model(tiny_clf_dir)
    q = [model.bert.encoder.layer[i].attention.self.query.weight.detach().clone() for i in (0, 1)]
    shared = share(model, [[0, 1]], "mean")
    torch.testing.assert_close(shared.bert.encoder.layer[0].attention.self.query.weight, (q[0] + q[1]) / 2)
    with pytest.raises(SlimtuneError, match="exactly once"):
        from slimtune.methods.sharing import ShareConfig, layer_groups

        layer_groups(2, ShareConfig(groups=[[0], [0, 1]], max_steps=1))
