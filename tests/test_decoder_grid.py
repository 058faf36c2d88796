"""genai-int4 keeps a 4-bit grid the weights are already on (slimtune/decoder/grid.py): the grid read
back from fp32 weights, an export whose logits are torch's, and a LoRA kept unmerged over its base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_llama import build_model_dir  # noqa: E402

# the lm_head left fp32 (and the embedding unshared), so the only quantized MatMuls are the grid's
EXACT = {"algo_config": "k_quant", "block_size": 16, "accuracy_level": 1, "shared_embeddings": False,
         "nodes_to_exclude": "/lm_head/MatMul"}


def _grid_values(rng, n, k, block):
    q = rng.integers(0, 16, (n, k)).astype(np.uint8)
    q[:, ::block] = 0  # the block's minimum and maximum are on it, as llama.cpp's Q4_1 quantizer sets them
    q[:, 1::block] = 15
    d = (rng.random((n, k // block)) * 0.01 + 1e-3).astype(np.float16).astype(np.float32)
    m = (-rng.random((n, k // block)) * 0.08).astype(np.float16).astype(np.float32)
    return q, d, m, (d.repeat(block, 1) * q + m.repeat(block, 1)).astype(np.float32)


@pytest.mark.parametrize("block, k", [(32, 64), (16, 48), (64, 128)])
def test_the_grid_is_read_back_from_the_weights(block, k):
    from slimtune.decoder.grid import q4_grid

    q, d, m, w = _grid_values(np.random.default_rng(block), 6, k, block)
    g = q4_grid(w)
    assert g is not None and g.block == block
    assert np.array_equal(g.q, q) and np.array_equal(g.d, d) and np.array_equal(g.m, m)
    off = w.copy()
    off[2, 5] += d[2, 5 // block] * 0.3  # one value between two levels
    assert q4_grid(off) is None
    assert q4_grid(np.random.default_rng(0).standard_normal((6, k)).astype(np.float32)) is None
    assert q4_grid(w[:, :-8]) is None  # K 56, 40 or 120: no block of 16 or more divides it


def test_slimtunes_own_int4_codec_is_on_a_grid():
    import torch

    from slimtune.artifacts.codecs import CODECS
    from slimtune.decoder.grid import q4_grid

    w = torch.randn(8, 64)
    codec = CODECS["int4"]
    g = q4_grid(codec.decode(*codec.encode(w, group_size=16)).numpy())
    assert g is not None and g.block == 16


def _on_grid_llama(tmp_path: Path) -> Path:
    """The tiny Llama with every layer weight moved onto a block-32 grid (GGUF Q4_1's)."""
    import torch

    from slimtune.decoder.lm import load_causal_lm

    src = build_model_dir(tmp_path / "m")
    model, tok = load_causal_lm(src)
    with torch.no_grad():
        for name, mod in model.named_modules():
            if isinstance(mod, torch.nn.Linear) and ".layers." in name:
                w = mod.weight.numpy().reshape(mod.out_features, -1, 32)
                lo = w.min(-1, keepdims=True).astype(np.float16).astype(np.float32)
                d = ((w.max(-1, keepdims=True) - lo) / 15).astype(np.float16).astype(np.float32)
                q = np.clip(np.rint((w - lo) / d), 0, 15)
                mod.weight.copy_(torch.from_numpy((d * q + lo).reshape(mod.weight.shape)))
    out = tmp_path / "grid"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _max_logprob_gap(folder_a, folder_b, texts) -> float:
    from slimtune.decoder.lm import load_decoder

    a, b = load_decoder(folder_a), load_decoder(folder_b)
    gaps = []
    for t in texts:
        ids = a.tokenizer(t)["input_ids"]
        gaps.append(float(np.abs(a.logprobs(ids) - b.logprobs(ids)).max()))
    return max(gaps)


TEXTS = ["What is AI? Artificial intelligence is the science of making machines think.",
         "Who wrote Hamlet? William Shakespeare wrote Hamlet."]


def test_int4_export_of_an_on_grid_model_gives_torchs_logits(tmp_path):
    import onnx

    from slimtune.decoder import grid
    from slimtune.decoder.genai import export_genai

    folder = _on_grid_llama(tmp_path)
    p = grid.plan(folder)
    assert p is not None and p.adapter is None and p.num_layers == 4
    facts = grid.export_int4(p, tmp_path / "kept", tmp_path / "cache", EXACT)
    assert facts == {"grid": "kept", "on_grid_matmuls": 4 * 7}
    ops = [n.op_type for n in onnx.load(str(tmp_path / "kept" / "model.onnx"), load_external_data=False).graph.node]
    # per layer q/k/v fused, o, gate/up fused, down: 4 MatMulNBits, 4 block sums and 4 block-minimum MatMuls; + the fp32 lm_head
    assert ops.count("MatMulNBits") == 16 and ops.count("MatMul") == 2 * 16 + 1 and ops.count("Split") == 8
    kept = _max_logprob_gap(folder, tmp_path / "kept", TEXTS)
    assert kept < 1e-4, kept
    # the builder's own int4 of the same weights (what `grid: requantize` does) is far off
    export_genai(folder, "genai-int4", tmp_path / "requantized", tmp_path / "cache", EXACT)
    assert _max_logprob_gap(folder, tmp_path / "requantized", TEXTS) > 100 * max(kept, 1e-6)


def test_a_merged_lora_is_exported_as_its_on_grid_base_plus_the_adapter(tmp_path):
    import peft
    import torch

    from slimtune.artifacts.peft_adapter import write_adapter
    from slimtune.decoder import grid
    from slimtune.decoder.lm import load_causal_lm

    base = _on_grid_llama(tmp_path)
    model, tok = load_causal_lm(base)
    pmodel = peft.get_peft_model(model, peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                                        target_modules=["q_proj", "v_proj", "o_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, prm in pmodel.named_parameters():
            if "lora_B" in name:
                prm.normal_(0, 0.05)  # a LoRA that changes the logits (trained ones start at zero)
    tuned = tmp_path / "tuned"
    write_adapter(pmodel, tuned / "adapter", True, str(base))
    merged = pmodel.merge_and_unload()
    merged.save_pretrained(tuned)
    tok.save_pretrained(tuned)
    assert not grid.folder_on_grid(tuned)  # the merged weights are off the grid
    p = grid.plan(tuned)
    assert p.source == base and p.adapter == tuned / "adapter"
    facts = grid.export_int4(p, tmp_path / "g", tmp_path / "cache", EXACT)
    assert facts == {"grid": "kept", "on_grid_matmuls": 28, "lora": "unmerged fp32", "lora_base": str(base)}
    assert _max_logprob_gap(base, tuned, TEXTS) > 1e-2  # dropping the LoRA would show
    assert _max_logprob_gap(tuned, tmp_path / "g", TEXTS) < 1e-4
    # an adapter whose base has gone: built from the merged weights as before
    marker = tuned / "adapter" / "slimtune.json"
    marker.write_text(json.dumps({"merged": True, "source": str(tmp_path / "gone")}))
    assert grid.plan(tuned) is None


def test_int4_grid_is_a_recipe_option():
    from slimtune.errors import SlimtuneError
    from slimtune.recipe import parse

    raw = {"task": "generate", "data": {"name": "chatterbot_qa"}, "model": "smollm2-135m"}
    assert parse(raw, "r.yaml").int4.grid == "keep"
    assert parse(raw | {"int4": {"grid": "requantize"}}, "r.yaml").to_dict()["int4"]["grid"] == "requantize"
    with pytest.raises(SlimtuneError, match="int4.grid must be keep or requantize, not 'exact'"):
        parse(raw | {"int4": {"grid": "exact"}}, "r.yaml")
