"""Speed, size and memory of a predictor, measured the same way for torch and ONNX Runtime.

- latency: batch 1 over real test sentences, after warm-up; p50 and p95 of `runs` timed calls
  (tokenization included: it is part of what a user waits for);
- speed-up against a baseline (`against`): the same `runs` calls split into blocks that alternate
  with blocks of the baseline in this one process (alternate.py): median of the per-round ratios,
  with their spread and a noisy flag that the machine's load cannot hide;
- throughput: texts per second at batch 32 over real test sentences;
- peak RSS: the peak resident memory of the process (`ru_maxrss`). The recipe runner benchmarks
  every artifact in a fresh process (`python -m slimtune.measure.bench`), so this is what loading and
  running that model costs, Python and libraries included, not what training left behind;
- size: bytes of the model's weight files on disk (tokenizer files excluded: same for all stages).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import alternate
from .predictors import Predictor

WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".onnx.data", ".bin", ".data", ".tflite", ".gguf")


def artifact_size(path: str | Path) -> int:
    path = Path(path)
    if path.is_file():
        files = [path]
    else:
        files = [f for f in path.rglob("*") if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES)]
    return int(sum(f.stat().st_size for f in files))


NOISY_SPREAD = 2.5  # p95 / p50 of batch-1 latency above this: something else was using the CPU
NOISY_LOAD = 1.5  # 1-minute load average above this many times the core count: the machine is busy
MAX_ATTEMPTS = 3  # a noisy latency measurement is repeated at most this many times in all


def _clock() -> float:
    """What batch-1 calls are timed with: read through the module's `time` each call, so a test can
    script the clock (test_benchmark)."""
    return time.perf_counter()


def _latency(pred: Predictor, sample: list[str]) -> np.ndarray:
    times = []
    for t in sample:
        start = _clock()
        pred.logits([t])
        times.append(_clock() - start)
    return np.array(times) * 1000.0


def _noisy(ms: np.ndarray, load: float) -> bool:
    return float(np.percentile(ms, 95) / np.percentile(ms, 50)) > NOISY_SPREAD or load > NOISY_LOAD * (os.cpu_count() or 1)


def benchmark(pred: Predictor, texts: list[str], runs: int = 100, warmup: int = 10, batch_size: int = 32, throughput_batches: int = 8,
              against: Callable[[], Predictor] | None = None, rounds: int = alternate.ROUNDS) -> dict:
    """Latency (batch 1), throughput (batch `batch_size`) and peak RSS of `pred` on `texts`; with
    `against` (a loader of the baseline, called after peak RSS is read), the batch-1 calls are timed
    in blocks alternating with the baseline's, and `speedup` is the median of the per-round ratios.

    A busy machine makes timings wrong without saying so. Alone, the load average and the spread of
    the timed runs are recorded, and when either says the CPU was shared the latency loop is run
    again (at most MAX_ATTEMPTS in all); the quietest attempt is kept and `noisy` says if even it was
    busy. Against a baseline, `noisy` is the alternation's verdict (its rounds or the baseline's own
    blocks disagree: alternate.py), re-measured the same way; the load average is only recorded.
    """
    if not texts:
        raise ValueError("benchmark needs at least one text")
    runs = max(runs, 1)
    sample = [texts[i % len(texts)] for i in range(runs + warmup)]
    for t in sample[:warmup]:
        pred.logits([t])
    alone = _latency_alone(pred, sample[warmup:]) if against is None else {}
    pool = [texts[i % len(texts)] for i in range(batch_size * throughput_batches)]
    pred.logits(pool[:batch_size])  # warm-up at this batch size
    start = time.perf_counter()
    for i in range(0, len(pool), batch_size):
        pred.logits(pool[i : i + batch_size])
    elapsed = time.perf_counter() - start
    facts = {
        "throughput_per_s": float(len(pool) / elapsed),
        "throughput_batch_size": batch_size,
        "throughput_texts": len(pool),
        "peak_rss_mb": peak_rss_mb(),  # before a baseline is loaded: this artifact's own
        "params": int(pred.num_params()),
        "runtime": pred.kind,
        **pred.facts(),
    }
    if against is None:
        return alone | facts
    return _latency_against(pred, against(), texts, runs, warmup, rounds) | facts


def _latency_alone(pred: Predictor, sample: list[str]) -> dict:
    attempts = []
    for _ in range(MAX_ATTEMPTS):
        ms = _latency(pred, sample)
        load = os.getloadavg()[0]
        attempts.append((float(np.percentile(ms, 50)), ms, load))
        if not _noisy(ms, load):
            break
    # the quietest attempt: a quiet one before a noisy one, then the lowest median (a noisy attempt's
    # median can be the lower by timer jitter alone, and keeping it would label a quiet run noisy)
    p50, ms, load = min(attempts, key=lambda a: (_noisy(a[1], a[2]), a[0]))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "latency_runs": len(sample),
        "latency_spread": float(np.percentile(ms, 95) / p50),
        "latency_attempts": len(attempts),
        "load_avg_1m": float(load),
        "noisy": _noisy(ms, load),
    }


def _latency_against(pred: Predictor, base: Predictor, texts: list[str], runs: int, warmup: int, rounds: int) -> dict:
    """Batch-1 latency of `pred` timed in blocks alternating with `base` (round r: the same texts
    for both); p50/p95 over the blocks of the attempt kept."""
    rounds, per_block = alternate.split_runs(runs, rounds)
    if base is not pred:
        for i in range(warmup):
            base.logits([texts[i % len(texts)]])
    other_blocks: list[np.ndarray] = []  # every block of `pred`, attempt after attempt

    def block(p: Predictor, record: bool):
        def run(r: int) -> np.ndarray:
            ms = _latency(p, [texts[(r * per_block + i) % len(texts)] for i in range(per_block)])
            if record:
                other_blocks.append(ms)
            return ms

        return run

    result = alternate.alternate_until_quiet(block(base, False), block(pred, True), rounds, MAX_ATTEMPTS)
    kept = result["attempt_kept"] - 1
    ms = np.concatenate(other_blocks[kept * rounds : (kept + 1) * rounds])
    load = os.getloadavg()[0]
    p50 = float(np.percentile(ms, 50))
    return {
        "latency_ms_p50": p50,
        "latency_ms_p95": float(np.percentile(ms, 95)),
        "latency_runs": len(ms),
        "latency_spread": float(np.percentile(ms, 95) / p50),
        "latency_attempts": result["attempts"],
        "load_avg_1m": float(load),
        "noisy": result["noisy"],
        "speedup": result,
    }


def reset_peak_rss() -> bool:
    """Start the peak-RSS count afresh (Linux: writing 5 to clear_refs resets VmHWM); False if not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    On Linux, VmHWM belongs to the address space and starts afresh at exec; `ru_maxrss` does not
    (getrusage(2): it is preserved across execve), so a benchmark child would report the peak of
    the training process that spawned it.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1024 if sys.platform.startswith("linux") else 2**20  # KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def hardware() -> dict:
    """CPU model, ISA flags that decide int8 speed, thread counts and library versions."""
    import onnxruntime
    import torch
    import transformers

    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "fma", "f16c"]
    return {
        "cpu": model,
        "machine": platform.machine(),
        "isa": {k: (k in flags) for k in isa},
        "cores_logical": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
        "gpu": _gpu(),  # hook (compute.py): the GPU torch sees, or None
    }


