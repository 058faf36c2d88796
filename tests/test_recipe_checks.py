"""Issue 25, items 4 and 8: a recipe is refused when it is read, in one line, when a key is given
twice (YAML would keep the last one) or a number cannot work: out of range for its key, or a
token length beyond the model's position table (which used to fail minutes into a stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_cli import assert_one_line_error

from slimtune import api
from slimtune.errors import SlimtuneError
from slimtune.model.folders import CONVERTED_POSITIONS, positions
from slimtune.recipe import load, parse
from slimtune.schema import load_yaml

BASE = {"data": {"name": "rotten_tomatoes"}, "model": "minilm-l6"}
GEN = {"task": "generate", "data": {"name": "chatterbot_qa"}}


def message(raw: dict, source: str = "r.yaml") -> str:
    with pytest.raises(SlimtuneError) as e:
        parse(raw, source)
    return str(e.value)


def config_folder(path: Path, **config) -> Path:
    """A folder holding only config.json: all the position check reads (no weights)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


# -- duplicate keys ---------------------------------------------------------------------------

DUP_STAGE = """\
data: {name: rotten_tomatoes}
model: minilm-l6
stages:
  - name: finetune
    method: full
    epochs: 1
    epochs: 2
"""
DUP_TOP = """\
data: {name: rotten_tomatoes}
model: minilm-l6
stages:
  - {name: a, method: full}

stages:
  - {name: b, method: head_only}
"""


