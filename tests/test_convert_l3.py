"""convert_minilm_l3 against the real packaged ONNX file and ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertModel

from slimtune.model import assets, convert_l3
from slimtune.model.convert_l3 import convert_minilm_l3
from slimtune.errors import SlimtuneError

SENTENCES = [
    "A gripping, beautifully acted film.",
    "The plot meanders for two hours and never quite finds the emotional payoff it keeps "
    "promising, although the cinematography is often stunning.",
    "Dull.",
    "I laughed, I cried, and then I went home and called my mother.",
]


@pytest.fixture(scope="module")
def onnx_path():
    return assets.locate(assets.MINILM_L3_ONNX)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, onnx_path):
    out_dir = tmp_path_factory.mktemp("l3") / "hf"
    return convert_minilm_l3(onnx_path, assets.locate(assets.MINILM_L6), out_dir)


def test_matches_onnxruntime(converted, onnx_path):
    tok = AutoTokenizer.from_pretrained(converted)
    batch = tok(SENTENCES, padding=True, return_tensors="np")
    mask = batch["attention_mask"]
    assert mask.sum(1).min() < mask.shape[1]  # the batch really is padded

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    # The token-level output has an auto-generated name; find it by shape: [batch, seq, hidden].
    (token_out,) = [o.name for o in session.get_outputs() if len(o.shape) == 3]
    feeds = {"input_ids": batch["input_ids"], "attention_mask": mask}
    (expected,) = session.run([token_out], feeds)

    model = AutoModel.from_pretrained(converted, add_pooling_layer=False).eval()
    with torch.no_grad():
        got = model(**{k: torch.from_numpy(v) for k, v in batch.items()}).last_hidden_state.numpy()
    diff = np.abs(got - expected)[mask.astype(bool)]
    assert diff.max() < 1e-4, diff.max()


def test_shapes_and_param_count(converted):
    # add_pooling_layer=False: the source has no pooler, so no key may be missing or unexpected.
    model, info = AutoModel.from_pretrained(
        converted, add_pooling_layer=False, output_loading_info=True
    )
    assert not any(info.values()), info
    assert model.config.num_hidden_layers == 3
    assert model.config.architectures == ["BertModel"]
    with safe_open(str(converted / "model.safetensors"), "pt") as f:
        stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    fresh = BertModel(model.config, add_pooling_layer=False)
    assert sum(p.numel() for p in fresh.parameters()) == stored


def test_loads_for_classification(converted):
    model = AutoModelForSequenceClassification.from_pretrained(converted, num_labels=2)
    assert model.classifier.out_features == 2


def test_second_call_does_not_rewrite(converted, onnx_path):
    before = (converted / "model.safetensors").stat().st_mtime_ns
    assert convert_minilm_l3(onnx_path, assets.locate(assets.MINILM_L6), converted) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.parametrize("content", [b"not an onnx file", "truncated"])
def test_corrupt_onnx_raises(tmp_path, onnx_path, content):
    if content == "truncated":
        with open(onnx_path, "rb") as f:
            content = f.read(4096)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    out = tmp_path / "out"
    with pytest.raises(SlimtuneError):
        convert_minilm_l3(bad, assets.locate(assets.MINILM_L6), out)
    assert list(tmp_path.iterdir()) == [bad]  # neither out_dir nor the temporary folder is left


def test_interrupted_conversion_leaves_nothing(tmp_path, onnx_path, monkeypatch):
    def crash(*args, **kwargs):  # fails after the weights are written, before the tokenizer
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(convert_l3.shutil, "copy2", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        convert_minilm_l3(onnx_path, assets.locate(assets.MINILM_L6), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