def _gpu():
    from ..compute import gpu

    return gpu()


def int8_isa(log) -> dict:
    """The ISA facts that decide whether int8 matmuls beat fp32 here; says so before quantizing."""
    isa = hardware()["isa"]
    vnni = isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8")
    if not vnni:
        have = ", ".join(k for k, v in isa.items() if v) or "none of avx2/avx512/vnni/amx"
        log(f"  this CPU has no VNNI/AMX int8 instructions ({have}): int8 may not beat fp32 here; "
            "the report compares measured latency")
    return {"int8_compute": True, "cpu_int8_vnni": bool(vnni)}


def run_module_json(module: str, artifact: Path, payload, flag: str, args: list[str], what: str) -> dict:
    """Run `python -m module artifact FLAG payload.json ARGS` in a fresh process (its own peak RSS,
    clean caches) and return the JSON object it prints on its last line."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(payload, f)
    cmd = [sys.executable, "-m", module, str(artifact), flag, f.name, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} of {artifact} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def benchmark_in_subprocess(artifact: Path, texts: list[str], max_length: int, runs: int, warmup: int, batch_size: int,
                            against: Path | None = None, rounds: int = alternate.ROUNDS) -> dict:
    """Benchmark `artifact` in a fresh Python process, so memory and caches start clean; with
    `against`, that baseline is loaded in the same process once peak RSS is read, and the two
    alternate (`benchmark`)."""
    extra = ["--against", str(against), "--rounds", str(rounds)] if against is not None else []
    return run_module_json("slimtune.measure.bench", artifact, texts, "--texts",
                           ["--max-length", str(max_length), "--runs", str(runs), "--warmup", str(warmup),
                            "--batch-size", str(batch_size), *extra], "benchmark")


def _main() -> None:
    from ..artifacts import load_predictor
    from ..model.folders import quiet_libraries

    quiet_libraries()
    ap = argparse.ArgumentParser(description="benchmark one artifact; prints one JSON line")
    ap.add_argument("artifact")
    ap.add_argument("--texts", required=True, help="JSON list of texts")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--against", help="baseline artifact, timed alternately with this one (speed-up)")
    ap.add_argument("--rounds", type=int, default=alternate.ROUNDS)
    a = ap.parse_args()
    texts = json.loads(Path(a.texts).read_text())
    pred = load_predictor(a.artifact, a.max_length)
    against = None
    if a.against:  # the baseline against itself (its own row) is one predictor: an A/A measurement
        same = Path(a.against).resolve() == Path(a.artifact).resolve()
        against = (lambda: pred) if same else (lambda: load_predictor(a.against, a.max_length))
    result = benchmark(pred, texts, a.runs, a.warmup, a.batch_size, against=against, rounds=a.rounds)
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