@pytest.mark.parametrize("text, expected", [
    (DUP_STAGE, "line 7: duplicate key 'epochs' (first at line 6)"),
    (DUP_TOP, "line 6: duplicate key 'stages' (first at line 3)"),
    ("data: {name: rotten_tomatoes, name: tweets_sentiment}\nmodel: minilm-l6\n", "line 1: duplicate key 'name' (first at line 1)"),
    ("data:\n  name: rotten_tomatoes\nmodel: minilm-l6\neval: {warmup: 1}\nmodel: minilm-l3\n", "line 5: duplicate key 'model' (first at line 3)"),
], ids=["in-a-stage", "two-stages-blocks", "flow-mapping-one-line", "top-level"])
def test_a_key_given_twice_names_both_lines(text, expected, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(SlimtuneError) as e:
        load(path)
    assert str(e.value) == f"{path} {expected}"


def test_a_merge_key_override_is_not_a_duplicate_and_1e_4_is_a_number(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("base: &b {epochs: 1, learning_rate: 1e-4}\nstage:\n  <<: *b\n  epochs: 2\nlr: [1e-4, 5.0e-5, -2E+3, 1_0e1]\nname: 1e\n")
    assert load_yaml(path) == {"base": {"epochs": 1, "learning_rate": 1e-4}, "stage": {"epochs": 2, "learning_rate": 1e-4},
                               "lr": [1e-4, 5e-5, -2000.0, 100.0], "name": "1e"}


def test_a_recipe_in_another_encoding_is_one_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes("data: {path: critiques.csv}\n# r\u00e9sum\u00e9\n".encode("latin-1"))
    with pytest.raises(SlimtuneError) as e:
        load(path)
    assert str(e.value) == f"{path}: not UTF-8 text (byte 31)"


def test_learning_rate_written_1e_4_is_accepted(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data: {name: rotten_tomatoes}\nmodel: minilm-l6\nstages:\n  - {name: a, method: full, learning_rate: 1e-4}\n")
    assert load(path).stages[0].config.learning_rate == 1e-4


# -- numbers out of range, one table ----------------------------------------------------------

def stage(method: str, **fields) -> dict:
    return BASE | {"stages": [{"name": "s", "method": method, **fields}]}


BAD_NUMBERS = [
    (stage("full", epochs=-1, max_steps=10), "r.yaml: stages[0] (full): epochs must be > 0, not -1"),
    (stage("full", epochs=0), "r.yaml: stages[0] (full): training: batch_size >= 1, learning_rate > 0 and epochs or max_steps > 0 are required"),
    (stage("full", max_steps=0), "r.yaml: stages[0] (full): max_steps must be >= 1 (or -1: no step limit), not 0"),
    (stage("full", batch_size=0), "training: batch_size >= 1, learning_rate > 0"),
    (stage("full", learning_rate=0), "training: batch_size >= 1, learning_rate > 0"),
    (stage("full", learning_rate=float("nan")), "r.yaml: stages[0] (full).learning_rate: expected a finite number, got nan"),
    (stage("full", epochs=float("inf")), "r.yaml: stages[0] (full).epochs: expected a finite number, got inf"),
    (stage("full", batch_size=2.5), "r.yaml: stages[0] (full).batch_size: expected int, got 2.5"),
    (stage("full", max_length=64.0), "r.yaml: stages[0] (full).max_length: expected int | None, got 64.0"),
    (stage("full", warmup=1.0), "r.yaml: stages[0] (full): warmup must be a fraction of the steps in [0, 1), not 1.0"),
    (stage("full", max_length=1), "r.yaml: stages[0] (full): max_length must be >= 2 (room for [CLS] and [SEP]), not 1"),
    (stage("full", seed=-1), "r.yaml: stages[0] (full): seed must be >= 0, not -1"),
    (stage("full", optimizer="sgd", momentum=1.0), "r.yaml: stages[0] (full): momentum must be in [0, 1), not 1.0"),
    (stage("full", weight_decay=-0.1), "r.yaml: stages[0] (full): weight_decay must be >= 0, not -0.1"),
    (stage("lora", dropout=1.0), "r.yaml: stages[0] (lora): lora: dropout must be in [0, 1), not 1.0"),
    (stage("lora", alpha=0), "r.yaml: stages[0] (lora): lora: alpha must be > 0, not 0"),
    (stage("lora", r=0), "r.yaml: stages[0] (lora): lora: r must be >= 1"),
    (stage("prefix", encoder_hidden_size=0), "r.yaml: stages[0] (prefix): prefix: encoder_hidden_size must be >= 1, not 0"),
    (stage("ptuning", encoder_hidden_size=-4), "r.yaml: stages[0] (ptuning): ptuning: encoder_hidden_size must be >= 1, not -4"),
    (stage("distill", alpha=1.5), "r.yaml: stages[0] (distill): distill: alpha must be in [0, 1] and temperature > 0"),
    (stage("distill", layer_map=[0, 2]), "r.yaml: stages[0] (distill): distill: layer_map must be >= 1 (each), not [0, 2]"),
    (stage("distill", student="truncate", layers=[-1, 2]), "r.yaml: stages[0] (distill): distill: layers must be >= 0 (each), not [-1, 2]"),
    (stage("distill", student="shrink", num_layers=0), "r.yaml: stages[0] (distill): distill: num_layers must be >= 1, not 0"),
    (stage("distill", hidden_weight=-1.0), "r.yaml: stages[0] (distill): distill: hidden_weight must be >= 0, not -1.0"),
    (stage("distill", max_extra_texts=0), "r.yaml: stages[0] (distill): distill: max_extra_texts must be >= 1, not 0"),
    (stage("prune", sparsity=1.0), "r.yaml: stages[0] (prune): prune: sparsity must be in (0, 1), got 1.0"),
    (stage("prune_structured", ffn=1.0), "r.yaml: stages[0] (prune_structured): prune_structured: heads and ffn are fractions in [0, 1)"),
    (stage("prune_structured", heads=-0.5), "r.yaml: stages[0] (prune_structured): prune_structured: heads and ffn are fractions in [0, 1)"),
    (stage("prune_structured", drop_layers=[-1]), "r.yaml: stages[0] (prune_structured): prune_structured: drop_layers must be >= 0 (each), not [-1]"),
    (stage("share_layers", alpha=2.0), "r.yaml: stages[0] (share_layers): alpha must be in [0, 1] and temperature > 0"),
    (stage("onnx_compact", parity_texts=0), "r.yaml: stages[0] (onnx_compact): onnx_compact: parity_texts must be >= 1, not 0"),
    (stage("onnx_int8", seed=-3), "r.yaml: stages[0] (onnx_int8): onnx_int8: seed must be >= 0, not -3"),
    (BASE | {"data": {"name": "rotten_tomatoes", "test_size": 1.0}}, "r.yaml: data: data: test_size must be in (0, 1) and val_size in [0, 1)"),
    (BASE | {"data": {"name": "rotten_tomatoes", "val_size": -0.1}}, "r.yaml: data: data: test_size must be in (0, 1) and val_size in [0, 1)"),
    (BASE | {"data": {"name": "rotten_tomatoes", "max_train_samples": 0}}, "r.yaml: data: data: max_train_samples must be >= 1, not 0"),
    (BASE | {"data": {"name": "rotten_tomatoes", "seed": -1}}, "r.yaml: data: data: seed must be >= 0, not -1"),
    (BASE | {"eval": {"latency_runs": 0}}, "r.yaml: eval: latency_runs must be >= 1, not 0"),
    (BASE | {"eval": {"max_length": 1}}, "r.yaml: eval: max_length must be >= 2, not 1"),
    (GEN | {"model": "smollm2-135m", "stages": [{"name": "l", "method": "lora", "dropout": -0.1}]},
     "r.yaml: stages[0] (lora): lora: dropout must be in [0, 1), not -0.1"),
    (GEN | {"model": "smollm2-135m", "stages": [{"name": "p", "method": "prune_layers", "layers": -1, "drop_layers": [3]}]},
     "r.yaml: stages[0] (prune_layers): prune_layers: layers must be >= 0, not -1"),
    (GEN | {"model": "smollm2-135m", "stages": [{"name": "p", "method": "prune_width", "ffn": 1.0}]},
     "r.yaml: stages[0] (prune_width): prune_width: give ffn (a share in (0, 1)) and/or kv_groups (>= 1)"),
    (GEN | {"model": "smollm2-135m", "data": {"name": "chatterbot_qa", "seed": -2}}, "r.yaml: data: data: seed must be >= 0, not -2"),
    (GEN | {"model": "smollm2-135m", "eval": {"max_new_tokens": 0}}, "r.yaml: eval: max_new_tokens must be >= 1, not 0"),
]


@pytest.mark.parametrize("raw, expected", BAD_NUMBERS, ids=[e.split(": ", 2)[-1][:48] for _, e in BAD_NUMBERS])
def test_a_number_out_of_range_is_refused_when_the_recipe_is_read(raw, expected):
    got = message(raw)
    assert got == expected if expected.startswith("r.yaml") else expected in got, got


def test_numbers_in_range_pass():
    raw = BASE | {"stages": [
        {"name": "a", "method": "full", "epochs": 0.5, "max_steps": 3, "warmup": 0.0, "seed": 0, "max_length": 512},
        {"name": "b", "method": "lora", "dropout": 0.0, "alpha": 1},
        {"name": "c", "method": "prune_structured", "ffn": 0.0, "heads": 0.5, "drop_layers": [0]},
        {"name": "d", "method": "distill", "alpha": 1.0, "layer_map": [1, 3]}]}
    assert [s.name for s in parse(raw).stages] == ["a", "b", "c", "d"]


# -- token lengths against the model's position table -----------------------------------------

def test_stage_max_length_beyond_the_packaged_model():
    raw = BASE | {"stages": [{"name": "finetune", "method": "full", "max_length": 100000}]}
    assert message(raw, "recipe.yaml") == \
        "recipe.yaml: stages[0] (finetune) max_length 100000 is more than the model's 512 positions (minilm-l6)"


def test_eval_max_length_beyond_the_model(tmp_path):
    model = config_folder(tmp_path / "m", model_type="bert", max_position_embeddings=128)
    assert message({"data": BASE["data"], "model": str(model), "eval": {"max_length": 129}}) == \
        f"r.yaml: eval.max_length 129 is more than the model's 128 positions ({model})"
    assert parse({"data": BASE["data"], "model": str(model), "eval": {"max_length": 128}}).eval.max_length == 128


def test_a_distilled_student_bounds_its_stage_and_every_stage_after_it(tmp_path):
    small = config_folder(tmp_path / "small", model_type="bert", max_position_embeddings=128)
    distill = {"name": "student", "method": "distill", "student": str(small), "max_length": 256}
    assert message(BASE | {"stages": [distill]}) == \
        f"r.yaml: stages[0] (student) max_length 256 is more than the model's 128 positions ({small})"
    after = [distill | {"max_length": 64}, {"name": "more", "method": "full", "max_length": 300}]
    assert message(BASE | {"stages": after}) == \
        f"r.yaml: stages[1] (more) max_length 300 is more than the model's 128 positions ({small})"
    again = [after[0], after[1] | {"from": "model"}]  # `from: model` is minilm-l6 again: 512
    assert len(parse(BASE | {"stages": again}).stages) == 2
    assert message(BASE | {"stages": again, "eval": {"max_length": 200}}) == \
        f"r.yaml: eval.max_length 200 is more than the model's 128 positions ({small})"  # the student is measured too
    teacher = [{"name": "t", "method": "distill", "student": "truncate", "teacher": str(small), "max_length": 200}]
    assert message(BASE | {"stages": teacher}) == \
        f"r.yaml: stages[0] (t) max_length 200 is more than the model's 128 positions ({small})"
    truncate = [{"name": "t", "method": "distill", "student": "truncate", "max_length": 512}]
    assert len(parse(BASE | {"stages": truncate}).stages) == 1  # a truncated teacher keeps its positions


def test_decoder_lengths_beyond_the_model(tmp_path):
    llama = config_folder(tmp_path / "llama", model_type="llama", architectures=["LlamaForCausalLM"], max_position_embeddings=256)
    raw = GEN | {"model": str(llama), "stages": [{"name": "lora", "method": "lora", "max_length": 300}]}
    assert message(raw) == f"r.yaml: stages[0] (lora) max_length 300 is more than the model's 256 positions ({llama})"
    raw = GEN | {"model": str(llama), "eval": {"max_new_tokens": 1000}}
    assert message(raw) == f"r.yaml: eval.max_new_tokens 1000 is more than the model's 256 positions ({llama})"
    raw = GEN | {"model": str(llama), "eval": {"max_length": 257}}
    assert message(raw) == f"r.yaml: eval.max_length 257 is more than the model's 256 positions ({llama})"
    assert parse(GEN | {"model": str(llama), "eval": {"max_length": 256}}).eval.max_length == 256


def test_packaged_decoder_limit_without_converting_it():
    assert not (Path(__import__("os").environ["SLIMTUNE_CACHE"]) / "smollm2-135m").exists()  # conftest: a fresh cache
    raw = GEN | {"model": "smollm2-135m", "stages": [{"name": "full", "method": "full", "max_length": 10000}]}
    assert message(raw) == "r.yaml: stages[0] (full) max_length 10000 is more than the model's 8192 positions (smollm2-135m)"


def test_positions_from_config_json_only(tmp_path):
    assert positions("minilm-l6") == 512  # the packaged folder's config.json
    assert positions("minilm-l3") == 512 and positions("smollm2-135m") == 8192  # not converted: the table
    assert positions(config_folder(tmp_path / "gpt2", model_type="gpt2", n_positions=1024)) == 1024
    assert positions(config_folder(tmp_path / "rob", model_type="roberta", max_position_embeddings=514, pad_token_id=1)) == 512
    assert positions(config_folder(tmp_path / "floor", kind="tfidf")) is None  # no position table: not checked
    assert positions(tmp_path / "nowhere") is None  # loading it says so


def packaged_file(asset):
    from slimtune.model import assets

    try:
        return assets.locate(asset)
    except SlimtuneError as e:
        pytest.skip(str(e))


def test_the_table_holds_minilm_l3s_position_rows():
    """CONVERTED_POSITIONS holds what the shipped file says (read here, never at run time)."""
    onnx = pytest.importorskip("onnx")
    from slimtune.model import assets

    graph = onnx.load(str(packaged_file(assets.MINILM_L3_ONNX)), load_external_data=False).graph
    table = next(t for t in graph.initializer if t.name.endswith("embeddings.position_embeddings.weight"))
    assert CONVERTED_POSITIONS["minilm-l3"] == table.dims[0] == 512


@pytest.mark.slow  # the GGUF reader parses every tensor's header: ~10 s
def test_the_table_holds_smollm2s_context_length():
    gguf = pytest.importorskip("gguf")
    from slimtune.decoder.packaged import SMOLLM2

    field = gguf.GGUFReader(str(packaged_file(SMOLLM2))).fields["llama.context_length"]
    assert CONVERTED_POSITIONS["smollm2-135m"] == int(field.parts[field.data[0]][0]) == 8192


def test_command_line_max_length_against_the_model(tmp_path):
    model = config_folder(tmp_path / "m", model_type="bert", max_position_embeddings=128)
    with pytest.raises(SlimtuneError, match=rf"^max_length 129 is more than the model's 128 positions \({model}\)$"):
        api.max_length_for(model, 129)
    assert api.max_length_for(model, 128) == 128
    short = config_folder(tmp_path / "short", model_type="bert", max_position_embeddings=64)
    assert api.max_length_for(short, None) == 64  # the classifier default (128) cut to a short model's positions
    assert api.max_length_for("minilm-l6", None) == 128
    with pytest.raises(SlimtuneError, match="max_length 600 is more than the model's 512 positions"):
        api.predict("minilm-l6", ["a film"], max_length=600)  # refused before anything loads


# -- through the command, as a user runs it ---------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    (DUP_STAGE, "recipe.yaml line 7: duplicate key 'epochs' (first at line 6)"),
    (BASE | {"stages": [{"name": "finetune", "method": "full", "max_length": 100000}]},
     "recipe.yaml: stages[0] (finetune) max_length 100000 is more than the model's 512 positions (minilm-l6)"),
], ids=["duplicate-key", "max-length"])
def test_run_refuses_the_recipe_before_any_work(text, expected, tmp_path, slimtune_in_process):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text if isinstance(text, str) else yaml.safe_dump(text))
    assert_one_line_error(slimtune_in_process("run", recipe.name, "--out", "out", cwd=tmp_path), expected)
    assert not (tmp_path / "out").exists()  # nothing written


def test_predict_max_length_beyond_the_model_is_one_line(tiny_clf_dir, slimtune_in_process):
    assert_one_line_error(slimtune_in_process("predict", tiny_clf_dir, "a film", "--max-length", "4096"),
                          f"max_length 4096 is more than the model's 128 positions ({tiny_clf_dir})")
