"""Token lengths (slimtune/text.py): head+tail truncation, one default per task cut to the model's
positions, the data-derived length, and the same length for one model whichever command reads it.

The models here are config.json alone (all a length is decided from): nothing loads weights, so a
command is stopped at the moment it would load its predictor, and the length it asked for is read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from slimtune import api, tasks
from slimtune.data import Splits, TextSet
from slimtune.errors import SlimtuneError
from slimtune.schema import Stage
from slimtune.text import (MIN_LENGTH, encode, eval_length, fill_max_length, head_tail_ids, length_for,
                           suggested_length)


def config_folder(path: Path, **config) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def classifier(path: Path, positions: int, model_type: str = "bert", **config) -> Path:
    return config_folder(path, model_type=model_type, architectures=["BertForSequenceClassification"],
                         max_position_embeddings=positions, **config)


# ---- head + tail ----------------------------------------------------------------------------------

def test_head_tail_keeps_exactly_the_first_quarter_and_the_rest_from_the_end():
    ids = [101, *range(1, 21), 102]  # [CLS] 1..20 [SEP]: 22 tokens
    # 10 tokens: 8 of text, a quarter (2) from the start, 6 from the end; the specials stay at the ends
    assert head_tail_ids(ids, 10, 2) == [101, 1, 2, 15, 16, 17, 18, 19, 20, 102]
    assert head_tail_ids(ids, 22, 2) == ids  # fits: untouched
    # one special token (at the end): 5 of text, 1 from the start, 4 from the end
    assert head_tail_ids([*range(1, 13), 99], 6, 1) == [1, 9, 10, 11, 12, 99]


def test_head_tail_refuses_a_length_with_no_room_for_text():
    with pytest.raises(SlimtuneError, match="max_length 3 leaves no room for text with 2 special tokens"):
        head_tail_ids(list(range(10)), 3, 2)


def test_head_tail_on_a_real_tokenizer_keeps_the_ending(tokenizer):
    text = " ".join(f"w{i}" for i in range(40))
    full = tokenizer([text])["input_ids"][0]
    cut = encode(tokenizer, [text], 16, "head_tail")["input_ids"][0]
    assert len(cut) == 16 and cut[:4] == full[:4] and cut[4:] == full[-12:]  # [CLS] + 3 | last 11 + [SEP]


# ---- one default per task, cut to the model ----------------------------------------------------------

def test_one_default_per_task():
    assert tasks.get("classify").default_length == 128
    assert tasks.get("generate").default_length == 256
    assert length_for("classify", "no/such/folder") == 128  # positions unknown: the default as it is
    assert length_for(tasks.get("generate"), "no/such/folder") == 256


def test_the_default_is_cut_to_a_tiny_models_positions(tmp_path):
    assert length_for("classify", classifier(tmp_path / "bert64", 64)) == 64
    # RoBERTa numbers positions from pad_token_id + 1: 66 rows hold 64 tokens
    assert length_for("classify", classifier(tmp_path / "roberta", 66, "roberta", pad_token_id=1)) == 64
    assert length_for("classify", classifier(tmp_path / "bert512", 512)) == 128
    gpt2 = config_folder(tmp_path / "gpt2", model_type="gpt2", architectures=["GPT2LMHeadModel"], n_positions=100)
    assert length_for("generate", gpt2) == 100


def test_a_given_length_is_checked_not_cut(tmp_path):
    model = classifier(tmp_path / "m", 64)
    assert length_for("classify", model, 32) == 32 and length_for("classify", model, 64) == 64
    with pytest.raises(SlimtuneError, match=rf"^max_length 65 is more than the model's 64 positions \({model}\)$"):
        length_for("classify", model, 65)


def test_a_model_is_claimed_by_its_task(tmp_path):
    llama = config_folder(tmp_path / "llama", model_type="llama", architectures=["LlamaForCausalLM"], max_position_embeddings=96)
    clf = classifier(tmp_path / "clf", 64)
    assert tasks.for_model(llama).name == "generate" and tasks.for_model(llama).service == "openai"
    assert tasks.for_model("smollm2-135m").name == "generate"
    assert tasks.for_model(clf).name == "classify" and tasks.for_model(clf).service == "predict"
    assert api.max_length_for(llama) == 96 and api.max_length_for(clf) == 64  # each task's default, cut


# ---- the data-derived length ------------------------------------------------------------------------

def test_suggested_length_is_the_95th_percentile_capped_and_floored():
    lengths = list(range(1, 101))  # p95 (linear) 95.05 -> 96
    assert suggested_length(lengths, 512) == 96
    assert suggested_length(lengths, 64) == 64
    assert suggested_length(lengths, None) == 96
    assert suggested_length([3, 4, 5], 512) == MIN_LENGTH == 8
    assert suggested_length([], 512) is None


def test_a_stage_without_max_length_gets_the_datas_length(tokenizer):
    from slimtune.profile import profile_splits
    from slimtune.train.config import TrainConfig

    # texts of 1..100 words "a" (one token each) -> 3..102 tokens with [CLS] and [SEP]: p95 98
    texts = [" ".join(["a"] * n) for n in range(1, 101)]
    splits = Splits(TextSet(texts, [n % 2 for n in range(100)]), TextSet([], []), TextSet(["a a"], [0]), ["neg", "pos"], "t", {})
    profile = profile_splits(splits, tokenizer, limit=512)
    assert profile["suggested_max_length"] == 98
    logs = []
    filled = fill_max_length(Stage("ft", "full", TrainConfig()), profile, logs.append)
    assert filled.config.max_length == 98
    assert logs == ["stage ft: max_length not set; using 98 (95th percentile of training texts' tokens, capped at the model's 512)"]
    given = Stage("ft", "full", TrainConfig(max_length=40))
    assert fill_max_length(given, profile, logs.append) is given and len(logs) == 1
    assert profile_splits(splits, tokenizer, limit=64)["suggested_max_length"] == 64


def test_eval_length_is_the_default_or_the_longest_a_stage_trained_on(tmp_path):
    from slimtune.train.config import TrainConfig

    short, model = classifier(tmp_path / "short", 64), classifier(tmp_path / "m", 512)
    stages = [Stage("a", "full", TrainConfig(max_length=64)), Stage("b", "full", TrainConfig(max_length=200))]
    assert eval_length("classify", model, None, stages) == 200
    assert eval_length("classify", model, None, stages[:1]) == 128
    assert eval_length("classify", short, None, []) == 64
    assert eval_length("classify", model, 32, stages) == 32


# ---- every command reads one model with the same length -----------------------------------------------

class Asked(Exception):
    pass


def test_eval_bench_predict_and_serve_resolve_the_same_length(tmp_path, monkeypatch):
    from slimtune import service

    model = classifier(tmp_path / "clf", 64)
    asked = []

    def stop(path, max_length=None, *args, **kw):
        asked.append(max_length)
        raise Asked

    monkeypatch.setattr(api, "load_predictor", stop)
    monkeypatch.setattr(service, "load_predictor", stop)
    monkeypatch.setattr(api, "_eval_set", lambda data, split: (TextSet(["a"], [0]), ["neg", "pos"]))
    for command in (lambda: api.evaluate(model, None), lambda: api.bench(model, ["a"]),
                    lambda: api.predict(model, ["a"]), lambda: service.load(model, service.ServeConfig())):
        with pytest.raises(Asked):
            command()
    assert asked == [64, 64, 64, 64]  # the classifier default (128) cut to the model's 64 positions
    asked.clear()
    with pytest.raises(Asked):
        service.load(model, service.ServeConfig(max_length=32))
    assert asked == [32]


def test_predict_on_a_causal_lm_is_one_line_naming_generate(tmp_path, monkeypatch, capsys):
    from slimtune import cli

    llama = config_folder(tmp_path / "llama", model_type="llama", architectures=["LlamaForCausalLM"], max_position_embeddings=96)
    monkeypatch.setattr(sys, "argv", ["slimtune", "predict", str(llama), "hello"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert err == (f"slimtune: error: predict: {llama} is a causal LM, which answers prompts rather than labelling texts; "
                   f"use `slimtune generate {llama} PROMPT`")
