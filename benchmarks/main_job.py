"""The main job as a benchmark: run recipes/default.yaml into a fresh folder and check the
targets, all measured side by side in this one run on this machine.

    python benchmarks/main_job.py [--out runs/bench-main]

Targets (2 CPU cores; issue 12): the final artifact (the last row) against the fine-tuned torch
fp32 model of the same report: >= 10x lower batch-1 p50 latency, >= 10x smaller on disk, accuracy
drop <= 1 point; fine-tuned accuracy >= 0.80; whole job <= 15 min wall. Not a timed test; the
speed-up is the report's own: the final artifact timed in blocks alternating with the baseline's
(slimtune/measure/alternate.py), median of the per-round ratios; a noisy one does not pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import report_checks  # noqa: E402


def main() -> int:
    import slimtune
    from slimtune.model.folders import quiet_libraries

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-main"))
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "default.yaml"))
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a benchmark measures a whole run, never a resume
    quiet_libraries()
    load = os.getloadavg()
    start = time.perf_counter()
    report = slimtune.run(args.recipe, out, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - start
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    base, final = m[report["baseline"]], report["stages"][-1]["metrics"]
    name = report["stages"][-1]["name"]
    print(f"\nload average (1 min) at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}; final artifact: {name}")
    floor = report.get("floor", {}).get("metrics", {})
    s = final["speedup"]  # alternated with the baseline (measure/alternate.py)
    speed = (f"{name} speed-up vs torch fp32 (median of {s['rounds']} alternated rounds, "
             f"{s['ratio_min']:.2f}-{s['ratio_max']:.2f}{'; NOISY: ' + s['noisy_reason'] if s['noisy'] else ''})")
    checks = [
        ("whole job wall time (min)", wall / 60, "<= 15", wall <= 15 * 60),
        ("fine-tuned accuracy", base["accuracy"], ">= 0.80", base["accuracy"] >= 0.80),
        (f"{name} accuracy drop (points)", 100 * (base["accuracy"] - final["accuracy"]), "<= 1.0", base["accuracy"] - final["accuracy"] <= 0.01),
        (speed, s["speedup"], ">= 10x, not noisy", s["speedup"] >= 10 and not s["noisy"]),
        (f"{name} size ratio vs fp32", base["size_bytes"] / final["size_bytes"], ">= 10x", base["size_bytes"] / final["size_bytes"] >= 10),
        ("TF-IDF floor test accuracy", floor.get("accuracy", float("nan")), "(info)", True),
    ]
    return report_checks(report, checks)


if __name__ == "__main__":
    sys.exit(main())
