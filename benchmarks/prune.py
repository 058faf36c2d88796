"""Pruning benchmark: the unpruned fine-tuned MiniLM-L6, recipes/prune.yaml's structured pruning
(+ its ONNX int8 export) and recipes/prune_unstructured.yaml's 80% sparse model, from one
fine-tuned model in one run, measured side by side.

    python benchmarks/prune.py [--model FINE_TUNED_FOLDER] [--out runs/bench-prune]

Without --model the fine-tuning stage of recipes/prune.yaml runs first (about 6 minutes here).
Targets (Rotten Tomatoes, 2 CPU cores, one run):
- structured with recovery: batch-1 p50 >= 1.5x lower than the unpruned fp32 model, accuracy drop <= 1 point;
- unstructured 80% with recovery: size on disk >= 3x smaller, accuracy drop <= 1.5 points, labelled size-only;
- structured + ONNX int8: p50 >= 3x lower than the unpruned fp32 model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import report_checks, run_fresh  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="an already fine-tuned classifier folder (skips fine-tuning)")
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-prune"))
    ap.add_argument("--only", choices=["structured", "unstructured"], help="run one kind (with the unpruned baseline)")
    args = ap.parse_args()
    raw = yaml.safe_load((REPO / "recipes" / "prune.yaml").read_text())
    sparse = yaml.safe_load((REPO / "recipes" / "prune_unstructured.yaml").read_text())["stages"][-1]
    finetune, structured = raw["stages"]
    if args.model:
        raw["model"] = args.model
        finetune = {"name": "unpruned", "method": "baseline"}
    else:
        finetune["name"] = "unpruned"
    # the unstructured stage branches off the unpruned model; structured pruning comes last so
    # the int8 export is of the structurally pruned model
    raw["stages"] = [finetune] + ([sparse | {"from": "unpruned"}] if args.only != "structured" else []) \
        + ([structured | {"from": "unpruned"}] if args.only != "unstructured" else [])
    if args.only == "unstructured":
        raw["export"] = []
    out = Path(args.out)
    report, wall = run_fresh(raw, out, "recipes/prune.yaml + prune_unstructured.yaml")
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    base = m["unpruned"]

    def drop(x):
        return 100 * (base["accuracy"] - x["accuracy"])

    def speed(x):
        return base["latency_ms_p50"] / x["latency_ms_p50"]

    checks = []
    if "pruned" in m:
        st, q = m["pruned"], m["onnx-int8"]
        checks += [
            ("structured p50 speed-up vs unpruned fp32", speed(st), ">= 1.5x", speed(st) >= 1.5),
            ("structured accuracy drop (pt)", drop(st), "<= 1", drop(st) <= 1.0),
            ("structured + ONNX int8 p50 speed-up", speed(q), ">= 3x", speed(q) >= 3),
            ("structured + ONNX int8 accuracy drop (pt)", drop(q), "(info)", True),
            ("structured params removed (fraction)", st["params_removed"] / st["params_before"], "(info)", True),
        ]
    if "sparse80" in m:
        sp = m["sparse80"]
        checks += [
            ("unstructured 80% size ratio", base["size_bytes"] / sp["size_bytes"], ">= 3x", base["size_bytes"] / sp["size_bytes"] >= 3),
            ("unstructured 80% accuracy drop (pt)", drop(sp), "<= 1.5", drop(sp) <= 1.5),
            ("unstructured 80% p50 speed-up (size-only)", speed(sp), "(info)", True),
            ("unstructured sparsity (exact)", sp["sparsity"], "(info)", True),
        ]
    checks.append(("whole run wall time (min)", wall / 60, "(info)", True))
    return report_checks(report, checks)


if __name__ == "__main__":
    sys.exit(main())
