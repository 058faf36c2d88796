"""One process x all cores against N processes x cores/N threads, on the same recipe and data.

    python benchmarks/ddp.py [--samples 800] [--epochs 1] [--nproc 2] [--out runs/bench-ddp]

Fine-tunes MiniLM-L6 on a Rotten Tomatoes subsample twice through `slimtune run`: once as one
process with every core (torch's threads), once as `--nproc N` processes with cores/N threads
each. Same recipe, same global batch, so the same number of optimizer steps. Prints seconds per
epoch (the Trainer's train_runtime over epochs), test accuracy, the 1-minute load average before
and after each run, and the machine. One run each: on a shared machine read the ratio, not the
absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(recipe: Path, out: Path, nproc: int, threads: int) -> tuple[dict, float, tuple[float, float]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "slimtune.cli", "--quiet", "run", str(recipe), "--out", str(out), "--json"]
    cmd += ["--nproc", str(nproc)] if nproc > 1 else []
    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"run failed ({nproc} processes):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), wall, (load0, os.getloadavg()[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=800, help="training texts (Rotten Tomatoes subsample)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-ddp"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = {
        "data": {"name": "rotten_tomatoes", "max_train_samples": args.samples},
        "model": "minilm-l6",
        "stages": [{"name": "finetune", "method": "full", "epochs": args.epochs, "batch_size": args.batch_size,
                    "max_length": 64, "learning_rate": 5e-5}],
        "eval": {"max_length": 64, "latency_runs": 20, "isolate": False, "floor": False},
    }
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    rows = []
    for nproc, threads in ((1, cores), (args.nproc, max(1, cores // args.nproc))):
        folder = out / f"p{nproc}xt{threads}"
        if folder.exists():
            sys.exit(f"{folder} exists: remove it (a finished stage would be skipped, not timed)")
        report, wall, load = run(path, folder, nproc, threads)
        m = report["stages"][0]["metrics"]
        rows.append({"processes": nproc, "threads_each": threads, "s_per_epoch": m["train_seconds"] / args.epochs,
                     "s_per_step": m["seconds_per_step"], "steps": m["train_steps"], "accuracy": m["accuracy"],
                     "wall_s": wall, "load_before_after": load, "global_batch": m.get("effective_batch_size")})
    print(f"machine: {platform.processor() or platform.machine()}, {cores} logical cores; "
          f"{args.samples} training texts, {args.epochs} epoch(s), global batch {args.batch_size}, max_length 64; one run each")
    print("| processes x threads | s/epoch | s/step | steps | test accuracy | wall s | load avg before/after |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} x {r['threads_each']} | {r['s_per_epoch']:.1f} | {r['s_per_step']:.2f} | {r['steps']} | "
              f"{r['accuracy']:.4f} | {r['wall_s']:.0f} | {r['load_before_after'][0]:.2f} / {r['load_before_after'][1]:.2f} |")
    print(f"speed-up of {args.nproc} processes (s/epoch): {rows[0]['s_per_epoch'] / rows[1]['s_per_epoch']:.2f}x")
    (out / "result.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
