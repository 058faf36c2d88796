"""Benchmark numbers: repeat counts recorded, a fresh process does not inherit the parent's peak memory."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.measure.bench import artifact_size, benchmark, benchmark_in_subprocess, hardware, peak_rss_mb
from slimtune.artifacts import load_model
from slimtune.measure.predictors import Predictor, TorchPredictor
from tests.conftest import synthetic_rows

TEXTS = [t for t, _ in synthetic_rows(20)]


def test_benchmark_counts_and_percentiles(tiny_clf_dir):
    model, tok = load_model(tiny_clf_dir)
    r = benchmark(TorchPredictor(model, tok, 32), TEXTS, runs=50, warmup=2, batch_size=8, throughput_batches=2)
    assert r["latency_runs"] == 50 and r["throughput_texts"] == 16 and r["params"] == 999_138
    assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"]


def test_subprocess_peak_memory_is_its_own(tiny_clf_dir):
    ballast = np.ones(700 * 2**20 // 8)  # make this process's peak at least 700 MiB larger
    assert peak_rss_mb() > 700
    r = benchmark_in_subprocess(tiny_clf_dir, TEXTS, max_length=32, runs=5, warmup=1, batch_size=8)
    assert r["peak_rss_mb"] < peak_rss_mb() - 500, (r["peak_rss_mb"], peak_rss_mb())
    del ballast


def test_artifact_size_counts_weight_files_only(tiny_clf_dir):
    assert artifact_size(tiny_clf_dir) == (tiny_clf_dir / "model.safetensors").stat().st_size


def test_hardware_fingerprint():
    hw = hardware()
    assert {"avx2", "avx512_vnni", "amx_int8"} <= set(hw["isa"]) and hw["torch_threads"] >= 1


class _Spiky(Predictor):
    """A predictor that takes a steady 5 ms a call, and 50 ms every third call while busy: what a
    shared CPU looks like. The milliseconds pass on a clock of its own (`now`, which the benchmark
    reads through the `clock` fixture), not on the machine's: a busy CI machine's scheduling cannot
    change what this test sees."""

    label_names = ["neg", "pos"]

    def __init__(self, busy_attempts: int, quiet_s: float = 0.005):
        self.calls, self.busy_calls, self.quiet_s, self.now = 0, busy_attempts, quiet_s, 0.0

    def logits(self, texts):
        self.calls += 1
        busy = self.calls <= self.busy_calls
        self.now += 0.05 if busy and self.calls % 3 == 0 else 0.005 if busy else self.quiet_s
        return np.zeros((len(texts), 2), dtype=np.float32)

    def num_params(self):
        return 1


def _on_its_clock(monkeypatch, pred: _Spiky) -> _Spiky:
    """The benchmark's timer reads `pred`'s clock."""
    import types

    from slimtune.measure import bench

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: pred.now))
    return pred


def test_a_noisy_measurement_is_repeated_and_labelled(monkeypatch):
    # busy for the first attempt only (1 warm-up + 20 timed calls): measured again, the quiet one kept
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))  # the spread alone decides here
    # the quiet attempt's calls take 10 ms, the busy one's median 5 ms: the quiet one is still the one kept
    pred = _on_its_clock(monkeypatch, _Spiky(busy_attempts=21, quiet_s=0.01))
    r = benchmark(pred, TEXTS, runs=20, warmup=1, batch_size=4, throughput_batches=1)
    assert r["latency_attempts"] == 2 and not r["noisy"] and r["latency_spread"] == pytest.approx(1.0)
    assert r["latency_ms_p50"] == pytest.approx(10.0)
    # a machine whose load stays high: three attempts, then labelled noisy
    monkeypatch.setattr("os.getloadavg", lambda: (99.0, 99.0, 99.0))
    r = benchmark(_on_its_clock(monkeypatch, _Spiky(busy_attempts=0)), TEXTS, runs=20, warmup=1, batch_size=4, throughput_batches=1)
    assert r["latency_attempts"] == 3 and r["noisy"] and r["load_avg_1m"] == 99.0


def test_report_marks_noisy_rows_and_batch_dependent_predictions():
    from slimtune.report import markdown

    hw = hardware()
    base = {"accuracy": 0.8, "f1_macro": 0.8, "params": 10, "size_bytes": 2**20, "latency_ms_p50": 10.0,
            "latency_ms_p95": 11.0, "throughput_per_s": 1.0, "peak_rss_mb": 100, "latency_runs": 5, "batch1_agreement": 1.0}
    report = {"recipe": "r", "data": {"source": "d", "labels": ["a", "b"]}, "hardware": hw, "baseline": "ft",
              "eval_batch_size": 32,
              "stages": [{"name": "ft", "method": "full", "metrics": base},
                         {"name": "int8", "method": "export", "metrics": base | {"noisy": True, "batch1_agreement": 0.9875}}]}
    md = markdown(report)
    assert "| 10.00 (noisy) |" in md and "**noisy**: int8" in md
    assert "int8 0.9875" in md and "ft 1.0000" not in md and "fresh process" in md
