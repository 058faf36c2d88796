"""Issue 28 follow-ups: the generate report side by side across formats (GGUF rows measured by
llama.cpp, or one line saying why not), fallback tensor types read from the written GGUF, the
Gemma 3 GenAI export through a config copy of our own, and `slimtune serve`'s answer cap and
cancel-on-disconnect (a real server process, a raw socket that closes mid-stream; counters, no timing).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_llama import QA, build_model_dir, build_tokenizer, write_pairs  # noqa: E402

from slimtune.errors import SlimtuneError  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("gguf-report") / "m")


# ---------------------------------------------------------------- the report and the exports

def test_fallback_types_are_read_from_the_written_gguf(tmp_path):
    """A 2-D weight whose rows do not split into the format's blocks is named with the type it got."""
    import gguf

    from slimtune.decoder.gguf_export import tensor_types

    w = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")
    q = gguf.quants.quantize(np.ones((4, 64), np.float32), gguf.GGMLQuantizationType.Q8_0)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_q.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(f"blk.{i}.attn_k.weight", np.ones((4, 48), np.float16))  # 48: not a multiple of 32
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(64, np.float32))  # 1-D: not counted
    w.add_tensor("token_embd.weight", np.ones((8, 48), np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert tensor_types(tmp_path, "gguf-q8_0") == {
        "tensor_types": {"F16": 3, "Q8_0": 2},
        "fallback": "3 of 5 weights not Q8_0: F16: attn_k.weight (48 wide) x2, token_embd.weight (48 wide)"}
    assert tensor_types(tmp_path, "gguf-f16")["fallback"] == "2 of 5 weights not F16: Q8_0: attn_q.weight (64 wide) x2"


def test_report_puts_every_format_side_by_side_with_reasons():
    from slimtune.decoder.report import markdown

    def row(name, method, **m):
        return {"name": name, "method": method, "metrics": m}

    speed = {"speedup": 3.5, "rounds": 5, "ratio_min": 3.2, "ratio_max": 3.9, "noisy": False}
    common = dict(token_f1=0.5, exact_match=0.25, ttft_ms=10.0, prefill_tokens_per_s=900.0, peak_rss_mb=300.0)
    report = {"recipe": "r.yaml", "baseline": "untuned", "hardware": {"cpu": "x", "machine": "y", "cores_logical": 2,
              "torch_threads": 2, "torch": "t", "onnxruntime": "o", "transformers": "tr"},
              "eval": {"answer_prompts": 4, "speed_prompts": 2, "speed_new_tokens": 8},
              "data": {"source": "qa", "prompts": 9, "train": 6, "val": 0, "test": 3},
              "stages": [
                  row("untuned", "baseline", runtime="torch", size_bytes=8 << 20, perplexity=20.0, decode_tokens_per_s=30.0, **common),
                  row("lora", "lora", runtime="torch", size_bytes=8 << 20, perplexity=10.0, decode_tokens_per_s=30.0, **common),
                  row("gguf-q4_k_m", "export", runtime="llama.cpp", size_bytes=2 << 20, perplexity=10.5,
                      perplexity_vs_source=1.05, decode_tokens_per_s=105.0, decode_speedup=speed,
                      parity={"greedy_identical": 3, "greedy_prompts": 4, "greedy_tokens": 32, "greedy_common_prefix_mean": 20.0},
                      gguf={"file_type": "MOSTLY_Q4_K_M", "tensor_types": {"Q4_K": 5, "Q5_0": 2},
                            "fallback": "2 of 7 weights not Q4_K/Q6_K: Q5_0: attn_q.weight (576 wide) x2"}, **common),
                  row("gguf-f16", "export", runtime="llama.cpp", size_bytes=4 << 20,
                      not_measured="not measured: llama-cpp-python not installed — pip install 'slimtune[gguf]'"),
              ]}
    md = markdown(report)
    lines = md.splitlines()
    head = next(ln for ln in lines if ln.startswith("| artifact"))
    assert head == ("| artifact | method | runtime | size MiB | size ratio | perplexity | perplexity ratio | token F1 | exact | "
                    "TTFT ms | prefill tok/s | decode tok/s | peak RSS MiB | decode speed-up (alternated) | "
                    "parity (same first N greedy tokens) |")
    rows = {ln.split(" | ")[0][2:]: ln for ln in lines if ln.startswith("| ") and not ln.startswith("| artifact")}
    assert rows["untuned (baseline)"].startswith("| untuned (baseline) | baseline | torch | 8.0 |  | 20.000 |  | 0.5000 |")
    assert "| 1x (baseline) |" in rows["untuned (baseline)"]
    assert rows["lora"].startswith("| lora | lora | torch | 8.0 | 1.00x smaller | 10.000 | x0.500 |")
    assert "| lora |" in rows["lora"] and rows["lora"].count("|") == head.count("|")
    q4 = rows["gguf-q4_k_m"]
    assert q4.startswith("| gguf-q4_k_m | export | llama.cpp | 2.0 | 4.00x smaller | 10.500 | x1.050 (source) | 0.5000 | 0.2500 | "
                         "10.0 | 900 | 105.0 | 300 | 3.50x (5 alternated rounds, 3.20–3.90) | 3/4 prompts (N=32;")
    assert rows["gguf-f16"] == ("| gguf-f16 | export | llama.cpp | 4.0 | 2.00x smaller | not measured: llama-cpp-python not "
                                "installed — pip install 'slimtune[gguf]'" + " | " * 9 + " |")
    assert "- gguf-f16: not measured: llama-cpp-python not installed — pip install 'slimtune[gguf]'" in lines
    assert ("- gguf-q4_k_m (MOSTLY_Q4_K_M; Q4_K 5, Q5_0 2): 2 of 7 weights not Q4_K/Q6_K: Q5_0: attn_q.weight (576 wide) x2"
            in lines)


def test_generate_recipe_without_llama_cpp_writes_gguf_and_says_why_not_measured(llama, tmp_path, monkeypatch):
    """The shipped recipe's export list on a tiny Llama, llama.cpp hidden: the run finishes; q8_0 and f16 are
    written (gguf-py) with one reason each; q4_k_m (llama.cpp's quantizer) is not written, and says so."""
    import yaml

    from slimtune.decoder import gguf_export
    from slimtune.recipe import parse
    from slimtune.runner import run

    monkeypatch.setattr(gguf_export, "has_llama_cpp", lambda: False)
    shipped = yaml.safe_load((Path(__file__).parents[1] / "recipes/generate.yaml").read_text())
    assert shipped["export"] == ["genai-int4", "genai-fp32", "gguf-q4_k_m", "gguf-q8_0", "gguf-f16"]
    raw = {"task": "generate", "model": str(llama), "data": {"path": str(write_pairs(tmp_path / "qa.jsonl", n_copies=3))},
           "stages": [{"name": "base", "method": "baseline"}], "export": [f for f in shipped["export"] if f.startswith("gguf")],
           "eval": {"answer_prompts": 2, "max_new_tokens": 4, "parity_tokens": 4, "speed_prompts": 1, "speed_new_tokens": 3,
                    "samples": 0, "isolate": False}}
    with pytest.raises(SlimtuneError, match=r"^export format gguf-q4_k_m needs llama.cpp's quantizer"):
        from slimtune import api

        api.check_export_target(llama, "gguf-q4_k_m", tmp_path / "q4")  # `slimtune export` still refuses it up front
    report = run(parse(raw, "r.yaml"), tmp_path / "run", log=lambda m: None)
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    assert all(m[f].pop("export_seconds") >= 0 for f in raw["export"])  # every export row says how long it took
    assert m["gguf-q4_k_m"] == {"not_measured": "not written: llama.cpp's quantizer (llama-cpp-python) not installed — "
                                                "pip install 'slimtune[gguf]'", "runtime": "llama.cpp"}
    for fmt in ("gguf-q8_0", "gguf-f16"):
        assert m[fmt]["not_measured"] == "not measured: llama-cpp-python not installed — pip install 'slimtune[gguf]'"
        assert (tmp_path / "run/exports" / fmt / "model.gguf").is_file() and m[fmt]["size_bytes"] > 0
        assert "perplexity" not in m[fmt]
    assert m["gguf-f16"]["gguf"]["tensor_types"] == {"F16": 29} and m["gguf-f16"]["gguf"]["fallback"] is None
    assert m["gguf-q8_0"]["gguf"]["tensor_types"] == {"Q8_0": 29}
    md = (tmp_path / "run/report.md").read_text()
    assert "- gguf-f16: not measured: llama-cpp-python not installed — pip install 'slimtune[gguf]'" in md
    assert m["base"]["prefill_tokens_per_s"] > 0


def test_generate_recipe_with_llama_cpp_measures_gguf_rows_side_by_side(llama, tmp_path):
    """With slimtune[gguf]: every GGUF row measured like the torch rows, the speed-up alternated against the baseline."""
    pytest.importorskip("llama_cpp")
    from slimtune.recipe import parse
    from slimtune.runner import run

    raw = {"task": "generate", "model": str(llama), "data": {"path": str(write_pairs(tmp_path / "qa.jsonl", n_copies=3))},
           "stages": [{"name": "base", "method": "baseline"}], "export": ["gguf-q4_k_m", "gguf-f16"],
           "eval": {"answer_prompts": 2, "max_new_tokens": 4, "parity_tokens": 4, "speed_prompts": 1, "speed_new_tokens": 3,
                    "samples": 0, "isolate": False}}
    report = run(parse(raw, "r.yaml"), tmp_path / "run", log=lambda m: None)
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    for fmt in ("gguf-q4_k_m", "gguf-f16"):
        assert m[fmt]["runtime"] == "llama.cpp" and "not_measured" not in m[fmt]
        assert m[fmt]["prefill_tokens_per_s"] > 0 and m[fmt]["decode_tokens_per_s"] > 0 and m[fmt]["peak_rss_mb"] > 0
        assert m[fmt]["decode_speedup"]["against"] == "base" and m[fmt]["decode_speedup"]["rounds"] == 5
    assert m["gguf-f16"]["parity"]["greedy_identical"] == 2 and m["gguf-f16"]["perplexity_vs_source"] == pytest.approx(1, abs=0.01)
    # the tiny model's 64-wide rows do not split into k-quant blocks of 256: every 2-D weight fell back
    assert m["gguf-q4_k_m"]["gguf"]["fallback"].startswith("29 of 29 weights not Q4_K/Q6_K: ")
    assert "decode_speedup" not in m["base"]


# ---------------------------------------------------------------- Gemma 3 through GenAI

def test_gemma3_genai_export_reads_a_config_copy_and_matches_torch(tmp_path):
    """The builder reads a flattened copy of the config in a scratch folder (the model folder untouched); the
    export scores and answers as the torch model does, past the 64-token sliding window."""
    from _tiny_gemma3 import build_model_dir as build_gemma3

    from slimtune.decoder.export import write
    from slimtune.decoder.lm import load_decoder

    src = build_gemma3(tmp_path / "g3", layers=6)  # 5 sliding layers, then a global one
    before = {f.name: f.read_bytes() for f in src.iterdir()}
    write(src, "genai-fp32", tmp_path / "out", tmp_path / "cache", log=lambda m: None)
    assert {f.name: f.read_bytes() for f in src.iterdir()} == before
    a, b = load_decoder(src), load_decoder(tmp_path / "out")
    ids = [2] + np.random.default_rng(0).integers(4, 400, 100).tolist()
    assert np.abs(a.logprobs(ids) - b.logprobs(ids)).max() < 1e-4
    assert list(a.stream(ids[:10], 12, stop=False)) == list(b.stream(ids[:10], 12, stop=False))


def test_gemma3_with_scaled_rope_is_refused_in_one_line(tmp_path):
    from slimtune.decoder.genai import builder_input

    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}))
    with pytest.raises(SlimtuneError, match=r"config.json: Gemma 3 rope \['default', 'linear'\] \(full, sliding attention\): "
                                            r"the GenAI export takes plain \(default\) rope on both$"):
        with builder_input(folder):
            pass


