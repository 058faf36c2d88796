"""onnx_compact: int8 / 4-bit weights and embeddings inside one ONNX graph, parity with torch."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.errors import SlimtuneError
from slimtune.methods.onnx_compact import OnnxCompactConfig, build

TEXTS = ["a gorgeous, witty, seductive movie", "dull and lifeless", "the cast is great but the plot is thin"] * 4


@pytest.fixture(scope="module")
def tiny(tiny_clf_dir):
    from slimtune.artifacts import load_model

    return load_model(tiny_clf_dir)


@pytest.mark.parametrize("matmul, embeddings, ops", [
    ("int8", "int8", {"QAttention", "QEmbedLayerNormalization"}),
    ("int8", "int4", {"QAttention", "GatherBlockQuantized"}),
    ("int4", "int4", {"MatMulNBits", "GatherBlockQuantized"}),
])
def test_compact_graph_ops_size_and_parity(tiny, tmp_path, matmul, embeddings, ops):
    import onnx

    from slimtune.measure.predictors import OnnxPredictor, TorchPredictor

    model, tok = tiny
    path = build(model, tok, OnnxCompactConfig(matmul=matmul, embeddings=embeddings, block_size=16), tmp_path)
    graph = onnx.load(str(path)).graph
    nodes = [n.op_type for n in graph.node]
    assert ops <= set(nodes)
    if embeddings == "int4":  # the word table alone is 4-bit; positions and token types are int8
        tables = {i.name: i.data_type for i in graph.initializer if len(i.dims) == 2}
        gathered = sorted(tables[n.input[0]] for n in graph.node if n.op_type == "Gather" and n.input[0] in tables)
        eight = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
        assert nodes.count("GatherBlockQuantized") == 1 and len(gathered) == 2 and set(gathered) <= set(eight)
    ref = TorchPredictor(model, tok, 64).logits(TEXTS)
    out = OnnxPredictor(path, tok, ["neg", "pos"], 64).logits(TEXTS)
    assert np.abs(ref - out).max() < 0.05 and (ref.argmax(1) == out.argmax(1)).mean() >= 0.9
    fp32 = build(model, tok, OnnxCompactConfig(matmul="fp32", embeddings="fp32"), tmp_path / "fp32")
    ratio = fp32.stat().st_size / path.stat().st_size
    # a weight counts once however it is stored (4-bit MatMulNBits packs two to a byte; scales are not weights)
    assert OnnxPredictor(path, tok, ["neg", "pos"], 64).num_params() == OnnxPredictor(fp32, tok, ["neg", "pos"], 64).num_params()
    assert ratio > (3.5 if embeddings == "int8" else 4.5)  # the tiny model is mostly its 30,522-row table


def test_bad_settings():
    with pytest.raises(SlimtuneError, match="matmul and embeddings must be one of int8, int4, fp32"):
        OnnxCompactConfig(embeddings="int2")
    with pytest.raises(SlimtuneError, match="block_size must be a power of 2 >= 16"):
        OnnxCompactConfig(block_size=24)


def test_quantizers_do_not_log_every_tensor(tiny_clf_dir, tmp_path):
    # ORT's 4-bit quantizer module runs logging.basicConfig(level=INFO) on import; in a plain process
    # (no pytest handlers on the root logger) that printed a line per tensor into the user's run
    import subprocess
    import sys

    code = ("import logging, sys; from pathlib import Path; from slimtune.artifacts import load_model; "
            "from slimtune.methods.onnx_compact import OnnxCompactConfig, build; "
            f"m, t = load_model(Path({str(tiny_clf_dir)!r})); "
            f"build(m, t, OnnxCompactConfig(block_size=16), Path({str(tmp_path)!r})); "
            "root = logging.getLogger(); assert not root.handlers and root.level == logging.WARNING, (root.handlers, root.level)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[INFO]" not in proc.stderr and "Quantization parameters" not in proc.stderr, proc.stderr[-2000:]
