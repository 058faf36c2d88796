"""GGUF export (gguf-f32/f16/q8_0/q4_k_m) and llama.cpp as a runtime (issue 28 items 1, 2).

The writer is checked in the default suite without llama.cpp: the file's metadata and tensors
read back with gguf-py's GGUFReader, the q/k rope permutation against golden row orders, and the
whole file read back by transformers' own GGUF loader (which undoes llama.cpp's q/k layout on its
own): its logits must be the source's. The tests that run llama.cpp skip without llama_cpp
(`make test-gguf` builds it in .venv-gguf).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_llama import CHATML, QA, build_model_dir, build_tokenizer, write_pairs  # noqa: E402

from slimtune.errors import SlimtuneError  # noqa: E402


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("gguf-src") / "m")


@pytest.fixture(scope="module")
def exports(llama, tmp_path_factory):
    """fmt -> export folder, written once per module."""
    from slimtune.decoder.export import write

    root, done = tmp_path_factory.mktemp("gguf-out"), {}

    def get(fmt: str, source: Path = llama) -> Path:
        key = (fmt, str(source))
        if key not in done:
            done[key] = root / f"{fmt}-{len(done)}"
            get.facts[done[key]] = write(source, fmt, done[key], root / "cache", log=lambda m: None)
        return done[key]

    get.facts = {}  # export folder -> what write() reported
    return get


@pytest.fixture(scope="module")
def depth_pruned(llama, tmp_path_factory):
    """The tiny Llama with layer 1 removed by the prune surgery (3 blocks)."""
    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.prune import remove_layers

    model, tok = load_causal_lm(llama)
    remove_layers(model, [1])
    out = tmp_path_factory.mktemp("gguf-pruned") / "m"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _reader(folder: Path):
    from gguf import GGUFReader

    return GGUFReader(str(folder / "model.gguf"))


def _field(r, key):
    return r.fields[key].contents()


# ---------------------------------------------------------------- the writer (default suite)

def test_rope_permutation_golden_rows_and_round_trip():
    from slimtune.decoder.gguf_export import rope_interleave, rope_uninterleave

    rows = np.arange(8, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)  # 2 heads of 4 rows, 3 inputs
    # per head HF pairs rows (0, 2) and (1, 3) (rotate-half); llama.cpp wants pairs adjacent
    assert rope_interleave(rows, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert rope_interleave(np.arange(8.0)[:, None], 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    w = np.random.default_rng(0).standard_normal((64, 48)).astype(np.float32)
    for heads in (1, 2, 4):
        assert np.array_equal(rope_uninterleave(rope_interleave(w, heads), heads), w)
    assert not np.array_equal(rope_interleave(w, 4), w)


def test_f16_metadata_tensors_and_tokenizer(llama, exports):
    from gguf import GGMLQuantizationType as Q
    from transformers import AutoTokenizer

    out = exports("gguf-f16")
    assert sorted(p.name for p in out.iterdir()) == ["chat_template.jinja", "model.gguf", "tokenizer.json", "tokenizer_config.json"]
    r = _reader(out)
    meta = {k: _field(r, k) for k in (
        "general.architecture", "llama.context_length", "llama.embedding_length", "llama.block_count",
        "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
        "llama.rope.dimension_count", "llama.vocab_size", "general.file_type", "tokenizer.ggml.model",
        "tokenizer.ggml.pre", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token")}
    assert meta == {"general.architecture": "llama", "llama.context_length": 256, "llama.embedding_length": 64,
                    "llama.block_count": 4, "llama.feed_forward_length": 128, "llama.attention.head_count": 4,
                    "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": 400,
                    "general.file_type": 1, "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
                    "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                    "tokenizer.ggml.padding_token_id": 2, "tokenizer.ggml.add_bos_token": False}
    assert _field(r, "llama.rope.freq_base") == pytest.approx(10000.0)
    assert _field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert _field(r, "tokenizer.chat_template") == CHATML
    hf = AutoTokenizer.from_pretrained(llama)
    vocab = sorted(hf.get_vocab().items(), key=lambda kv: kv[1])
    assert _field(r, "tokenizer.ggml.tokens") == [t for t, _ in vocab]
    assert _field(r, "tokenizer.ggml.token_type")[:4] == [3, 3, 3, 1]  # the three specials are control tokens
    assert len(_field(r, "tokenizer.ggml.merges")) == len(json.loads((llama / "tokenizer.json").read_text())["model"]["merges"])

    tensors = {t.name: (tuple(int(x) for x in t.shape), t.tensor_type) for t in r.tensors}
    assert len(tensors) == 2 + 4 * 9 and "output.weight" not in tensors  # tied embeddings: llama.cpp reuses token_embd
    assert tensors["token_embd.weight"] == ((64, 400), Q.F16)
    assert tensors["output_norm.weight"] == ((64,), Q.F32)
    assert tensors["blk.3.attn_q.weight"] == ((64, 64), Q.F16)
    assert tensors["blk.3.attn_k.weight"] == ((64, 32), Q.F16)  # 2 KV heads of 16
    assert tensors["blk.0.ffn_down.weight"] == ((128, 64), Q.F16)
    assert tensors["blk.0.ffn_norm.weight"] == ((64,), Q.F32)


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("fmt, tol", [("gguf-f32", 0.0), ("gguf-f16", 2e-3), ("gguf-q8_0", 3e-2)])
def test_transformers_reads_the_export_back_to_the_source_logits(llama, exports, fmt, tol):
    """transformers' GGUF loader maps llama.cpp's names back and undoes the q/k permutation: the
    logits match the source exactly in f32 (names, shapes, permutation and metadata all right)."""
    import torch
    from transformers import AutoModelForCausalLM

    from slimtune.decoder.chat import prompt_ids
    from slimtune.decoder.lm import load_causal_lm

    out = exports(fmt)
    src, tok = load_causal_lm(llama)
    back = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    ids = prompt_ids(tok, QA[0][0]) + tok(QA[0][1])["input_ids"]
    a, b = _logits(src, ids), _logits(back, ids)
    assert np.abs(a - b).max() <= tol * np.abs(a).max()


def test_depth_pruned_model_has_fewer_blocks(depth_pruned, exports):
    import torch
    from transformers import AutoModelForCausalLM

    from slimtune.decoder.lm import load_causal_lm

    out = exports("gguf-f32", depth_pruned)
    r = _reader(out)
    assert _field(r, "llama.block_count") == 3
    assert not any(t.name.startswith("blk.3.") for t in r.tensors)
    src, _ = load_causal_lm(depth_pruned)
    back = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", dtype=torch.float32).eval()
    assert np.array_equal(_logits(src, [5, 6, 7, 8]), _logits(back, [5, 6, 7, 8]))


def test_per_layer_ffn_sizes_are_refused_in_one_line(llama, tmp_path):
    import torch

    from slimtune.decoder.gguf_export import write_gguf
    from slimtune.decoder.lm import load_causal_lm

    model, tok = load_causal_lm(llama)
    mlp = model.model.layers[1].mlp
    mlp.gate_proj, mlp.up_proj = torch.nn.Linear(64, 96, bias=False), torch.nn.Linear(64, 96, bias=False)
    mlp.down_proj = torch.nn.Linear(96, 64, bias=False)
    with pytest.raises(SlimtuneError, match=r"layers have different FFN sizes \(96, 128\); llama.cpp's llama architecture "
                                            r"needs one size for every layer$"):
        write_gguf(model, tok, llama, tmp_path / "x.gguf", "gguf-f16")


def test_non_byte_level_tokenizer_is_refused(llama, tmp_path):
    import shutil

    from slimtune.decoder.gguf_export import add_tokenizer

    folder = tmp_path / "tok"
    shutil.copytree(llama, folder)
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["pre_tokenizer"] = {"type": "Whitespace"}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(SlimtuneError, match=r"tokenizer.json: BPE with pre-tokenizer Whitespace is not a byte-level BPE"):
        add_tokenizer(None, build_tokenizer(), folder, 400)


def test_gguf_folder_and_file_are_generative_and_not_trainable(exports):
    from slimtune.decoder.lm import find_gguf, is_generative, load_causal_lm, resolve

    out = exports("gguf-f16")
    assert is_generative(out) and is_generative(out / "model.gguf")
    assert find_gguf(out) == out / "model.gguf" and resolve(out / "model.gguf") == out / "model.gguf"
    with pytest.raises(SlimtuneError, match=r"a GGUF export cannot be trained or exported further; start from an HF folder$"):
        load_causal_lm(out)


def test_without_llama_cpp_q4_k_m_and_running_name_the_extra(llama, exports, tmp_path, monkeypatch):
    from slimtune import api
    from slimtune.decoder import gguf_export
    from slimtune.recipe import parse

    monkeypatch.setattr(gguf_export, "has_llama_cpp", lambda: False)
    with pytest.raises(SlimtuneError, match=r"^export format gguf-q4_k_m needs llama.cpp's quantizer: pip install 'slimtune\[gguf\]'$"):
        api.check_export_target(llama, "gguf-q4_k_m", tmp_path / "q4")
    assert not (tmp_path / "q4").exists()
    # a recipe is read all the same: its run writes what it can and the row says why (tests/test_gguf_report.py)
    assert parse({"task": "generate", "data": {"name": "chatterbot_qa"}, "model": str(llama),
                  "stages": [{"name": "base", "method": "baseline"}], "export": ["gguf-q4_k_m"]}, "r.yaml").export == ["gguf-q4_k_m"]
    if gguf_export.importlib.util.find_spec("llama_cpp") is None:
        from slimtune.decoder.lm import load_decoder

        with pytest.raises(SlimtuneError, match=r"running a GGUF needs llama.cpp: pip install 'slimtune\[gguf\]'$"):
            load_decoder(exports("gguf-f16"))


# ---------------------------------------------------------------- llama.cpp as the runtime (slimtune[gguf])

def _greedy_and_perplexity(dec, tok, n: int = 32):
    from slimtune.decoder.chat import prompt_ids
    from slimtune.decoder.data import PairSet
    from slimtune.decoder.measure import response_perplexity

    greedy = {p: list(dec.stream(prompt_ids(tok, p), n)) for p, _ in QA}
    ppl = response_perplexity(dec, PairSet([p for p, _ in QA], [r for _, r in QA]), None)["perplexity"]
    return greedy, ppl


@pytest.fixture(scope="module")
def llama_cpp():
    """Requested first by the tests below, so they skip before their fixtures build anything."""
    return pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def source_run(llama):
    from slimtune.decoder.lm import load_decoder

    dec = load_decoder(llama)
    return _greedy_and_perplexity(dec, dec.tokenizer)


def test_llama_cpp_tokenizes_as_the_hf_tokenizer(llama_cpp, llama, exports):
    from slimtune.decoder.chat import encode_pair, prompt_text
    from slimtune.decoder.lm import load_decoder

    dec = load_decoder(exports("gguf-f16"))
    for p, r in QA:
        enc = encode_pair(dec.tokenizer, p, r, "You are brief.")
        text = prompt_text(dec.tokenizer, p, "You are brief.")
        assert dec.llm.tokenize(text.encode(), add_bos=False, special=True) == dec.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert dec.llm.tokenize(r.encode(), add_bos=False, special=True) == dec.tokenizer(r, add_special_tokens=False)["input_ids"]
        assert enc.input_ids[: len(dec.tokenizer(text)["input_ids"])] == dec.tokenizer(text)["input_ids"]


def test_f16_greedy_tokens_and_perplexity_match_the_source(llama_cpp, exports, source_run):
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import first_token_agreement

    dec = load_decoder(exports("gguf-f16"))
    assert dec.kind == "llama.cpp"
    greedy, ppl = _greedy_and_perplexity(dec, dec.tokenizer)
    parity = first_token_agreement(source_run[0], greedy, 32)
    assert parity["greedy_identical"] == len(QA), parity
    assert ppl == pytest.approx(source_run[1], rel=1e-2)


@pytest.mark.parametrize("fmt, rel, ftype", [("gguf-q8_0", 0.05, 7), ("gguf-q4_k_m", None, 15)])
def test_quantized_exports_run(llama_cpp, exports, source_run, fmt, rel, ftype):
    from slimtune.decoder.lm import load_decoder

    out = exports(fmt)
    assert _field(_reader(out), "general.file_type") == ftype  # written by llama.cpp's quantizer
    assert exports.facts[out]["gguf"] == {"file_type": {7: "MOSTLY_Q8_0", 15: "MOSTLY_Q4_K_M"}[ftype], "quantizer": "llama.cpp",
                                          "tokenizer_pre": "gpt-2", "blocks": 4, "tied_embeddings": True}
    assert (out / "model.gguf").stat().st_size < (exports("gguf-f16") / "model.gguf").stat().st_size
    dec = load_decoder(out)
    greedy, ppl = _greedy_and_perplexity(dec, dec.tokenizer, 8)
    assert all(1 <= len(ids) <= 8 for ids in greedy.values()) and np.isfinite(ppl)
    if rel is not None:
        assert ppl == pytest.approx(source_run[1], rel=rel)
    else:  # random tiny weights at 4 bits: sane, not close
        assert 0.5 * source_run[1] < ppl < 2 * source_run[1]


def test_depth_pruned_export_runs_like_its_source(llama_cpp, depth_pruned, exports):
    from slimtune.decoder.lm import load_decoder

    want = _greedy_and_perplexity(load_decoder(depth_pruned), build_tokenizer(), 16)
    dec = load_decoder(exports("gguf-f32", depth_pruned))
    got = _greedy_and_perplexity(dec, dec.tokenizer, 16)
    assert got[0] == want[0]
    assert got[1] == pytest.approx(want[1], rel=1e-3)


def test_slimtune_export_checks_a_gguf_against_its_source(llama_cpp, llama, tmp_path):
    from slimtune import api

    pairs = write_pairs(tmp_path / "qa.jsonl", n_copies=3)
    r = api.export(llama, "gguf-f16", tmp_path / "out", api.pair_config(str(pairs)))
    assert r["format"] == "gguf-f16" and r["gguf"]["quantizer"] is None
    assert r["parity"]["greedy_identical"] == r["parity"]["greedy_prompts"] == 8
    assert r["perplexity_ratio"] == pytest.approx(1.0, abs=1e-2)
