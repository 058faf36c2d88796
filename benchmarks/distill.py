"""Distillation benchmark: recipes/distill.yaml plus the same student trained on hard labels only
(same epochs over the same labelled data) and the truncated-teacher student of
recipes/distill_truncate.yaml, all from one teacher in one run, measured side by side.

    python benchmarks/distill.py [--out runs/bench-distill]

Targets (Rotten Tomatoes, 2 CPU cores): student accuracy >= 98.5% of the teacher's; student
batch-1 p50 >= 1.8x lower than the teacher's (torch fp32 both); student ONNX int8 >= 4x lower
than the fp32 teacher with accuracy within 1.5 points; distillation better than hard labels only.
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
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-distill"))
    args = ap.parse_args()
    raw = yaml.safe_load((REPO / "recipes" / "distill.yaml").read_text())
    kd = next(s for s in raw["stages"] if s["method"] == "distill")
    hard = {k: v for k, v in kd.items() if k not in ("extra_texts",)} | {"name": "student_hard_labels", "alpha": 1.0, "from": "teacher"}
    kd["from"] = "teacher"
    raw["stages"].insert(raw["stages"].index(kd), hard)
    # the teacher's own layers 0, 2, 4 as the student (recipes/distill_truncate.yaml), same budget;
    # last, so the int8 export is of this student
    trunc = kd | {"name": "student_truncated", "student": "truncate", "layers": [0, 2, 4]}
    raw["stages"].append(trunc)
    out = Path(args.out)
    report, wall = run_fresh(raw, out, "recipes/distill.yaml + hard-label student")
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    t, s, h, q = m["teacher"], m["student"], m["student_hard_labels"], m["onnx-int8"]
    tr = m["student_truncated"]
    checks = [
        ("L3 student / teacher accuracy", s["accuracy"] / t["accuracy"], ">= 0.985", s["accuracy"] / t["accuracy"] >= 0.985),
        ("L3 student p50 speed-up vs teacher", t["latency_ms_p50"] / s["latency_ms_p50"], ">= 1.8x", t["latency_ms_p50"] / s["latency_ms_p50"] >= 1.8),
        ("truncated student / teacher accuracy", tr["accuracy"] / t["accuracy"], ">= 0.985", tr["accuracy"] / t["accuracy"] >= 0.985),
        ("truncated student p50 speed-up vs teacher", t["latency_ms_p50"] / tr["latency_ms_p50"], ">= 1.8x", t["latency_ms_p50"] / tr["latency_ms_p50"] >= 1.8),
        ("truncated student int8 p50 speed-up vs teacher", t["latency_ms_p50"] / q["latency_ms_p50"], ">= 4x", t["latency_ms_p50"] / q["latency_ms_p50"] >= 4),
        ("truncated student int8 acc drop vs teacher (pt)", 100 * (t["accuracy"] - q["accuracy"]), "<= 1.5", t["accuracy"] - q["accuracy"] <= 0.015),
        ("L3 distilled - L3 hard-label accuracy (pt)", 100 * (s["accuracy"] - h["accuracy"]), "> 0", s["accuracy"] > h["accuracy"]),
        ("teacher / student params", t["params"] / s["params"], "(info)", True),
        ("teacher / student int8 size", t["size_bytes"] / q["size_bytes"], "(info)", True),
        ("whole run wall time (min)", wall / 60, "(info)", True),
    ]
    return report_checks(report, checks)


if __name__ == "__main__":
    sys.exit(main())
