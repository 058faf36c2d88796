"""The TF-IDF floor: fitted on train, C on validation, saved without pickle, measured like any row."""

from __future__ import annotations

import json

from slimtune import runner
from slimtune.artifacts.floor import FLOOR_FILE, load_floor
from slimtune.recipe import parse

FAST_EVAL = {"latency_runs": 5, "warmup": 1, "bench_texts": 8, "max_length": 32, "isolate": False}


def test_floor_row_in_every_report(tiny_base_dir, tiny_csv, tmp_path):
    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir), "eval": FAST_EVAL,
           "stages": [{"name": "ft", "method": "head_only", "max_steps": 1, "max_length": 32}]}
    report = runner.run(parse(raw), tmp_path, log=lambda m: None)
    floor = report["floor"]
    m = floor["metrics"]
    assert floor["name"] == "tfidf-floor" and m["accuracy"] > 0.95  # one cue word decides each synthetic text
    assert m["val_accuracy"] > 0.95 and m["C"] in (1.0, 4.0, 16.0)
    assert {"latency_ms_p50", "size_bytes", "peak_rss_mb", "throughput_per_s"} <= set(m)
    assert m["size_bytes"] == (tmp_path / "floor" / FLOOR_FILE).stat().st_size
    md = (tmp_path / "report.md").read_text()
    assert "| tfidf-floor | tfidf-logreg |" in md
    assert "**The transformer does not beat the TF-IDF floor here**" in md  # 1 step of a random tiny model
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["floor"]["metrics"]["accuracy"] == m["accuracy"]
    # no pickle anywhere: safetensors + JSON, reloaded into the same predictions
    assert sorted(p.name for p in (tmp_path / "floor").iterdir()) == ["config.json", FLOOR_FILE, "metrics.json"]
    pred = load_floor(tmp_path / "floor")
    assert pred.logits(["a wonderful film", "an awful film"]).argmax(1).tolist() == [1, 0]  # labels neg, pos
    again = runner.run(parse(raw), tmp_path, log=(logs := []).append)
    assert any("floor (TF-IDF + logistic regression): measured earlier, reused" in l for l in logs)
    assert again["floor"]["metrics"]["latency_ms_p50"] == m["latency_ms_p50"]


def test_a_three_class_floor_reloads_exactly(tmp_path):
    # scikit-learn's multi-class coef_ is Fortran-ordered; written as-is, the reloaded floor was random
    import numpy as np

    from slimtune.artifacts.floor import load_floor, save
    from slimtune.data import DataConfig, load_splits
    from slimtune.measure.floor import fit_floor

    rows = [("great fun movie", "pos"), ("dull boring film", "neg"), ("a film about a movie", "neutral")] * 40
    csv = tmp_path / "three.csv"
    csv.write_text("text,label\n" + "\n".join(f"{t} {i},{lab}" for i, (t, lab) in enumerate(rows)) + "\n")
    splits = load_splits(DataConfig(path=str(csv)))
    vec, clf, info = fit_floor(splits)
    assert clf.coef_.shape == (3, len(vec.vocabulary_))
    (tmp_path / "floor").mkdir()
    save(tmp_path / "floor", (vec, clf), None, splits.label_names, info)
    texts = splits.test.texts
    expected = clf.decision_function(vec.transform(texts))
    np.testing.assert_allclose(load_floor(tmp_path / "floor").logits(texts), expected, rtol=1e-5, atol=1e-5)
