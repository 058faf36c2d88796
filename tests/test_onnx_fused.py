"""onnx_compact's graph settings: `fuse` (ONNX Runtime's transformer fusions), `per_channel` and
`reduce_range` (the int8 pass's weight scales), and the op counts a stage records."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.errors import SlimtuneError
from slimtune.methods.onnx_compact import OnnxCompactConfig, build, graph_ops
from slimtune.recipe import parse

TEXTS = ["a gorgeous, witty, seductive movie", "dull and lifeless", "the cast is great but the plot is thin"] * 4
RECIPE = {"data": {"name": "rotten_tomatoes"}, "model": "minilm-l6"}


def stage(**fields) -> dict:
    return RECIPE | {"stages": [{"name": "onnx", "method": "onnx_compact"} | fields]}


@pytest.fixture(scope="module")
def tiny(tiny_clf_dir):
    from slimtune.artifacts import load_model

    return load_model(tiny_clf_dir)


@pytest.fixture(scope="module")
def graphs(tiny, tmp_path_factory):
    """fp32 and default (int8 matmuls, 4-bit embeddings) graphs, each fused and unfused."""
    model, tok = tiny
    root = tmp_path_factory.mktemp("fused")
    return {(prec, fuse): build(model, tok, OnnxCompactConfig(**kw, fuse=fuse), root / f"{prec}-{fuse}")
            for prec, kw in {"fp32": {"matmul": "fp32", "embeddings": "fp32"}, "int8": {}}.items()
            for fuse in (True, False)}


def logits(path, tok):
    from slimtune.measure.predictors import OnnxPredictor

    return OnnxPredictor(path, tok, ["neg", "pos"], 64).logits(TEXTS)


def test_keys_parse_with_todays_behaviour_as_the_default():
    default = parse(stage()).stages[0].config
    assert (default.fuse, default.per_channel, default.reduce_range) == (True, True, True)
    cfg = parse(stage(fuse=False, per_channel=False, reduce_range=False)).stages[0].config
    assert (cfg.fuse, cfg.per_channel, cfg.reduce_range) == (False, False, False)
    assert cfg.label() == "ONNX matmul int8, embeddings int4 (4-bit blocks of 32, symmetric), int8 per tensor, unfused"
    assert default.label() == "ONNX matmul int8, embeddings int4 (4-bit blocks of 32, symmetric)"


@pytest.mark.parametrize("key", ["fuse", "per_channel", "reduce_range"])
def test_a_bad_value_is_one_line(key):
    with pytest.raises(SlimtuneError) as e:
        parse(stage(**{key: "yes"}), "r.yaml")
    assert str(e.value) == f"r.yaml: stages[0] (onnx_compact).{key}: expected bool, got 'yes'"
    with pytest.raises(SlimtuneError) as e:  # from Python, where no recipe parser checks types
        OnnxCompactConfig(**{key: 1})
    assert str(e.value) == f"onnx_compact: {key} must be true or false, not 1"


def test_the_fused_graph_has_the_fusion_ops_and_the_unfused_one_none(graphs):
    ops, fusions = graph_ops(graphs["fp32", True])
    # the tiny BERT has 2 layers: one Attention, two SkipLayerNorms and one BiasGelu per layer
    assert fusions == {"SkipLayerNormalization": 4, "Attention": 2, "BiasGelu": 2, "EmbedLayerNormalization": 1}
    assert ops["MatMul"] == 6 and "Softmax" not in ops
    unfused_ops, unfused = graph_ops(graphs["fp32", False])
    assert unfused == {} and unfused_ops["Softmax"] == 2 and unfused_ops["MatMul"] == 16
    _, int8 = graph_ops(graphs["int8", True])
    assert int8 == {"SkipLayerNormalization": 4, "BiasGelu": 2, "QAttention": 2}  # attention quantized inside its fused op
    assert graph_ops(graphs["int8", False])[1] == {}


def test_fused_and_unfused_predict_the_same(graphs, tiny):
    model, tok = tiny
    fp32 = logits(graphs["fp32", True], tok)
    assert np.abs(fp32 - logits(graphs["fp32", False], tok)).max() < 1e-4  # fusion reorders float sums only
    fused8, unfused8 = logits(graphs["int8", True], tok), logits(graphs["int8", False], tok)
    assert np.abs(fused8 - fp32).max() < 0.05 and np.abs(unfused8 - fp32).max() < 0.05
    assert (fused8.argmax(1) == unfused8.argmax(1)).all()


def _int8_weights(path) -> list[np.ndarray]:
    """The int8 pass's quantized weights (MatMul, QAttention) with their scales, as arrays."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    return [(w, inits[name.removesuffix("_quantized") + "_scale"]) for name, w in inits.items()
            if name.endswith("_quantized") and w.dtype == np.int8 and w.ndim == 2]


@pytest.mark.parametrize("per_channel, reduce_range", [(True, True), (False, False)])
def test_per_channel_and_reduce_range_reach_the_int8_pass(tiny, tmp_path, per_channel, reduce_range):
    model, tok = tiny
    path = build(model, tok, OnnxCompactConfig(embeddings="fp32", per_channel=per_channel, reduce_range=reduce_range), tmp_path)
    weights = _int8_weights(path)
    # per layer: QAttention's q/k/v, attention output, two FFN MatMuls; then pooler and classifier
    assert len(weights) == 2 * 4 + 2
    for w, scale in weights:
        assert scale.size == (w.shape[1] if per_channel else 1)  # one scale per output channel, or one
        assert np.abs(w.astype(int)).max() == (64 if reduce_range else 127)  # 7-bit weights: [-64, 64]


def test_the_stage_records_the_fusions_and_the_op_histogram(tiny_clf_dir, tmp_path):
    from slimtune.artifacts import load_model
    from slimtune.data import Splits, TextSet
    from slimtune.stage import METHODS, StageContext

    model, tok = load_model(tiny_clf_dir)
    texts = TextSet(TEXTS, [0, 1] * 6)
    ctx = StageContext(Splits(texts, texts, texts, ["neg", "pos"], "test"), tmp_path / "_work", log=lambda m: None)
    facts = METHODS["classify"]["onnx_compact"].apply(model, tok, OnnxCompactConfig(), ctx).facts
    assert facts["onnx_fusions"] == {"SkipLayerNormalization": 4, "BiasGelu": 2, "QAttention": 2}
    assert facts["onnx_ops"]["QAttention"] == 2 and facts["onnx_ops"]["GatherBlockQuantized"] == 1
    assert list(facts["onnx_ops"].values()) == sorted(facts["onnx_ops"].values(), reverse=True)
