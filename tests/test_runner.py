"""The recipe runner on a tiny model: report shape, resume, interruption, changed recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from slimtune import runner
from slimtune.errors import SlimtuneError
from slimtune.methods import METHODS, Method
from slimtune.recipe import parse

REPO = Path(__file__).resolve().parents[1]
FAST_EVAL = {"latency_runs": 5, "warmup": 1, "bench_texts": 8, "max_length": 32, "isolate": False}


def tiny_recipe(model_dir, csv, **extra):
    return {
        "data": {"path": str(csv)},
        "model": str(model_dir),
        "stages": [
            {"name": "ft", "method": "full", "max_steps": 2, "max_length": 32},
            {"name": "head", "method": "head_only", "max_steps": 2, "max_length": 32},
        ],
        "export": ["onnx", "onnx-int8"],
        "eval": FAST_EVAL,
        **extra,
    }


def run(raw, out):
    logs = []
    report = runner.run(parse(raw), out, log=logs.append)
    return report, logs


@pytest.fixture(scope="module")
def finished(tiny_base_dir, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    raw = tiny_recipe(tiny_base_dir, tiny_csv)
    raw["eval"] = FAST_EVAL | {"isolate": True}  # the real path: each artifact in a fresh process
    report, logs = run(raw, out)
    return out, report, logs


def test_report_shape(finished):
    out, report, _ = finished
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["baseline"] == "ft"
    assert [s["name"] for s in on_disk["stages"]] == ["ft", "head", "onnx", "onnx-int8"]
    keys = {"accuracy", "f1_macro", "precision_macro", "recall_macro", "params", "size_bytes",
            "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "peak_rss_mb"}
    for s in on_disk["stages"]:
        assert keys <= set(s["metrics"]), s["name"]
        assert (out / s["artifact"]).is_dir()
        assert s["metrics"]["latency_runs"] == 5
        assert s["metrics"]["size_bytes"] > 0 and s["metrics"]["peak_rss_mb"] > 50
    onnx = on_disk["stages"][2]["metrics"]
    assert onnx["parity"]["max_abs_logit_diff"] < 1e-4 and onnx["parity"]["argmax_agreement"] == 1.0
    assert on_disk["stages"][0]["metrics"]["trainable_params"] == 999_138
    assert {"cpu", "isa", "torch_threads", "torch", "onnxruntime"} <= set(on_disk["hardware"])
    md = (out / "report.md").read_text()
    assert "| ft (baseline) | full |" in md and "speed-up" in md and "1.00x" in md
    for png in ("accuracy_vs_latency.png", "accuracy_vs_size.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not list(out.rglob(".tmp-*"))


def test_rerun_skips_finished_stages(finished, tiny_base_dir, tiny_csv):
    out, report, _ = finished
    mtime = (out / "stages/01-ft/model.safetensors").stat().st_mtime_ns
    raw = tiny_recipe(tiny_base_dir, tiny_csv)
    raw["eval"] = FAST_EVAL | {"isolate": True}
    again, logs = run(raw, out)
    assert sum("finished earlier, skipped" in m for m in logs) == 4
    assert (out / "stages/01-ft/model.safetensors").stat().st_mtime_ns == mtime
    assert again["stages"][0]["metrics"]["accuracy"] == report["stages"][0]["metrics"]["accuracy"]


def test_changed_recipe_is_not_silently_reused(finished, tiny_base_dir, tiny_csv):
    out, _, _ = finished
    raw = tiny_recipe(tiny_base_dir, tiny_csv)
    raw["eval"] = FAST_EVAL | {"isolate": True}
    raw["stages"][0]["learning_rate"] = 1e-3
    with pytest.raises(SlimtuneError, match="01-ft was made by a different recipe"):
        run(raw, out)


def test_interrupted_run_resumes_at_unfinished_stage(tiny_base_dir, tiny_csv, tmp_path, monkeypatch):
    calls = []
    real = METHODS["head_only"]

    def crash(*args, **kw):
        calls.append(1)
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the second stage

    monkeypatch.setitem(METHODS, "head_only", Method("head_only", real.config_cls, crash))
    raw = tiny_recipe(tiny_base_dir, tiny_csv)
    with pytest.raises(KeyboardInterrupt):
        run(raw, tmp_path)
    assert sorted(p.name for p in (tmp_path / "stages").iterdir()) == ["01-ft"]  # no half-written 02
    assert (tmp_path / "stages/01-ft/metrics.json").is_file()
    monkeypatch.setitem(METHODS, "head_only", real)
    report, logs = run(raw, tmp_path)
    assert "stage ft: finished earlier, skipped" in logs
    assert "stage head (head_only)" in logs
    assert [s["name"] for s in report["stages"]] == ["ft", "head", "onnx", "onnx-int8"]


def test_failing_stage_ends_with_one_line_and_resumes(tiny_base_dir, tiny_csv, tmp_path, monkeypatch, capsys):
    """A library error deep inside a stage: one line naming the stage, the cause and how to
    resume, exit 2; the finished stage is kept; `--debug` adds the traceback."""
    from slimtune import cli

    real = METHODS["head_only"]

    def boom(*args, **kw):
        raise RuntimeError("expected all tensors to be on the same device\nsecond line of torch's message")

    monkeypatch.setitem(METHODS, "head_only", Method("head_only", real.config_cls, boom))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_base_dir, tiny_csv)))
    out = tmp_path / "out"
    for debug in ([], ["--debug"]):
        monkeypatch.setattr("sys.argv", ["slimtune", *debug, "run", str(recipe), "--out", str(out)])
        with pytest.raises(SystemExit) as exit_:
            cli.main()
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.startswith("slimtune: error:")]
        assert lines == [f"slimtune: error: stage head (head_only) failed: RuntimeError: expected all tensors to be on "
                         f"the same device. Finished stages are kept in {out}; fix the cause and run the same command "
                         "to resume (--debug shows the traceback)"]
        assert ("Traceback" in err) == bool(debug)
        assert sorted(p.name for p in (out / "stages").iterdir()) == ["01-ft"]


def test_unknown_label_for_trained_model(finished, tmp_path):
    out, _, _ = finished
    csv = tmp_path / "three.csv"
    csv.write_text("text,label\n" + "".join(f"t {i},{'abc'[i % 3]}\n" for i in range(30)))
    raw = {"data": {"path": str(csv)}, "model": str(out / "stages/01-ft"), "stages": [{"name": "x", "method": "head_only", "max_steps": 1}]}
    with pytest.raises(SlimtuneError, match=r"trained for labels \['neg', 'pos'\], but the data has \['a', 'b', 'c'\]"):
        run(raw, tmp_path / "out")


def test_export_only_recipe_checks_parity_against_the_given_model(finished, tiny_csv, tmp_path):
    out, _, _ = finished
    raw = {"data": {"path": str(tiny_csv)}, "model": str(out / "stages/02-head"), "export": ["onnx"], "eval": FAST_EVAL}
    report, _ = run(raw, tmp_path)
    (row,) = report["stages"]
    assert row["metrics"]["parity"]["max_abs_logit_diff"] < 1e-4


def test_same_recipe_gives_the_same_model(tiny_base_dir, tiny_csv, tmp_path):
    """The new head is initialised under the stage's seed: two runs train identical weights."""
    from safetensors.torch import load_file

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir), "eval": FAST_EVAL,
           "stages": [{"name": "ft", "method": "head_only", "max_steps": 2, "max_length": 32}]}
    a, _ = run(raw, tmp_path / "a")
    b, _ = run(raw, tmp_path / "b")
    wa, wb = (load_file(tmp_path / r / "stages/01-ft/model.safetensors") for r in ("a", "b"))
    assert all(torch_equal(wa[k], wb[k]) for k in wa)
    assert a["stages"][0]["metrics"]["accuracy"] == b["stages"][0]["metrics"]["accuracy"]


