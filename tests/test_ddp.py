"""Several processes, one run: real 2-process DDP (gloo over loopback) through `slimtune run --nproc 2`.

The golden check: a recipe's `batch_size` is the global batch, so two processes must train the
same model as one process. With dropout off the only difference left is the order of float
additions in the gradient all-reduce. Plain SGD keeps the check sharp (Adam divides by the
gradient's own scale and would hide a gradient off by a constant factor, such as the N x that the
Trainer applies to a classifier's loss under DDP unless told the loss is a mean: train/loop.py does).
Measured: 1.5e-8 between 1 and 2 processes; a different batch order moves weights by ~0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slimtune import runner
from slimtune.errors import SlimtuneError
from slimtune.recipe import parse

FAST_EVAL = {"latency_runs": 3, "warmup": 1, "bench_texts": 8, "max_length": 32, "isolate": False, "floor": False}
TOLERANCE = 1e-6  # max |Δweight| between the 2-process and the 1-process model (~70x the measured 1.5e-8)


@pytest.fixture(scope="module")
def base_no_dropout(tmp_path_factory, tokenizer):
    """A tiny random encoder without dropout: one process and two then follow the same arithmetic."""
    import torch
    from transformers import BertModel

    from conftest import tiny_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ddp") / "base"
    BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def recipe(base, csv, **extra) -> dict:
    return {
        "data": {"path": str(csv)},
        "model": str(base),
        "stages": [
            {"name": "ft", "method": "full", "max_steps": 6, "batch_size": 8, "max_length": 32, "warmup": 0.0,
             "optimizer": "sgd", "learning_rate": 0.1},
            {"name": "student", "method": "distill", "student": "truncate", "layers": [0], "alpha": 0.5,
             "max_steps": 4, "batch_size": 8, "max_length": 32, "warmup": 0.0, "optimizer": "sgd", "learning_rate": 0.1},
        ],
        "eval": FAST_EVAL,
        **extra,
    }


def slimtune(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slimtune.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=cwd, timeout=600)


def files(folder: Path) -> set[str]:
    """Relative paths; a teacher-logits cache is named by the teacher's weights, which differ in the
    last float bits between the runs: compare its kind, not its hash."""
    return {("cache/teacher-logits-*" if p.parent.name == "cache" else str(p.relative_to(folder))) for p in folder.rglob("*")}


def cli_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`slimtune ARGS` in this process (no interpreter start-up): exit code and stderr."""
    from slimtune import cli

    monkeypatch.setattr("sys.argv", ["slimtune", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(base_no_dropout, tiny_csv, tmp_path_factory):
    """The same recipe as 2 processes (CLI, --nproc 2) and as 1 process (in-process)."""
    root = tmp_path_factory.mktemp("runs")
    path = root / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(base_no_dropout, tiny_csv)))
    two = slimtune("run", path, "--out", root / "two", "--nproc", "2", "--json")
    assert two.returncode == 0, two.stderr[-3000:]
    logs: list[str] = []
    one = runner.run(parse(recipe(base_no_dropout, tiny_csv)), root / "one", log=logs.append)
    return root, json.loads(two.stdout), two.stderr, one


def max_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert x.keys() == y.keys()
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def test_two_processes_train_the_model_one_process_trains(runs):
    root, two, _, one = runs
    for stage in ("01-ft", "02-student"):
        diff = max_diff(root / "one" / "stages" / stage, root / "two" / "stages" / stage)
        assert diff < TOLERANCE, f"{stage}: 2 processes differ from 1 by {diff:.2e}"
    assert two["stages"][1]["metrics"]["accuracy"] == one["stages"][1]["metrics"]["accuracy"]


@pytest.mark.slow
def test_the_equivalence_check_can_fail(runs, base_no_dropout, tiny_csv, tmp_path):
    """Other batches (random order instead of length-grouped) land far outside the tolerance."""
    root = runs[0]
    raw = recipe(base_no_dropout, tiny_csv)
    raw["stages"] = [raw["stages"][0] | {"group_by_length": False}]
    runner.run(parse(raw), tmp_path, log=lambda m: None)
    assert max_diff(root / "one" / "stages" / "01-ft", tmp_path / "stages" / "01-ft") > 1000 * TOLERANCE


def test_report_records_world_size_and_global_batch(runs):
    _, two, _, one = runs
    assert two["compute"] == {"device": "cpu", "world_size": 2, "effective_batch_size": {"ft": 8, "student": 8}}
    assert one["compute"]["world_size"] == 1
    m2, m1 = two["stages"][0]["metrics"], one["stages"][0]["metrics"]
    assert (m2["world_size"], m2["per_process_batch_size"], m2["distributed_type"]) == (2, 4, "MULTI_CPU")
    assert (m1["world_size"], m1["per_process_batch_size"]) == (1, 8)
    assert one["compute"]["device"] == ("cuda" if one["hardware"]["gpu"] else "cpu")  # device: auto
    assert m2["train_steps"] == m1["train_steps"] == 6
    root = runs[0]
    assert "Training: 2 process(es) on cpu; global batch per stage: ft 8, student 8." in (root / "two" / "report.md").read_text()


