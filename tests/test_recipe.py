"""Recipe validation: every typo is a one-line error that names the key and the allowed ones."""

from __future__ import annotations

import pytest
import yaml

from slimtune.errors import SlimtuneError
from slimtune.recipe import load, parse

GOOD = {"data": {"name": "rotten_tomatoes"}, "model": "minilm-l6",
        "stages": [{"name": "ft", "method": "full", "epochs": 1}], "export": ["onnx"]}


def with_(**changes):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    raw.update(changes)
    return raw


def test_good_recipe_round_trips():
    r = parse(GOOD)
    assert r.stages[0].config.epochs == 1 and r.baseline_name == "ft"
    assert parse(r.to_dict()).to_dict() == r.to_dict()


@pytest.mark.parametrize(
    "raw, match",
    [
        (with_(model=["minilm-l6"]), r"model must be a packaged name \(minilm-l6, minilm-l3, multilingual-e5-small, smollm2-135m, gemma3-270m\) or a folder path"),
        (with_(stagez=[]), "unknown key 'stagez'; allowed: baseline, data, device, eval, export, minutes, model, stages, trainer"),
        (with_(data={"name": "rotten_tomatoes", "txt_column": "x"}), r"data: unknown key 'txt_column'; allowed: name, path, test_path, text_column"),
        (with_(stages=[{"name": "ft", "method": "full", "epoch": 1}]), r"stages\[0\] \(full\): unknown key 'epoch'; allowed: epochs, max_steps"),
        (with_(stages=[{"name": "ft", "method": "distil"}]), r"stages\[0\]: unknown method 'distil'; known: .*distill, full, head_only"),
        (with_(stages=[{"name": "ft", "method": "full", "epochs": "two"}]), r"stages\[0\] \(full\).epochs: expected float, got 'two'"),
        (with_(stages=[{"name": "ft", "method": "lora", "target_modules": "query"}]), r"target_modules: expected list\[str\]"),
        (with_(stages=[{"method": "full"}]), "each stage needs `name` and `method`"),
        (with_(stages=[{"name": "a", "method": "full"}, {"name": "a", "method": "full"}]), "must be unique"),
        (with_(export=["coreml"]), "export must be a list of formats from: hf, onnx, onnx-int8, tflite, tflite-int8"),
        (with_(eval={"runs": 5}), "eval: unknown key 'runs'"),
        (with_(baseline="nope"), "baseline 'nope' is not a stage name"),
        ({"data": {"name": "rotten_tomatoes"}}, "missing key 'model'"),
        ([1, 2], "a recipe is a mapping"),
    ],
)
def test_bad_recipes(raw, match):
    with pytest.raises(SlimtuneError, match=match) as err:
        parse(raw, "r.yaml")
    assert "\n" not in str(err.value)


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {name: rotten_tomatoes}\nmodel: [unclosed\n")
    with pytest.raises(SlimtuneError, match=r"r.yaml line \d+: invalid YAML"):
        load(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(SlimtuneError, match="recipe not found"):
        load(tmp_path / "nope.yaml")


def test_from_must_name_an_earlier_stage():
    raw = with_(stages=[{"name": "a", "method": "full"}, {"name": "b", "method": "full", "from": "c"}])
    with pytest.raises(SlimtuneError, match=r"stages\[1\]: from 'c' is not an earlier stage \(a\)"):
        parse(raw)
    raw["stages"][1]["from"] = "a"
    recipe = parse(raw, "my.yaml")
    assert recipe.stages[1].source == "a"
    assert recipe.source == "my.yaml"  # the recipe's own name is not overwritten by a stage's `from`
    raw["stages"][1]["from"] = "model"
    assert parse(raw).stages[1].source == "model"
