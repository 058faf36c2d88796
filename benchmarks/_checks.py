"""Shared by the benchmark scripts: run a recipe afresh, print measured figures against targets."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def run_fresh(raw: dict, out: Path, source: str) -> tuple[dict, float]:
    """Run recipe `raw` into an emptied `out` (a benchmark measures a whole run, never a resume);
    returns (report, wall seconds)."""
    from slimtune.model.folders import quiet_libraries
    from slimtune.recipe import parse
    from slimtune.runner import run

    shutil.rmtree(out, ignore_errors=True)
    quiet_libraries()
    start = time.perf_counter()
    report = run(parse(raw, source), Path(out), log=lambda m: print(m, flush=True))
    return report, time.perf_counter() - start


def report_checks(report: dict, checks: list[tuple[str, float, str, bool]]) -> int:
    """Print the machine and one PASS/FAIL line per (name, value, target, ok); exit code 0 if all pass."""
    hw = report["hardware"]
    runs = next(s["metrics"].get("latency_runs") for s in report["stages"])
    print(f"\nmachine: {hw['cpu']}, {hw['cores_logical']} cores, torch threads {hw['torch_threads']}, "
          f"latency over {runs} batch-1 runs per artifact")
    for name, value, target, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:44s} {value:8.3f}  target {target}")
    return 0 if all(ok for *_, ok in checks) else 1
