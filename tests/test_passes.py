"""The time max_minutes does not bound (measure/passes.py): per-stage seconds, the report section,
the start-of-run estimate and the recipe's `minutes:` budget."""

from __future__ import annotations

import json
import types

import pytest

from slimtune.errors import SlimtuneError
from slimtune.measure import passes
from slimtune.recipe import load, parse
from slimtune.tasks.classify import EvalConfig


def test_passes_add_up_by_kind(monkeypatch):
    clock = iter([0.0, 2.0, 10.0, 10.5, 20.0, 21.0])
    monkeypatch.setattr(passes.time, "perf_counter", lambda: next(clock))
    p = passes.Passes()
    for kind in ("teacher", "eval", "teacher"):
        with p.timed(kind):
            pass
    assert p.metrics() == {"teacher_seconds": 3.0, "eval_seconds": 0.5}


def test_stage_scales_follow_layers_and_ffn_of_the_chinese_recipe():
    r = load("recipes/chinese.yaml")
    # e5-small: hidden 384, FFN 1536: the FFN is 2/3 of a layer's multiplies
    rows, teachers = passes.stage_scales(r.stages, 12, 2 / 3)
    assert [s.name for s in r.stages] == ["trim", "finetune", "student", "slim", "compact"]
    assert rows == pytest.approx([1, 1, 1 / 3, 2 / 9, 2 / 9])
    assert teachers == pytest.approx([1, 1 / 3])  # distil from the 12 layers; recover from the unpruned 4
    assert r.minutes == 30


def test_estimate_golden_seconds():
    ev = EvalConfig(bench_texts=10, warmup=0, latency_runs=10, batch_size=10, isolate=False)
    # 25M parameters at 50 GFLOP/s: 1 ms per token
    est = passes.estimate(25_000_000, n_train=1000, n_test=110, tokens=10, eval_tokens=10, teachers=[1.0, 0.5],
                          rows=[1.0, 0.5], conversions=2, ev=ev, against=True)
    # teacher 1.5 * 1000 texts * 10 tokens; a row: (110 test + 90 throughput) * 10 tokens
    # + (10 + 0 + 2 * 10 alternated) batch-1 texts * 3 * 10 tokens = 2.9 s, for 1.5 rows; 2 exports * 20 s
    assert est == pytest.approx({"teacher": 15.0, "eval": 4.35, "export": 40.0})


def _config(tmp_path, **cfg):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_start_line_and_the_budget_warning(tmp_path):
    folder = _config(tmp_path, hidden_size=100, num_hidden_layers=2, intermediate_size=400)  # 2 * (40k + 80k) = 240k
    raw = {"data": {"path": "d.csv"}, "model": str(folder), "minutes": 1,
           "stages": [{"name": "ft", "method": "full", "max_minutes": 0.5, "max_length": 16},
                      {"name": "kd", "method": "distill", "student": "truncate", "layers": [0], "max_length": 16}],
           "export": ["onnx"]}
    recipe = parse(raw, "r.yaml")
    splits = types.SimpleNamespace(train=[0] * 400_000, test=[0] * 1000)
    profile = {"splits": {"train": {"tokens": {"p50": 10}}}}
    ev = EvalConfig(max_length=16, isolate=False)
    lines = passes.estimate_lines(recipe, recipe.stages, splits, profile, ev, folder)
    assert lines[0].startswith("time not bounded by max_minutes (an estimate): ~")
    assert "400000 training and 1000 test texts of ~10 tokens and 240,000 non-embedding parameters" in lines[0]
    assert lines[0].endswith("; stages kd have no max_minutes: their training is not counted")
    # teacher: 400k texts * 10 tokens * 2 * 240k / 50e9 = 38 s, + 20 s for the export: over the 1-minute budget
    assert "teacher logits ~38 s" in lines[0] and "1 exports/conversions ~20 s" in lines[0]
    assert lines[1].startswith("warning: r.yaml: minutes: 1 (the job's budget), but the stages' max_minutes (0.5)")
    roomy = parse(raw | {"minutes": 60}, "r.yaml")
    assert len(passes.estimate_lines(roomy, roomy.stages, splits, profile, ev, folder)) == 1
    assert passes.estimate_lines(recipe, recipe.stages, splits, profile, ev, _config(tmp_path / "x", model_type="?")) == []


@pytest.mark.parametrize("value", [0, -5, "30", True])
def test_minutes_must_be_a_positive_number(value):
    with pytest.raises(SlimtuneError, match=r"r.yaml: minutes \(the whole job's budget\) must be a number > 0"):
        parse({"data": {"path": "d.csv"}, "model": "minilm-l6", "stages": [], "minutes": value}, "r.yaml")


def test_report_section_time_in_seconds():
    report = {"stages": [
        {"name": "ft", "metrics": {"train_seconds": 100.0, "stage_seconds": 103.0, "eval_seconds": 20.0, "export_seconds": 1.0}},
        {"name": "kd", "metrics": {"train_seconds": 50.0, "teacher_seconds": 30.0, "stage_seconds": 85.0,
                                   "eval_seconds": 10.0, "export_seconds": 0.5}},
        {"name": "onnx", "metrics": {"export_seconds": 4.0, "eval_seconds": 6.0}},
        {"name": "old", "metrics": {"accuracy": 0.5}}],  # a row from before the times were recorded: left out
        "floor": {"name": "tfidf-floor", "metrics": {"eval_seconds": 2.0}}}
    lines = passes.markdown(report)
    assert lines[1].startswith("Time in seconds: `train` is the training loop, the only part a stage's max_minutes bounds")
    assert lines[3:] == [
        "| row | train | teacher | eval | export | other | total |", "|---|---|---|---|---|---|---|",
        "| ft | 100.0 | 0.0 | 20.0 | 1.0 | 3.0 | 124.0 |",
        "| kd | 50.0 | 30.0 | 10.0 | 0.5 | 5.0 | 95.5 |",
        "| onnx | – | – | 6.0 | 4.0 | – | 10.0 |",
        "| tfidf-floor | – | – | 2.0 | – | – | 2.0 |",
        "| **all** | 150.0 | 30.0 | 38.0 | 5.5 | 8.0 | 231.5 |"]
    assert passes.markdown({"stages": []}) == []