# ---------------------------------------------------------------- serve: the cap and a client that leaves

@pytest.fixture(scope="module")
def long_llama(tmp_path_factory):
    """A tiny Llama with 4096 positions: an answer long enough that it is still being generated when its client leaves."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("long") / "llama"
    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False,
                      initializer_range=0.3)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _metric(text: str, name: str) -> float:
    return float(next(ln.split()[-1] for ln in text.splitlines() if ln.startswith(name + " ")))


def test_serve_caps_max_tokens_and_a_closed_stream_cancels_its_generation(long_llama):
    exe = shutil.which("slimtune", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "slimtune.cli"]
    proc = subprocess.Popen([*cmd, "serve", str(long_llama), "--port", "0", "--max-new-tokens", "4000"],
                            stderr=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.monotonic() + 600  # a bound for a hung start on a busy machine
        while "ready on" not in line and time.monotonic() < deadline and proc.poll() is None:
            line = proc.stderr.readline()
        assert "ready on http://127.0.0.1:" in line, line
        url = line.split("ready on ")[1].split()[0]
        ask = {"model": "llama", "messages": [{"role": "user", "content": "Tell me everything."}], "temperature": 0}

        over = httpx.post(url + "/v1/chat/completions", json=ask | {"max_tokens": 4001}, timeout=30)
        assert over.status_code == 400 and over.json() == {"error": {
            "message": "max_tokens=4001 is above this server's limit of 4000 tokens per answer (slimtune serve --max-new-tokens)",
            "type": "invalid_request_error", "param": "max_tokens", "code": None}}

        # a raw client: ask for a 4000-token stream, read until the first text arrives, then hang up
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps(ask | {"max_tokens": 4000, "stream": True}).encode()
        with socket.create_connection((host, int(port)), timeout=60) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            got = b""
            while b'"content": "' not in got.replace(b'"content": ""', b""):
                chunk = s.recv(4096)
                assert chunk, got
                got += chunk
        assert got.startswith(b"HTTP/1.1 200")

        # the next request is answered after the abandoned one stopped (one worker, requests in turn)
        r = httpx.post(url + "/v1/chat/completions", json=ask | {"max_tokens": 5}, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5
        metrics = httpx.get(url + "/metrics", timeout=30).text
        assert _metric(metrics, "slimtune_generations_cancelled") == 1
        made = _metric(metrics, "slimtune_generated_tokens")
        assert 5 < made < 4000 + 5  # the abandoned answer stopped early; had it run on, 4005 tokens
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_gguf_is_served_with_sampling(llama, tmp_path):
    """llama.cpp's decoder takes the sampling options serve passes (seeded: reproducible)."""
    pytest.importorskip("llama_cpp")
    from slimtune.decoder.export import write
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import Sampling

    write(llama, "gguf-f16", tmp_path / "f16", tmp_path / "cache", log=lambda m: None)
    dec = load_decoder(tmp_path / "f16")
    ids = dec.tokenizer(QA[0][0])["input_ids"]
    draw = [list(dec.stream(ids, 8, stop=False, sampling=Sampling(1.0, 0.9, 7))) for _ in range(2)]
    assert draw[0] == draw[1] and len(draw[0]) == 8
    assert list(dec.stream(ids, 8, stop=False, sampling=Sampling(0.0))) == list(dec.stream(ids, 8, stop=False))