def test_only_rank_zero_writes(runs):
    """Same files as a one-process run (no per-rank folders, no duplicate temp folders), one
    teacher-logits cache file, computed once; rank 1 printed nothing of its own."""
    root, _, stderr, _ = runs
    assert files(root / "two") == files(root / "one")
    assert len(list((root / "two" / "cache").glob("teacher-logits-*.safetensors"))) == 1
    assert stderr.count("teacher logits: computing") == 1
    assert "rank 1" not in stderr
    assert stderr.count("stage ft (full)") == 1


def test_global_batch_must_split_across_processes(base_no_dropout, tiny_csv, tmp_path, monkeypatch, capsys):
    raw = recipe(base_no_dropout, tiny_csv)
    raw["stages"][0]["batch_size"] = 7
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, err = cli_main(monkeypatch, capsys, "run", path, "--out", tmp_path / "o", "--nproc", "2")
    assert code == 2
    assert err.strip().splitlines() == [
        f"slimtune: error: {path}: stages ft: batch_size 7 does not split across 2 processes; use a multiple of 2 "
        "(it is the global batch, divided among the processes)"]
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def accumulated(base_no_dropout, tiny_csv, tmp_path_factory):
    raw = recipe(base_no_dropout, tiny_csv, trainer={"gradient_accumulation_steps": 2})
    raw["stages"] = raw["stages"][:1]
    out = tmp_path_factory.mktemp("acc")
    return out, runner.run(parse(raw), out, log=lambda m: None)


def test_trainer_option_reaches_the_trainer(accumulated):
    """`trainer:` extras go into every stage's TrainingArguments; the report records the effective batch."""
    metrics = accumulated[1]["stages"][0]["metrics"]
    assert metrics["effective_batch_size"] == 16 and metrics["train_steps"] == 6
    assert yaml.safe_load((accumulated[0] / "recipe.yaml").read_text())["trainer"] == {"gradient_accumulation_steps": 2}


@pytest.mark.slow
def test_accumulated_batches_train_like_one_big_batch(accumulated, base_no_dropout, tiny_csv, tmp_path):
    """2 accumulated batches of 8 train the model one batch of 16 trains: the Trainer divides the
    mean loss by the accumulation steps (only once told the loss is a mean: train/loop.py)."""
    whole = recipe(base_no_dropout, tiny_csv)
    whole["stages"] = [whole["stages"][0] | {"batch_size": 16}]
    runner.run(parse(whole), tmp_path / "whole", log=lambda m: None)
    assert max_diff(accumulated[0] / "stages" / "01-ft", tmp_path / "whole" / "stages" / "01-ft") < TOLERANCE


def test_trainer_option_errors_name_the_key(base_no_dropout, tiny_csv):
    with pytest.raises(SlimtuneError, match=r"r.yaml: trainer: unknown key 'fsdpp'; expected a transformers TrainingArguments field"):
        parse(recipe(base_no_dropout, tiny_csv, trainer={"fsdpp": "full_shard"}), "r.yaml")
    with pytest.raises(SlimtuneError, match=r"r.yaml: trainer.learning_rate: set from each stage's fields"):
        parse(recipe(base_no_dropout, tiny_csv, trainer={"learning_rate": 1.0}), "r.yaml")


def test_fsdp_and_deepspeed_settings_reach_training_arguments():
    """Sharded training is configuration: the recipe's `trainer:` block is what TrainingArguments gets."""
    from slimtune.compute import Compute

    kw = Compute("cpu", {"fsdp": "full_shard auto_wrap", "fsdp_config": {"transformer_layer_cls_to_wrap": ["BertLayer"]},
                         "deepspeed": "ds.json"}).training_arguments(8)
    assert kw["fsdp"] == "full_shard auto_wrap" and kw["deepspeed"] == "ds.json" and kw["use_cpu"] is True


@pytest.mark.slow
def test_resume_under_two_processes(base_no_dropout, tiny_csv, tmp_path):
    """A checkpoint left by an interrupted run is resumed by a 2-process run of the same recipe."""
    from conftest import interrupted_at_first_checkpoint

    raw = recipe(base_no_dropout, tiny_csv)
    raw["stages"] = [raw["stages"][0] | {"max_steps": 4, "checkpoint_steps": 2}]
    with interrupted_at_first_checkpoint():
        runner.run(parse(raw), tmp_path / "o", log=lambda m: None)
    assert list((tmp_path / "o" / "checkpoints").iterdir())
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = slimtune("run", path, "--out", tmp_path / "o", "--nproc", "2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout)["stages"][0]["metrics"]
    assert (m["resumed_from_step"], m["train_steps"], m["world_size"]) == (2, 4, 2)
    assert not list((tmp_path / "o" / "checkpoints").iterdir())  # spent


@pytest.mark.slow
def test_time_budget_stops_every_rank_at_the_same_step(base_no_dropout, tiny_csv, tmp_path):
    """`max_minutes` is decided together: a rank whose clock ran out alone would leave the other
    waiting in the next all-reduce."""
    raw = recipe(base_no_dropout, tiny_csv)
    raw["stages"] = [raw["stages"][0] | {"max_steps": 1000, "max_minutes": 0.0005}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    r = slimtune("run", path, "--out", tmp_path / "o", "--nproc", "2", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    assert 1 <= json.loads(r.stdout)["stages"][0]["metrics"]["train_steps"] < 1000
