"""multitask: one backbone, a head per task, saved as one artifact."""

from __future__ import annotations

import pytest
import torch
from test_peft import FAST_EVAL, _run

from slimtune.errors import SlimtuneError


def test_multitask_one_artifact_with_a_head_per_task(tiny_base_dir, tiny_csv, tmp_path):
    """Two tasks (the tiny sentiment data, and a 3-label task from the same texts), one folder;
    --task picks the head; the primary task's folder is an ordinary classifier."""
    import csv

    from slimtune.cli import main  # noqa: F401  (the CLI path is exercised below)
    from slimtune.artifacts import load_model

    other = tmp_path / "topics.csv"
    rows = list(csv.reader(tiny_csv.open()))[1:]
    with other.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([(t, ["a", "b", "c"][i % 3]) for i, (t, _) in enumerate(rows)])
    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir), "eval": FAST_EVAL,
           "stages": [{"name": "mt", "method": "multitask", "primary": "sentiment", "max_steps": 3, "max_length": 32,
                       "tasks": {"topics": {"path": str(other)}}}]}
    report = _run(raw, tmp_path / "run")
    m = report["stages"][0]["metrics"]
    assert m["tasks"] == ["sentiment", "topics"] and set(m["task_metrics"]) == {"topics"}
    # trainable: the tiny model + a second pooler (1,056) and 3-way classifier (32*3+3)
    assert m["trainable_params"] == 999_138 + 1_056 + 99
    folder = tmp_path / "run/stages/01-mt"
    primary, _ = load_model(folder)
    topics, _ = load_model(folder, task="topics")
    assert primary.config.id2label == {0: "neg", 1: "pos"} and topics.config.id2label == {0: "a", 1: "b", 2: "c"}
    # shared backbone, different heads
    assert torch.equal(primary.bert.encoder.layer[0].attention.self.query.weight, topics.bert.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(primary.bert.pooler.dense.weight, topics.bert.pooler.dense.weight)
    with pytest.raises(SlimtuneError, match="no task 'nope'"):
        load_model(folder, task="nope")


def test_predict_task_through_the_cli(tmp_path, tiny_base_dir, tiny_csv):
    import subprocess
    import sys

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir), "eval": FAST_EVAL,
           "stages": [{"name": "mt", "method": "multitask", "max_steps": 1, "max_length": 32,
                       "tasks": {"again": {"path": str(tiny_csv)}}}]}
    _run(raw, tmp_path / "run")
    folder = str(tmp_path / "run/stages/01-mt")
    ok = subprocess.run([sys.executable, "-m", "slimtune.cli", "predict", folder, "a superb film", "--task", "again"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.split("\t")[0] in ("neg", "pos"), ok.stderr
    bad = subprocess.run([sys.executable, "-m", "slimtune.cli", "predict", folder, "x", "--task", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no task 'nope'" in bad.stderr
