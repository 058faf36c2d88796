"""Shared by the benchmark scripts: print measured figures against their targets."""

from __future__ import annotations


def report_checks(report: dict, checks: list[tuple[str, float, str, bool]]) -> int:
    """Print the machine and one PASS/FAIL line per (name, value, target, ok); exit code 0 if all pass."""
    hw = report["hardware"]
    runs = next(s["metrics"].get("latency_runs") for s in report["stages"])
    print(f"\nmachine: {hw['cpu']}, {hw['cores_logical']} cores, torch threads {hw['torch_threads']}, "
          f"latency over {runs} batch-1 runs per artifact")
    for name, value, target, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:44s} {value:8.3f}  target {target}")
    return 0 if all(ok for *_, ok in checks) else 1
