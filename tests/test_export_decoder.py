"""`slimtune export` for a causal LM (issue 26: one export command, formats by the model's task):
hf, genai-fp32 and genai-int4 from a decoder folder, checked against the source; a format of the
other task is a one-line error naming the formats of the model's own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_llama import build_model_dir, write_pairs  # noqa: E402
from test_cli import assert_one_line_error  # noqa: E402

from slimtune.errors import SlimtuneError  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("llama-export") / "m")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("pairs-export") / "qa.jsonl", n_copies=3)


def test_formats_are_listed_by_the_models_task(llama, tiny_clf_dir, tmp_path):
    from slimtune import api
    from slimtune.tasks import formats_for, task_of

    assert task_of(llama) == "generate" and task_of(tiny_clf_dir) == "classify"
    assert formats_for("generate") == ["hf", "genai-fp32", "genai-int4", "gguf-f32", "gguf-f16", "gguf-q8_0", "gguf-q4_k_m"]
    assert formats_for("classify") == ["hf", "onnx", "onnx-int8", "tflite", "tflite-int8"]
    with pytest.raises(SlimtuneError, match=r"export format 'onnx-int8' is not one for causal LMs .*: hf, genai-fp32, genai-int4, gguf-f32, gguf-f16, gguf-q8_0, gguf-q4_k_m$"):
        api.check_export_target(llama, "onnx-int8", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fmt", ["hf", "genai-fp32"])
def test_lossless_decoder_exports_answer_as_their_source(llama, pairs, tmp_path, fmt):
    from slimtune import api

    out = tmp_path / fmt
    r = api.export(llama, fmt, out, api.pair_config(str(pairs)))
    assert r["format"] == fmt and json.loads((out / "metrics.json").read_text())["format"] == fmt
    assert r["parity"]["greedy_prompts"] == 8 and r["parity"]["greedy_identical"] == 8
    assert r["perplexity_ratio"] == pytest.approx(1.0, abs=1e-3 if fmt == "genai-fp32" else 1e-6)
    assert (out / ("genai_config.json" if fmt.startswith("genai") else "model.safetensors")).is_file()
    # a finished export of the same format may be replaced (like the classifier exports); a user's folder not
    api.check_export_target(llama, fmt, out)


def test_cli_exports_a_decoder_to_genai_int4_and_refuses_a_classifier(llama, pairs, tiny_clf_dir, tmp_path, slimtune_in_process):
    slimtune = slimtune_in_process
    proc = slimtune("export", llama, "--format", "genai-int4", "--out", tmp_path / "int4", "--data", pairs)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout)
    assert r["format"] == "genai-int4" and r["int4"]["block_size"] == 32 and r["parity"]["greedy_prompts"] == 8
    assert (tmp_path / "int4" / "genai_config.json").is_file()
    assert 0.5 < r["perplexity_ratio"] < 2.0  # random tiny weights: int4 moves them, but not wildly
    assert_one_line_error(slimtune("export", tiny_clf_dir, "--format", "genai-int4", "--out", tmp_path / "c"),
                          "export format 'genai-int4' is not one for classifiers")
    assert not (tmp_path / "c").exists()
