"""A decoder as a classifier (issue 14): a tiny Llama gets a last-token sequence-classification head
and goes through the architecture-neutral methods and the ONNX exports; BERT-only methods refuse."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_llama import build_model_dir  # noqa: E402

from slimtune import runner  # noqa: E402
from slimtune.errors import SlimtuneError  # noqa: E402
from slimtune.recipe import parse  # noqa: E402

REPO = Path(__file__).parents[1]
FAST_EVAL = {"latency_runs": 5, "warmup": 1, "bench_texts": 8, "max_length": 32, "isolate": False, "floor": False}


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("llama-cls") / "m")


def test_decoder_classify_recipe_on_a_tiny_llama(tiny_llama_dir, tiny_csv, tmp_path):
    """The shipped recipe with its model and data swapped for tiny ones, plus more neutral methods."""
    raw = yaml.safe_load((REPO / "recipes/decoder_classify.yaml").read_text())
    parse(raw, "decoder_classify.yaml")  # valid as shipped
    raw["model"] = str(tiny_llama_dir)
    raw["data"] = {"path": str(tiny_csv), "max_train_samples": 48, "max_test_samples": 24}
    short = {"max_steps": 2, "max_length": 32, "batch_size": 8}
    raw["stages"][0] |= short
    raw["stages"] += [{"name": "head", "method": "head_only", **short}, {"name": "last1", "method": "last_n", "layers": 1, **short},
                      {"name": "ia3", "method": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"],
                       "feedforward_modules": ["down_proj"], **short},
                      {"name": "bitfit", "method": "bitfit", **short},
                      {"name": "int8", "method": "weight_only", "codec": "int8"}]
    raw["export"] = ["onnx", "onnx-int8"]
    raw["eval"] = FAST_EVAL
    logs = []
    report = runner.run(parse(raw), tmp_path, log=logs.append)
    rows = {s["name"]: s["metrics"] for s in report["stages"]}
    # LoRA r=8 on q_proj (64->64: 8*64 + 64*8) and v_proj (64->32: 8*64 + 32*8) in 4 layers, plus the
    # last-token head `score` (64 x 2, no bias)
    assert rows["lora"]["trainable_params"] == 4 * (1024 + 768) + 128
    assert rows["head"]["trainable_params"] == 128
    assert rows["bitfit"]["trainable_params"] == 128  # Llama has no biases: the head alone
    assert rows["ia3"]["trainable_params"] == 4 * (32 + 32 + 128) + 128  # k, v outputs; down_proj input; head
    assert rows["onnx"]["parity"]["max_abs_logit_diff"] < 1e-4 and rows["onnx"]["parity"]["argmax_agreement"] == 1.0
    assert 0 <= rows["onnx-int8"]["accuracy"] <= 1
    import json

    cfg = json.loads((tmp_path / "stages/01-lora/config.json").read_text())
    assert cfg["architectures"] == ["LlamaForSequenceClassification"] and cfg["pad_token_id"] is not None


@pytest.mark.parametrize("stage, what", [
    ({"method": "prune_structured", "ffn": 0.5}, "structured pruning"),
    ({"method": "adapter"}, "adapters"),
    ({"method": "share_layers"}, "layer sharing"),
])
def test_bert_only_methods_refuse_a_decoder_in_one_line(tiny_llama_dir, tiny_csv, tmp_path, stage, what):
    raw = {"data": {"path": str(tiny_csv), "max_train_samples": 32, "max_test_samples": 16}, "model": str(tiny_llama_dir),
           "stages": [{"name": "p", "max_steps": 1} | stage], "eval": FAST_EVAL}
    with pytest.raises(SlimtuneError, match=rf"^stage p \({stage['method']}\): {what} supports BERT-family models "
                                            r"\(model_type bert\); this one is 'llama'$"):
        runner.run(parse(raw), tmp_path, log=lambda m: None)


def test_decoder_teacher_distils_into_a_bert_student(tiny_llama_dir, tiny_base_dir, tiny_csv, tmp_path):
    """A Llama classifier teaches a BERT student: each model tokenizes the texts itself (the teacher's
    cached logits are its own predictions through its byte-level BPE; the student trains on WordPiece)."""
    import numpy as np
    from safetensors.numpy import load_file

    from slimtune.artifacts import load_predictor
    from slimtune.data import DataConfig, load_splits
    from slimtune.measure.predictors import batched_logits

    short = {"max_steps": 2, "max_length": 32, "batch_size": 8}
    data = {"path": str(tiny_csv), "max_train_samples": 48, "max_test_samples": 24}
    raw = {"data": data, "model": str(tiny_llama_dir), "eval": FAST_EVAL,
           "stages": [{"name": "teacher", "method": "lora", "target_modules": ["q_proj", "v_proj"], **short},
                      {"name": "student", "method": "distill", "student": str(tiny_base_dir), "alpha": 0.0, **short}]}
    report = runner.run(parse(raw), tmp_path, log=lambda m: None)
    rows = {s["name"]: s["metrics"] for s in report["stages"]}
    import json

    cfg = json.loads((tmp_path / "stages/02-student/config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["id2label"] == {"0": "neg", "1": "pos"}
    assert rows["student"]["teacher_params"] == rows["teacher"]["params"]
    (cached,) = (tmp_path / "cache").glob("teacher-logits-*.safetensors")
    train = load_splits(DataConfig(**data)).train.texts
    want = batched_logits(load_predictor(tmp_path / "stages/01-teacher", 32), train, 64)
    assert np.abs(load_file(cached)["logits"] - want).max() < 1e-4
    student = load_predictor(tmp_path / "stages/02-student", 32)
    assert len(student.tokenizer) == 30522 and student.tokenizer("What a film")["input_ids"][0] == 101  # WordPiece [CLS]
