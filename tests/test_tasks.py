"""Task plug-ins (slimtune/tasks/): one recipe parser, one runner, one method registry for every task.

A third task, defined here as one class and made known by one `register` line, runs through
`slimtune.recipe.parse` and `slimtune.runner.run` like classify and generate: the proof that a
new task needs one module and one register line, and nothing in the shared code.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from slimtune import tasks
from slimtune.errors import SlimtuneError
from slimtune.recipe import parse
from slimtune.stage import METHODS, StageResult, register as register_method


# ---- the toy task: lines of text in, a tokenizer's token counts out --------------------------------

@dataclass
class LinesConfig:
    path: str  # a text file, one example per line; the last third is the test split


@dataclass
class CountEval:
    max_length: int = 16  # tokens counted per line, at most


@dataclass
class LineSplits:
    train: list[str]
    test: list[str]
    source: str
    digest: str

    @property
    def stats(self) -> dict:
        return {"train": len(self.train), "test": len(self.test)}


class Count(tasks.Task):
    name = "count"
    data_config = LinesConfig
    eval_config = CountEval
    formats = ()

    def load_splits(self, data):
        text = Path(data.path).read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if line.strip()]
        cut = len(lines) * 2 // 3
        return LineSplits(lines[:cut], lines[cut:], data.path, hashlib.sha256(text.encode()).hexdigest())

    def load_model(self, source, splits):
        from transformers import AutoModel, AutoTokenizer

        return AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source)

    def measure_stage(self, folder, splits, ev, log, device="cpu", against=None) -> dict:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(folder)
        counts = [len(tok(t, truncation=True, max_length=ev.max_length)["input_ids"]) for t in splits.test]
        return {"test_tokens": sum(counts), "longest": max(counts)}

    def markdown(self, report: dict) -> str:
        rows = [f"| {r['name']} | {r['metrics']['test_tokens']} |" for r in report["stages"]]
        return "\n".join(["# count", "", "| stage | test tokens |", "|---|---|", *rows]) + "\n"


@dataclass
class KeepConfig:
    seed: int = 42


def keep(model, tokenizer, cfg: KeepConfig, ctx):
    """Keep the model as it is."""
    return StageResult(model, tokenizer, {"kept": True})


@pytest.fixture
def count_task():
    tasks.names()  # the built-in tasks first, as a recipe would load them
    tasks.register(Count())
    register_method("keep", KeepConfig, task="count")(keep)
    yield
    del tasks.TASKS["count"], METHODS["count"]


def test_a_third_task_runs_through_the_one_parser_and_runner(count_task, tiny_base_dir, tmp_path):
    from slimtune.runner import run

    data = tmp_path / "lines.txt"
    data.write_text("a b\nc d e\nf\ng h i j\nk l\nm n o\n", encoding="utf-8")
    raw = {"task": "count", "data": {"path": str(data)}, "model": str(tiny_base_dir),
           "stages": [{"name": "same", "method": "keep"}], "eval": {"max_length": 4}}
    recipe = parse(raw, "r.yaml")
    assert recipe.task == "count" and recipe.eval == CountEval(max_length=4)
    assert recipe.to_dict() == {"task": "count", "data": {"path": str(data)}, "model": str(tiny_base_dir),
                                "stages": [{"name": "same", "method": "keep"}], "export": [], "eval": {"max_length": 4}}
    assert parse(recipe.to_dict(), "again.yaml").to_dict() == recipe.to_dict()  # recipe.yaml round-trips

    out = tmp_path / "run"
    report = run(recipe, out, log=lambda m: None)
    # test lines "k l", "m n o": [CLS] k l [SEP] = 4, [CLS] m n [SEP] = 4 (cut at max_length 4)
    row = report["stages"][0]
    assert row["metrics"]["test_tokens"] == 8 and row["metrics"]["longest"] == 4 and row["metrics"]["kept"] is True
    assert (out / "stages/01-same/model.safetensors").is_file()
    assert json.loads((out / "report.json").read_text())["data"] == {"source": str(data), "train": 4, "test": 2}
    assert (out / "report.md").read_text().startswith("# count\n\n| stage | test tokens |")
    logs = []
    run(recipe, out, log=logs.append)  # the one runner resumes any task's run folder
    assert "stage same: finished earlier, skipped" in logs


def test_a_task_only_sees_its_own_methods_and_keys(count_task, tiny_base_dir):
    raw = {"task": "count", "data": {"path": "x.txt"}, "model": str(tiny_base_dir)}
    with pytest.raises(SlimtuneError, match=r"^r.yaml: stages\[0\]: method 'full' is not a count method; known: keep$"):
        parse(raw | {"stages": [{"name": "f", "method": "full"}]}, "r.yaml")
    with pytest.raises(SlimtuneError, match=r"^r.yaml: device: a count recipe does not take it yet"):
        parse(raw | {"device": "cpu"}, "r.yaml")
    with pytest.raises(SlimtuneError, match=r"^r.yaml: export of a count recipe must be a list of formats from: $"):
        parse(raw | {"export": ["onnx"]}, "r.yaml")
    # same-named methods of two tasks coexist in the one registry
    assert METHODS["classify"]["lora"].config_cls is not METHODS["generate"]["lora"].config_cls


def test_an_unknown_task_is_one_line_naming_the_registered_ones(count_task):
    with pytest.raises(SlimtuneError) as e:
        parse({"task": "translate", "data": {}, "model": "m"}, "r.yaml")
    assert str(e.value) == "r.yaml: task must be classify (the default), count or generate, not 'translate'"


def test_an_unknown_task_from_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    from slimtune import cli

    recipe = tmp_path / "r.yaml"
    recipe.write_text("task: translate\ndata: {name: rotten_tomatoes}\nmodel: minilm-l6\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", ["slimtune", "run", str(recipe), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2
    assert err == f"slimtune: error: {recipe}: task must be classify (the default) or generate, not 'translate'"
    assert not (tmp_path / "o").exists()


def test_generate_takes_no_device_or_trainer_yet():
    with pytest.raises(SlimtuneError, match=r"^g.yaml: trainer: a generate recipe does not take it yet \(it trains on the CPU"):
        parse({"task": "generate", "data": {"name": "chatterbot_qa"}, "model": "smollm2-135m", "trainer": {"fp16": True}}, "g.yaml")


def test_fingerprints_are_those_of_before_the_one_parser():
    """recipe.to_dict (what fingerprints and recipe.yaml are made of) is unchanged for both tasks,
    so run folders made before are reused."""
    clf = parse({"data": {"name": "rotten_tomatoes"}, "model": "minilm-l6", "device": "cpu",
                 "stages": [{"name": "ft", "method": "full", "epochs": 2}], "trainer": {"gradient_accumulation_steps": 2}})
    assert clf.to_dict() == {"data": {"name": "rotten_tomatoes"}, "model": "minilm-l6",
                             "stages": [{"name": "ft", "method": "full", "epochs": 2}], "export": [], "eval": {},
                             "device": "cpu", "trainer": {"gradient_accumulation_steps": 2}}
    gen = parse({"task": "generate", "data": {"name": "chatterbot_qa"}, "model": "smollm2-135m",
                 "stages": [{"name": "b", "method": "baseline"}], "export": ["genai-int4"]})
    assert gen.to_dict() == {"task": "generate", "data": {"name": "chatterbot_qa"}, "model": "smollm2-135m",
                             "stages": [{"name": "b", "method": "baseline"}], "export": ["genai-int4"], "eval": {},
                             "int4": {"algo": "k_quant", "block_size": 32, "accuracy_level": 4, "grid": "keep"}}
    assert list(gen.to_dict()) == ["task", "data", "model", "stages", "export", "eval", "int4"]
