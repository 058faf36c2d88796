"""The main job as a benchmark: run recipes/default.yaml into a fresh folder and check the
issue's targets, all measured side by side in this one run on this machine.

    python benchmarks/main_job.py [--out runs/bench-main]

Targets (2 CPU cores): whole job <= 15 min wall; fine-tuned accuracy >= 0.80; ONNX int8 within
1 point of fp32 and >= 1.8x lower batch-1 p50 latency than torch fp32. Not a timed test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import report_checks  # noqa: E402


def main() -> int:
    import slimtune
    from slimtune.models import quiet_libraries

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-main"))
    ap.add_argument("--recipe", default=str(REPO / "recipes" / "default.yaml"))
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a benchmark measures a whole run, never a resume
    quiet_libraries()
    start = time.perf_counter()
    report = slimtune.run(args.recipe, out, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - start
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    base, int8 = m[report["baseline"]], m["onnx-int8"]
    checks = [
        ("whole job wall time (min)", wall / 60, "<= 15", wall <= 15 * 60),
        ("fine-tuned accuracy", base["accuracy"], ">= 0.80", base["accuracy"] >= 0.80),
        ("int8 accuracy drop (points)", 100 * (base["accuracy"] - int8["accuracy"]), "<= 1.0", base["accuracy"] - int8["accuracy"] <= 0.01),
        ("int8 p50 speed-up vs torch fp32", base["latency_ms_p50"] / int8["latency_ms_p50"], ">= 1.8x", base["latency_ms_p50"] / int8["latency_ms_p50"] >= 1.8),
        ("int8 size ratio vs fp32", base["size_bytes"] / int8["size_bytes"], "(info)", True),
        ("onnx fp32 p50 speed-up vs torch fp32", base["latency_ms_p50"] / m["onnx"]["latency_ms_p50"], "(info)", True),
    ]
    return report_checks(report, checks)


if __name__ == "__main__":
    sys.exit(main())
