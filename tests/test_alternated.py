"""Speed-ups measured by alternating the baseline and each artifact (issue 25): scripted durations
and a scripted clock, never real timing, so every figure below is exact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from slimtune.measure import alternate, bench
from slimtune.measure.alternate import alternate_until_quiet, compact, split_runs, summarize
from slimtune.measure.predictors import Predictor
from tests.conftest import synthetic_rows

TEXTS = [t for t, _ in synthetic_rows(20)]


def scripted(medians: list[float], calls: list | None = None, name: str = ""):
    """A block whose round r takes medians[r] (three calls around it), optionally logging its calls."""

    def block(r: int) -> list[float]:
        if calls is not None:
            calls.append((name, r))
        return [medians[r] * 0.5, medians[r], medians[r] * 3]

    return block


def test_median_of_per_round_ratios_and_spread_are_exact():
    calls = []
    s = alternate.alternate(scripted([10, 12, 10, 11, 10.5], calls, "base"), scripted([1, 1, 1, 1, 1], calls, "other"), 5)
    assert s["ratios"] == [10, 12, 10, 11, 10.5]
    assert s["speedup"] == 10.5 and (s["ratio_min"], s["ratio_max"]) == (10, 12)
    assert s["ratio_iqr"] == [10, 11] and s["rounds"] == 5 and s["runs_per_block"] == 3
    assert s["baseline_block_spread"] == pytest.approx(1.2) and not s["noisy"] and s["noisy_reason"] == ""
    # the order is swapped every round: a load that grows during the measurement favours neither
    assert calls == [("base", 0), ("other", 0), ("other", 1), ("base", 1), ("base", 2), ("other", 2),
                     ("other", 3), ("base", 3), ("base", 4), ("other", 4)]
    assert compact(s) == "10.50x (5 alternated rounds, 10.00–12.00)"


def test_a_busy_baseline_is_flagged_whatever_the_load():
    # baseline blocks alternately slow and fast (the machine busy every other block): the rounds disagree
    s = summarize([[20], [10], [20], [10], [20]], [[1], [1], [1], [1], [1]])
    assert s["speedup"] == 20 and s["noisy"]
    assert s["noisy_reason"].startswith("per-round ratios 10.00-20.00 (max/min 2.00 > 1.3)")
    assert compact(s) == "≈20.00x noisy (5 alternated rounds, 10.00–20.00)"
    # busy for the first two rounds, both slowed alike: steady ratios, but the baseline itself moved
    s = summarize([[20], [20], [10], [10], [10]], [[2], [2], [1], [1], [1]])
    assert s["ratios"] == [10] * 5 and s["noisy"]
    assert s["noisy_reason"] == "baseline blocks 10-20 (max/min 2.00 > 1.3)"
    # within the limits: not flagged
    assert not summarize([[10], [11], [12]], [[1], [1.05], [1.1]])["noisy"]


def test_a_noisy_alternation_is_repeated_and_the_quietest_kept():
    rounds = iter([[20, 10, 20], [10, 10, 10.5], [30, 10, 30]])  # attempt 1 noisy, attempt 2 quiet
    medians: list[float] = []

    def base(r: int) -> list[float]:
        if r == 0:
            medians[:] = next(rounds)
        return [medians[r]]

    s = alternate_until_quiet(base, lambda r: [1.0], rounds=3)
    assert (s["attempts"], s["attempt_kept"], s["noisy"], s["speedup"]) == (2, 2, False, 10)
    # never quiet: three attempts, the one with the smallest spread kept (not the flattering ratio)
    spreads = iter([[30, 10, 30], [20, 10, 20], [40, 10, 40]])

    def busy(r: int) -> list[float]:
        if r == 0:
            medians[:] = next(spreads)
        return [medians[r]]

    s = alternate_until_quiet(busy, lambda r: [1.0], rounds=3)
    assert (s["attempts"], s["attempt_kept"], s["noisy"], s["speedup"]) == (3, 2, True, 20)


def test_runs_split_into_blocks():
    assert split_runs(100) == (5, 20) and split_runs(3) == (3, 1) and split_runs(7) == (5, 2) and split_runs(1) == (1, 1)


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Scripted(Predictor):
    """A predictor whose batch-1 call advances the scripted clock by cost(call number) seconds."""

    label_names = ["neg", "pos"]

    def __init__(self, clock: _Clock, cost):
        self.clock, self.cost, self.calls = clock, cost, 0

    def logits(self, texts):
        if len(texts) == 1:
            self.clock.t += self.cost(self.calls)
            self.calls += 1
        return np.zeros((len(texts), 2), dtype=np.float32)

    def num_params(self):
        return 1


def test_benchmark_against_a_baseline_on_a_scripted_clock(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench, "_clock", clock)
    fast, base = _Scripted(clock, lambda i: 0.001), _Scripted(clock, lambda i: 0.010)
    loaded = []
    r = bench.benchmark(fast, TEXTS, runs=10, warmup=1, batch_size=4, throughput_batches=1,
                        against=lambda: loaded.append(1) or base)
    s = r["speedup"]
    assert loaded == [1] and s["speedup"] == pytest.approx(10.0) and s["ratios"] == pytest.approx([10.0] * 5)
    assert (s["rounds"], s["runs_per_block"], s["attempts"], s["noisy"]) == (5, 2, 1, False)
    assert r["latency_ms_p50"] == pytest.approx(1.0) and r["latency_runs"] == 10 and not r["noisy"]
    assert base.calls == 1 + 10  # its warm-up, then its five blocks of two
    json.dumps(r)  # report.json takes it as it is

    # a busy baseline: every other block of it twice as slow (calls after its warm-up, in blocks of 2)
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))  # a quiet load average hides nothing
    busy = _Scripted(clock, lambda i: 0.020 if i and ((i - 1) // 2) % 2 == 0 else 0.010)
    r = bench.benchmark(_Scripted(clock, lambda i: 0.001), TEXTS, runs=10, warmup=1, batch_size=4, throughput_batches=1,
                        against=lambda: busy)
    assert r["noisy"] and r["speedup"]["noisy"] and r["latency_attempts"] == 3 and r["load_avg_1m"] == 0.0
    assert "per-round ratios 10.00-20.00" in r["speedup"]["noisy_reason"]


def _report(rows: list[tuple[str, dict]]) -> dict:
    from slimtune.measure.bench import hardware

    plain = {"accuracy": 0.8, "f1_macro": 0.8, "params": 10, "size_bytes": 2**20, "latency_ms_p50": 10.0,
             "latency_ms_p95": 11.0, "throughput_per_s": 1.0, "peak_rss_mb": 100, "latency_runs": 10}
    return {"recipe": "r", "data": {"source": "d", "labels": ["a", "b"]}, "hardware": hardware(), "baseline": "ft",
            "eval_batch_size": 32,
            "stages": [{"name": n, "method": "x", "metrics": plain | m} for n, m in rows]}


def test_report_shows_the_alternated_figure_and_flags_a_noisy_one():
    from slimtune.report import markdown

    quiet = summarize([[10], [10.5], [10]], [[1], [1], [1]]) | {"against": "ft"}
    noisy = summarize([[20], [10], [20]], [[2], [1], [1]]) | {"against": "ft"}
    itself = summarize([[10], [10], [10]], [[10], [10.2], [9.8]]) | {"against": "ft"}
    md = markdown(_report([("ft", {"speedup": itself}),
                           ("fast", {"latency_ms_p50": 1.0, "speedup": quiet}),
                           ("int8", {"latency_ms_p50": 1.0, "speedup": noisy, "int8_compute": True, "noisy": True}),
                           ("early", {"latency_ms_p50": 2.0}),  # measured before its baseline existed
                           ("other", {"latency_ms_p50": 2.0, "speedup": quiet | {"against": "old"}})]))
    assert "speed-up (median of alternated rounds, min–max)" in md
    assert md.count("| stage | method | acc | macro F1 | params |") == 1  # the metric is macro F1: said so
    assert "| 1.00x (A/A: 3 alternated rounds, 0.98–1.02) |" in md
    assert "| 10.00x (3 alternated rounds, 10.00–10.50) |" in md
    assert "| ≈10.00x noisy (3 alternated rounds, 10.00–20.00) |" in md
    assert md.count("| 5.00x (timed apart) |") == 2  # no alternation, or one against another baseline
    assert "**noisy**: int8 were timed" in md and "int8: per-round ratios 10.00-20.00" in md
    assert "- int8: ≈10.00x faster than fp32 (1.00 ms vs 10.00 ms; speed-up ≈10.00x noisy" in md
    assert "3 blocks of 1, alternating with blocks of the baseline ft" in md


def test_a_run_records_alternated_speed_ups(tiny_base_dir, tiny_csv, tmp_path):
    from slimtune import runner
    from slimtune.recipe import parse

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir),
           "stages": [{"name": "ft", "method": "full", "max_steps": 1, "max_length": 32},
                      {"name": "head", "method": "head_only", "max_steps": 1, "max_length": 32}],
           "export": ["onnx"], "baseline": "head",  # ft is measured before its baseline exists
           "eval": {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "max_length": 32, "isolate": False, "floor": False}}
    logs = []
    runner.run(parse(raw), tmp_path, log=logs.append)
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {s["name"]: s["metrics"] for s in report["stages"]}
    assert "speedup" not in rows["ft"]
    for name in ("head", "onnx"):
        s = rows[name]["speedup"]
        assert (s["against"], s["rounds"], s["runs_per_block"], len(s["ratios"])) == ("head", 3, 1, 3), name
        assert s["ratio_min"] <= s["speedup"] <= s["ratio_max"] and isinstance(s["noisy"], bool)
        assert rows[name]["noisy"] == s["noisy"] and rows[name]["latency_runs"] == 3
    md = (tmp_path / "report.md").read_text()
    assert "x (timed apart) |" in md and "(A/A: 3 alternated rounds" in md and "alternated rounds" in md
    assert any("speed-up" in m and "vs head" in m for m in logs)


def test_bench_against_a_baseline(tiny_clf_dir, tmp_path):
    from slimtune import api
    from slimtune.errors import SlimtuneError

    with pytest.raises(SlimtuneError) as e:  # said before any timing
        api.bench(tiny_clf_dir, TEXTS, runs=2, warmup=0, max_length=32, against=tmp_path / "nope")
    assert str(e.value) == f"--against: model not found: {tmp_path / 'nope'}"
    r = api.bench(tiny_clf_dir, TEXTS, runs=4, warmup=1, max_length=32, batch_size=4, against=tiny_clf_dir)
    s = r["speedup"]
    assert (s["against"], s["rounds"], s["runs_per_block"]) == (str(tiny_clf_dir), 4, 1) and r["latency_runs"] == 4