def torch_equal(x, y):
    import torch

    return torch.equal(x, y)


def test_interrupted_training_resumes_from_its_checkpoint_only_for_the_same_recipe(tiny_base_dir, tiny_csv, tmp_path):
    from conftest import interrupted_at_first_checkpoint

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir), "eval": FAST_EVAL,
           "stages": [{"name": "ft", "method": "head_only", "max_steps": 4, "checkpoint_steps": 2, "max_length": 32}]}
    with interrupted_at_first_checkpoint():
        run(raw, tmp_path)
    (ckpt,) = (tmp_path / "checkpoints").iterdir()
    changed = yaml.safe_load(yaml.safe_dump(raw))
    changed["stages"][0]["learning_rate"] = 1e-2
    report, _ = run(changed, tmp_path)  # a different recipe: starts over, ignores the old checkpoint
    assert report["stages"][0]["metrics"]["resumed_from_step"] == 0
    assert ckpt.is_dir()  # the other recipe's checkpoint is left alone
    shutil_rm = __import__("shutil").rmtree
    shutil_rm(tmp_path / "stages")
    report, _ = run(raw, tmp_path)  # the original recipe continues from its step-2 checkpoint
    assert report["stages"][0]["metrics"]["resumed_from_step"] == 2
    assert report["stages"][0]["metrics"]["train_steps"] == 4
    assert not ckpt.exists()  # spent once the stage finished
