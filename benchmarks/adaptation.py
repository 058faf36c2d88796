"""Adaptation benchmark (not `peft.py`: a script's folder comes first on sys.path, and that name
shadowed the peft package): recipes/peft.yaml, every method from the packaged MiniLM-L6 on the same
wall-time budget, plus ALBERT-style layer sharing of the fully fine-tuned model, in one run.

    python benchmarks/adaptation.py [--out runs/bench-adaptation] [--minutes 3]

Prints one table: method, trainable parameters (exact), seconds per training step, training peak
RSS, steps done in the budget, test accuracy. Targets (Rotten Tomatoes, 2 CPU cores):
- LoRA within 1 point of full fine-tuning with < 2% trainable parameters, and a training step at
  least 1.3x faster than full fine-tuning's;
- layer sharing into 3 unique layers: stored encoder layers halved, accuracy drop <= 2 points.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import report_checks, run_fresh  # noqa: E402


def encoder_bytes(folder: Path) -> int:
    """Bytes of the encoder-layer tensors in a stage's model.safetensors (fp32)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        for k in f.keys():
            if ".encoder.layer." in k:
                n = 1
                for d in f.get_slice(k).get_shape():
                    n *= d
                total += 4 * n
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-adaptation"))
    ap.add_argument("--minutes", type=float, default=None, help="override every stage's max_minutes")
    args = ap.parse_args()
    raw = yaml.safe_load((REPO / "recipes" / "peft.yaml").read_text())
    if args.minutes:
        for st in raw["stages"]:
            st["max_minutes"] = args.minutes
    out = Path(args.out)
    report, wall = run_fresh(raw, out, "recipes/peft.yaml")
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    print(f"\n{'method':10s} {'trainable':>12s} {'share':>7s} {'s/step':>7s} {'steps':>6s} {'train RSS MiB':>13s} {'acc':>7s}")
    for name, x in m.items():
        rss = x.get("train_peak_rss_mb")
        print(f"{name:10s} {x['trainable_params']:12,d} {x['trainable_params'] / x['total_params']:7.2%} "
              f"{x['seconds_per_step']:7.3f} {x['train_steps']:6d} {rss if rss is None else round(rss):>13} {x['accuracy']:7.4f}")
    full, lora, shared = m["full"], m["lora"], m["shared"]
    halved = encoder_bytes(out / "stages" / "01-full") / encoder_bytes(out / "stages" / "10-shared")
    checks = [
        ("LoRA accuracy gap to full (pt)", 100 * (full["accuracy"] - lora["accuracy"]), "<= 1", full["accuracy"] - lora["accuracy"] <= 0.01),
        ("LoRA trainable share", lora["trainable_params"] / lora["total_params"], "< 0.02", lora["trainable_params"] / lora["total_params"] < 0.02),
        ("LoRA step speed-up vs full", full["seconds_per_step"] / lora["seconds_per_step"], ">= 1.3x",
         full["seconds_per_step"] / lora["seconds_per_step"] >= 1.3),
        ("shared: stored encoder layers ratio", halved, ">= 2x", halved >= 2),
        ("shared: accuracy drop vs full (pt)", 100 * (full["accuracy"] - shared["accuracy"]), "<= 2", full["accuracy"] - shared["accuracy"] <= 0.02),
        ("whole run wall time (min)", wall / 60, "(info)", True),
    ]
    return report_checks(report, checks)


if __name__ == "__main__":
    sys.exit(main())
