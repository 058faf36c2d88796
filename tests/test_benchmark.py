"""Benchmark numbers: repeat counts recorded, a fresh process does not inherit the parent's peak memory."""

from __future__ import annotations

import numpy as np

from slimtune.benchmark import artifact_size, benchmark, benchmark_in_subprocess, hardware, peak_rss_mb
from slimtune.models import load_model
from slimtune.predictors import TorchPredictor
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
