"""`slimtune auto` as a benchmark: a real search on Rotten Tomatoes (or the tweets), checked against
issue 12's targets, every ratio from the one search (its reference is measured beside the candidates).

    python benchmarks/auto.py [--data rotten_tomatoes] [--minutes 45] [--out runs/bench-auto]
                              [--max-train-samples N]

Targets: on Rotten Tomatoes with --minutes 45, a chosen model >= 8x faster than the reference at
<= 1 point test drop, and a Pareto front of >= 5 points. On tweets_sentiment, auto runs with no
recipe and its report shows the TF-IDF floor beside the chosen model. Not a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    from slimtune.api import data_config
    from slimtune.auto import FLOOR, AutoConfig, auto
    from slimtune.errors import SlimtuneError
    from slimtune.model.folders import quiet_libraries

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="rotten_tomatoes")
    ap.add_argument("--minutes", type=float, default=45)
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--max-train-samples", type=int, default=None)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-auto"))
    ap.add_argument("--resume", action="store_true", help="continue the search in --out instead of starting afresh")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.resume:
        shutil.rmtree(out, ignore_errors=True)
    quiet_libraries()
    load = os.getloadavg()
    start = time.perf_counter()
    cfg = AutoConfig(data_config(args.data, max_train_samples=args.max_train_samples), max_drop=args.max_drop, minutes=args.minutes)
    try:
        report = auto(cfg, out, log=lambda m: print(m, flush=True))
    except SlimtuneError as e:
        print(f"auto ended without a chosen model: {e}")
        return 1
    wall = time.perf_counter() - start
    c, front = report["chosen"], report["pareto"]
    floor = next((r for r in report["candidates"] if r["candidate"] == FLOOR), None)
    print(f"\nload average at start {load[0]:.2f}, at end {os.getloadavg()[0]:.2f}; wall {wall / 60:.1f} min; "
          f"{len(report['candidates'])} candidates")
    checks = [
        ("chosen p50 speed-up vs reference", c["speedup_p50"], ">= 8x", c["speedup_p50"] >= 8),
        ("chosen test accuracy drop (points)", c["test_drop_points"], "<= 1.0", c["test_drop_points"] <= 1.0),
        ("chosen size ratio vs reference", c["size_ratio"], "(info)", True),
        ("Pareto front points", len(front), ">= 5", len(front) >= 5),
        ("TF-IDF floor in the report (test accuracy)", floor["test_accuracy"] if floor else float("nan"), "present", floor is not None),
    ]
    for name, value, target, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:44s} {value:8.3f}  target {target}")
    print(f"chosen: {c['candidate']} ({c['artifact']})")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
