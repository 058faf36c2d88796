"""Quantization benchmark: recipes/quantize.yaml, every precision side by side in one run.

    python benchmarks/quantize.py [--model runs/.../01-fp32] [--out runs/bench-quantize]

With --model (an already fine-tuned classifier folder) the first stage becomes `method: baseline`
(measured, not trained), which saves the fine-tuning minutes. Wrap it in
`flock /tmp/slimtune-bench.lock` on a shared machine so latencies are not measured under load.

Targets (Rotten Tomatoes, 2 CPU cores, one run): ONNX int8 (dynamic or static) accuracy drop
<= 0.5 point and batch-1 p50 >= 2x lower than torch fp32; weight-only int4 accuracy drop
<= 1.5 points and >= 5x smaller than fp32; vocabulary trimming >= 40% smaller with identical
predictions on the test split.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _checks import report_checks  # noqa: E402


def main() -> int:
    from slimtune.model.folders import quiet_libraries
    from slimtune.recipe import parse
    from slimtune.runner import run

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-quantize"))
    ap.add_argument("--model", help="a fine-tuned classifier folder: skip the fine-tuning stage")
    args = ap.parse_args()
    raw = yaml.safe_load((REPO / "recipes" / "quantize.yaml").read_text())
    if args.model:
        raw["model"] = str(Path(args.model).resolve())
        raw["stages"][0] = {"name": raw["stages"][0]["name"], "method": "baseline"}
    # the vocabulary of every split's texts, test included (transductive: texts, never labels),
    # beside the shipped train + validation one; a benchmark-only row, not a recommendation
    raw["stages"].append({"name": "trim-vocab-with-test-texts", "method": "trim_vocab", "from": "fp32",
                          "corpus": ["train", "val", "test"]})
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a benchmark measures a whole run, never a resume
    quiet_libraries()
    start = time.perf_counter()
    report = run(parse(raw, "recipes/quantize.yaml" + (f" from {args.model}" if args.model else "")), out,
                 log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - start
    return report_checks(report, checks(report, out) + [("whole run wall time (min)", wall / 60, "(info)", True)])


def checks(report: dict, out: Path) -> list[tuple[str, float, str, bool]]:
    """The issue's targets (and informative ratios) from a finished run's report and folders."""
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    folders = {s["name"]: out / s["artifact"] for s in report["stages"]}
    base = m["fp32"]

    def drop(name):  # accuracy points lost against fp32
        return 100 * (base["accuracy"] - m[name]["accuracy"])

    def speedup(name):
        return base["latency_ms_p50"] / m[name]["latency_ms_p50"]

    def smaller(name):
        return base["size_bytes"] / m[name]["size_bytes"]

    def agreement(name):  # argmax agreement with fp32 on the test split
        a, b = (np.load(folders[n] / "test_logits.npy") for n in ("fp32", name))
        return float((a.argmax(1) == b.argmax(1)).mean())

    def kept(name):  # what an onnx_int8 stage ended up as (the guard may have fallen back)
        return f"{name} = {m[name]['onnx_quantization']}"

    trim_saving = 1 - m["trim-vocab"]["size_bytes"] / base["size_bytes"]
    rows = []
    for name in ("onnx-int8-dynamic", "onnx-int8-static"):
        rows += [(f"{kept(name)}: accuracy drop (points)", drop(name), "<= 0.5", drop(name) <= 0.5),
                 (f"{kept(name)}: p50 speed-up vs torch fp32", speedup(name), ">= 2x", speedup(name) >= 2)]
    rows += [(f"{kept(n)}: accuracy drop (points)", drop(n), "(info)", True)
             for n in ("onnx-int8-static-entropy", "onnx-int8-static-percentile")]
    return rows + [
        ("int4 weights accuracy drop (points)", drop("int4-weights"), "<= 1.5", drop("int4-weights") <= 1.5),
        ("int4 weights size ratio vs fp32", smaller("int4-weights"), ">= 5x", smaller("int4-weights") >= 5),
        ("trim-vocab size saving vs fp32", trim_saving, ">= 0.40", trim_saving >= 0.40),
        ("trim-vocab test prediction agreement", agreement("trim-vocab"), "== 1.0", agreement("trim-vocab") == 1.0),
        ("trim-vocab-with-test-texts size saving vs fp32", 1 - 1 / smaller("trim-vocab-with-test-texts"), "(info)", True),
        ("trim-vocab-with-test-texts test agreement", agreement("trim-vocab-with-test-texts"), "(info)", True),
        ("trim-vocab-fp16 size saving vs fp32", 1 - 1 / smaller("trim-vocab-fp16"), "(info)", True),
        ("trim-vocab-fp16 test prediction agreement", agreement("trim-vocab-fp16"), "(info)", True),
        ("torch-int8 p50 speed-up vs torch fp32", speedup("torch-int8"), "(info)", True),
        ("bf16-compute p50 speed-up vs torch fp32", speedup("bf16-compute"), "(info)", True),
    ]


if __name__ == "__main__":
    sys.exit(main())
