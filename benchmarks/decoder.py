"""Decoder benchmark (issue 14): recipes/generate.yaml on the real SmolLM2-135M-Instruct, plus depth
pruning 30 -> 20 layers with distillation recovery, all in one run, ratios from that one run.

    python benchmarks/decoder.py [--out runs/bench-decoder] [--lora-minutes 20] [--prune-minutes 15]

Stages: untuned (baseline) -> lora (training budget --lora-minutes) -> pruned (from lora: the run of
10 consecutive layers closest in angle removed, recovered --prune-minutes with distillation from
lora's top-k logits)
-> tuned (lora again, measured last so the GenAI exports are of it) -> genai-int4, genai-fp32.

Targets: LoRA lowers held-out response perplexity below the untuned model's; GenAI int4 >= 5x
smaller than fp32 and >= 4x the decode tokens/s of transformers fp32, perplexity within 10% of
fp32; GenAI fp32 greedy tokens identical to torch on every prompt measured; pruned perplexity
within 15% of the unpruned fine-tuned model's, decode >= 1.4x faster.

The pruned decode speed-up is measured three ways, each pruned against tuned in the same runtime:
transformers fp32 (the stages' own metrics), and GenAI fp32 and GenAI int4 (both models requantized
by the builder with the same options, so neither has the grid's extra MatMuls: grid.py), exported
after the run and timed in fresh processes, alternating, median of --rounds rounds. Counting only
the weights read per token (30 x 3.54M layer weights and the 28.3M-weight output layer, against
20 x 3.54M + 28.3M) predicts 1.36x; each layer also costs a fixed number of operator calls per token
(Python module calls in transformers, kernel launches in ONNX Runtime), which the pruned model makes
a third fewer of, so measured ratios can exceed it (docs/figures.md, 2026-11-25 evening).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "runs" / "bench-decoder"))
    ap.add_argument("--lora-minutes", type=float, default=20)
    ap.add_argument("--prune-minutes", type=float, default=15)
    ap.add_argument("--train-samples", type=int, default=None, help="subsample the training pairs (teacher logits cost a forward each)")
    ap.add_argument("--test-samples", type=int, default=None, help="held-out pairs scored for perplexity (recipe: 120)")
    ap.add_argument("--answer-prompts", type=int, default=None, help="greedy answers per artifact (recipe: 24)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timing rounds of pruned vs tuned in GenAI")
    args = ap.parse_args()
    raw = yaml.safe_load((REPO / "recipes" / "generate.yaml").read_text())
    if args.train_samples:
        raw["data"]["max_train_samples"] = args.train_samples
    if args.test_samples:
        raw["data"]["max_test_samples"] = args.test_samples
    if args.answer_prompts:
        raw["eval"]["answer_prompts"] = args.answer_prompts
    lora = next(s for s in raw["stages"] if s["method"] == "lora")
    lora["max_minutes"] = args.lora_minutes
    raw["stages"] += [
        {"name": "pruned", "method": "prune_layers", "from": "lora", "layers": 10, "score": "block", "alpha": 0.5,
         "batch_size": 8, "max_length": 128, "learning_rate": 2e-4, "max_steps": 400, "max_minutes": args.prune_minutes},
        {"name": "tuned", "method": "baseline", "from": "lora"},
    ]
    from slimtune.model.folders import quiet_libraries
    from slimtune.recipe import parse
    from slimtune.runner import run

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)  # a benchmark measures a whole run, never a resume
    quiet_libraries()
    load_before = os.getloadavg()
    start = time.perf_counter()
    recipe = parse(raw, "recipes/generate.yaml + pruned")
    report = run(recipe, out, log=lambda m: print(m, flush=True))
    wall = time.perf_counter() - start
    m = {s["name"]: s["metrics"] for s in report["stages"]}
    genai = pruned_vs_tuned_in_genai(out, report, recipe.data, args.rounds)
    u, t, p, q, f = m["untuned"], m["tuned"], m["pruned"], m["genai-int4"], m["genai-fp32"]
    checks = [
        ("LoRA perplexity / untuned perplexity", t["perplexity"] / u["perplexity"], "< 1", t["perplexity"] < u["perplexity"]),
        ("GenAI int4 size: fp32 folder / int4", f["size_bytes"] / q["size_bytes"], ">= 5x", f["size_bytes"] / q["size_bytes"] >= 5),
        ("GenAI int4 decode tok/s / transformers fp32", q["decode_tokens_per_s"] / t["decode_tokens_per_s"], ">= 4x",
         q["decode_tokens_per_s"] / t["decode_tokens_per_s"] >= 4),
        ("GenAI int4 perplexity / GenAI fp32", q["perplexity"] / f["perplexity"], "<= 1.10", q["perplexity"] / f["perplexity"] <= 1.10),
        ("GenAI fp32 prompts with identical first 32 greedy tokens", f["parity"]["greedy_identical"] / f["parity"]["greedy_prompts"],
         "= 1", f["parity"]["greedy_identical"] == f["parity"]["greedy_prompts"]),
        ("pruned (20 layers) perplexity / tuned (30)", p["perplexity"] / t["perplexity"], "<= 1.15", p["perplexity"] / t["perplexity"] <= 1.15),
        ("pruned decode tok/s / tuned, transformers fp32", p["decode_tokens_per_s"] / t["decode_tokens_per_s"],
         ">= 1.4x", p["decode_tokens_per_s"] / t["decode_tokens_per_s"] >= 1.4),
        *((f"pruned decode tok/s / tuned, {fmt} (median of {args.rounds} alternating rounds)", r, ">= 1.4x", r >= 1.4)
          for fmt, r in genai.items()),
        ("LoRA training steps in its budget", m["lora"]["train_steps"], f"(info: {args.lora_minutes} min)", True),
        ("LoRA seconds per step (8 pairs)", m["lora"]["seconds_per_step"], "(info)", True),
        ("pruning recovery steps in its budget", p.get("train_steps", 0), f"(info: {args.prune_minutes} min)", True),
        ("first layer of the removed block", p["dropped_layers"][0], "(info)", True),
        ("whole run wall time (min)", wall / 60, "(info)", True),
    ]
    hw = report["hardware"]
    print(f"\nmachine: {hw['cpu']}, {hw['cores_logical']} cores, torch threads {hw['torch_threads']}; load average "
          f"{load_before[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end; timing: batch 1, median over "
          f"{report['eval']['speed_prompts']} prompts x {report['eval']['speed_new_tokens']} tokens per artifact")
    bad = 0
    for name, value, target, ok in checks:
        bad += not ok
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value:.3f} (target {target})")
    print(f"report: {out / 'report.md'}")
    return 1 if bad else 0


def pruned_vs_tuned_in_genai(out: Path, report: dict, data, rounds: int) -> dict[str, float]:
    """Decode tokens/s of pruned / tuned exported to GenAI fp32 and int4 (the builder's own k_quant
    at block 32 for both: the grid-kept export of tuned would be slower per layer, grid.py), timed in
    fresh processes, pruned and tuned alternating; median of the per-round ratios."""
    from slimtune.decoder.bench import speed_in_subprocess
    from slimtune.decoder.data import load_pairs
    from slimtune.decoder.genai import export_genai
    from slimtune.decoder.int4 import Int4Config
    from slimtune.measure.alternate import alternate, compact

    splits = load_pairs(data)
    prompts = splits.test.prompts[: report["eval"]["speed_prompts"]]
    folders = {s["name"]: out / s["artifact"] for s in report["stages"]}
    ratios = {}
    requantized = Int4Config(grid="requantize").builder_options()  # k_quant, block 32, int8 activations
    for fmt, options in (("genai-fp32", None), ("genai-int4", requantized)):
        built = {}
        for name in ("pruned", "tuned"):
            built[name] = export_genai(folders[name], fmt, out / "pruned-vs-tuned" / f"{name}-{fmt}", out / "cache" / "genai", options)

        def block(name: str):
            def run(r: int) -> list[float]:
                rate = speed_in_subprocess(built[name], prompts, splits.system, report["eval"]["speed_new_tokens"])["decode_tokens_per_s"]
                print(f"{fmt} round {r + 1}: {name} {rate:.1f} tok/s", flush=True)
                return [1.0 / rate]  # seconds per token: lower is faster, as alternate() expects

            return run

        s = alternate(block("tuned"), block("pruned"), rounds)  # tuned is the baseline: ratio = pruned's speed-up
        print(f"{fmt}: {compact(s)}" + (f" ({s['noisy_reason']})" if s["noisy"] else ""), flush=True)
        ratios[fmt] = s["speedup"]
    return ratios


if __name__ == "__main__":
    sys.exit(main())
