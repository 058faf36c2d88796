"""multitask: one backbone, a head per task, saved as one artifact."""

from __future__ import annotations

import pytest
import torch
from test_peft import FAST_EVAL, _run

from slimtune.errors import SlimtuneError


@pytest.fixture(scope="module")
def multitask_run(tmp_path_factory, tiny_base_dir, tiny_csv):
    """One run for the module: two tasks (the tiny sentiment data, and a 3-label task from the same
    texts) trained into one folder; returns (report, the stage's folder)."""
    import csv

    root = tmp_path_factory.mktemp("multitask")
    other = root / "topics.csv"
    rows = list(csv.reader(tiny_csv.open()))[1:]
    with other.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([(t, ["a", "b", "c"][i % 3]) for i, (t, _) in enumerate(rows)])
    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir), "eval": FAST_EVAL,
           "stages": [{"name": "mt", "method": "multitask", "primary": "sentiment", "max_steps": 3, "max_length": 32,
                       "tasks": {"topics": {"path": str(other)}}}]}
    report = _run(raw, root / "run")
    return report, root / "run/stages/01-mt"


def test_multitask_one_artifact_with_a_head_per_task(multitask_run):
    """--task picks the head; the primary task's folder is an ordinary classifier."""
    from slimtune.artifacts import load_model

    report, folder = multitask_run
    m = report["stages"][0]["metrics"]
    assert m["tasks"] == ["sentiment", "topics"] and set(m["task_metrics"]) == {"topics"}
    # trainable: the tiny model + a second pooler (1,056) and 3-way classifier (32*3+3)
    assert m["trainable_params"] == 999_138 + 1_056 + 99
    primary, _ = load_model(folder)
    topics, _ = load_model(folder, task="topics")
    assert primary.config.id2label == {0: "neg", 1: "pos"} and topics.config.id2label == {0: "a", 1: "b", 2: "c"}
    # shared backbone, different heads
    assert torch.equal(primary.bert.encoder.layer[0].attention.self.query.weight, topics.bert.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(primary.bert.pooler.dense.weight, topics.bert.pooler.dense.weight)
    with pytest.raises(SlimtuneError, match="no task 'nope'"):
        load_model(folder, task="nope")


def test_predict_task_through_the_cli(multitask_run, slimtune_in_process):
    _, folder = multitask_run
    primary = slimtune_in_process("predict", folder, "a superb film")
    assert primary.returncode == 0 and primary.stdout.split("\t")[0] in ("neg", "pos"), primary.stderr
    ok = slimtune_in_process("predict", folder, "a superb film", "--task", "topics")
    assert ok.returncode == 0 and ok.stdout.split("\t")[0] in ("a", "b", "c"), ok.stderr
    bad = slimtune_in_process("predict", folder, "x", "--task", "nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no task 'nope'" in bad.stderr
