"""The time no stage's `max_minutes` bounds: teacher outputs, evaluation passes, exports.

`max_minutes` stops a stage's training loop (train/loop.py); what runs around the loop does not
stop: the teacher's logits over the training texts (train/teacher.py), measuring every row (the
test split, the batch-1 checks, the benchmark and its alternated timing against the baseline),
saving and converting artifacts. A job sized by its max_minutes alone runs over its budget by that
much, and by more the larger the data.

- `Passes` adds up one stage's seconds by kind; they go into its metrics (`teacher_seconds`,
  `eval_seconds`, `export_seconds`, beside the training loop's `train_seconds`);
- `markdown` writes report.md's "Time in seconds" section from the rows' metrics;
- `estimate` guesses those seconds before anything runs, from the data's size and lengths and the
  model's non-embedding parameters at an assumed CPU rate (`FLOPS`): one line at the start of a
  run, labelled an estimate, with a warning when the recipe's `minutes:` cannot hold the job.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

# An assumed rate, not measured per machine: MiniLM-L6 fp32 at batch 32 ran ~100-130 texts/s of
# Rotten Tomatoes on 2 cores (docs/figures.md), ~100 GFLOP/s counting 2 FLOPs per non-embedding
# parameter per token; halved for a machine shared with other jobs.
FLOPS = 50e9
BATCH1_SLOWER = 3.0  # a batch-1 forward costs about this many times a batched one per token (padding aside)
ISOLATE_SECONDS = 15.0  # a fresh benchmark process: importing torch and transformers, loading the artifact
EXPORT_SECONDS = 20.0  # one export or conversion (ONNX export, int8 quantization, parity load)
COLUMNS = ("train", "teacher", "eval", "export", "other")


@dataclass
class Passes:
    """Seconds by kind (teacher, eval, export) spent by one stage outside its training loop."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, kind: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"{kind}_seconds": round(s, 3) for kind, s in self.seconds.items()}


def row_seconds(m: dict) -> dict[str, float | None]:
    """A report row's seconds per column. `other`: the stage's own work outside training and the
    teacher (scoring, surgery, conversion inside a stage); an export row has export and eval only."""
    train, teacher = float(m.get("train_seconds") or 0.0), float(m.get("teacher_seconds") or 0.0)
    stage = m.get("stage_seconds")
    out = {"train": train if stage is not None else None, "teacher": teacher if stage is not None else None,
           "eval": m.get("eval_seconds"), "export": m.get("export_seconds"),
           "other": max(0.0, float(stage) - train - teacher) if stage is not None else None}
    out["total"] = sum(v for v in out.values() if v is not None)
    return out


def markdown(report: dict) -> list[str]:
    """report.md's "Time in seconds" section: one row per stage, export and the floor."""
    rows = report.get("stages", []) + ([report["floor"]] if report.get("floor") else [])
    rows = [r for r in rows if any(f"{k}_seconds" in r["metrics"] for k in ("stage", "eval", "export"))]
    if not rows:
        return []
    lines = ["", "Time in seconds: `train` is the training loop, the only part a stage's max_minutes bounds; "
                 "`teacher` (teacher logits), `eval` (test split, batch-1 checks, benchmark), `export` (saving, "
                 "converting) and `other` (a stage's scoring, surgery or conversion) are not bounded. "
                 "A row reused from an earlier run shows the times of that run.", "",
             "| row | " + " | ".join(COLUMNS) + " | total |", "|---|" + "---|" * (len(COLUMNS) + 1)]
    sums = dict.fromkeys((*COLUMNS, "total"), 0.0)
    for r in rows:
        s = row_seconds(r["metrics"])
        for k, v in s.items():
            sums[k] += v or 0.0
        lines.append(f"| {r['name']} | " + " | ".join("–" if s[k] is None else f"{s[k]:.1f}" for k in (*COLUMNS, "total")) + " |")
    lines.append("| **all** | " + " | ".join(f"{sums[k]:.1f}" for k in (*COLUMNS, "total")) + " |")
    return lines


def model_size(folder: Path) -> tuple[int, int, float] | None:
    """(non-embedding parameters, layers, the FFN's share of a layer) from config.json's sizes: the
    parameters a token's forward multiplies by (an embedding lookup is free); None when the config
    does not give them."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    h, n, i = cfg.get("hidden_size"), cfg.get("num_hidden_layers"), cfg.get("intermediate_size")
    if not (h and n):
        return None
    i = i or 4 * h
    return int(n) * (4 * h * h + 2 * h * i), int(n), 2 * h * i / (4 * h * h + 2 * h * i)


def stage_scales(stages, layers: int, ffn_share: float) -> tuple[list[float], list[float]]:
    """Each stage's model size as a share of the starting model's (fewer layers: `layers: [...]`;
    FFN neurons removed: `ffn: 0.5`), and the sizes of the teachers whose logits are computed
    (distillation always; recovery after surgery when alpha < 1: the model before the stage)."""
    scale, rows, teachers = 1.0, [], []
    for s in stages:
        before = scale
        kept = getattr(s.config, "layers", None)
        if isinstance(kept, (list, tuple)) and kept and layers:
            scale *= len(kept) / layers
            layers = len(kept)
        ffn = getattr(s.config, "ffn", 0) or 0
        if isinstance(ffn, (int, float)) and 0 < ffn < 1:
            scale *= 1 - ffn * ffn_share
        if s.method == "distill" or getattr(s.config, "alpha", 1.0) < 1.0:
            teachers.append(before)
        rows.append(scale)
    return rows, teachers


def estimate(params: int, n_train: int, n_test: int, tokens: int, eval_tokens: int, teachers: list[float],
             rows: list[float], conversions: int, ev, against: bool) -> dict[str, float]:
    """Seconds of teacher logits, evaluation and exports a run will take (an estimate), for a model
    of `params` non-embedding parameters; `teachers` and `rows` are each pass's model size as a share
    of it. Quantization's speed-up is not counted: an int8 row is priced as fp32 (an upper estimate)."""
    per_token = 2.0 * params / FLOPS
    batch1 = ev.bench_texts + ev.warmup + ev.latency_runs * (2 if against else 1)  # alternated: the baseline too
    row = (n_test + ev.batch_size * 9) * eval_tokens * per_token + batch1 * BATCH1_SLOWER * eval_tokens * per_token
    fixed = ISOLATE_SECONDS if getattr(ev, "isolate", False) else 0.0
    return {"teacher": sum(teachers) * n_train * tokens * per_token, "eval": sum(r * row + fixed for r in rows),
            "export": conversions * EXPORT_SECONDS}


def estimate_lines(recipe, stages, splits, profile: dict, ev, model_folder: Path) -> list[str]:
    """The start-of-run lines: the estimate of the time max_minutes do not bound, and a warning when
    the recipe's `minutes:` (the whole job's budget) is smaller than it plus the stages' max_minutes."""
    size = model_size(model_folder)
    if size is None or not profile.get("splits", {}).get("train"):
        return []
    params, layers, ffn_share = size
    tokens = profile["splits"]["train"]["tokens"]["p50"]
    lengths = [getattr(s.config, "max_length", None) or tokens for s in stages]
    tokens = min([tokens, *lengths])
    eval_tokens = min(profile["splits"]["train"]["tokens"]["p50"], ev.max_length or tokens)
    scales, teachers = stage_scales(stages, layers, ffn_share)
    last = scales[-1] if scales else 1.0
    scales += [last] * len(recipe.export) + ([0.0] if getattr(ev, "floor", False) else [])  # the floor: no forward
    rows = len(scales)
    trains = [s for s in stages if hasattr(s.config, "max_minutes")]
    conversions = len(recipe.export) + len(stages) - len(trains)
    est = estimate(params, len(splits.train), len(splits.test), tokens, eval_tokens, teachers, scales, conversions, ev,
                   against=bool(stages))
    total = sum(est.values())
    bounded = sum(s.config.max_minutes for s in trains if s.config.max_minutes > 0)
    unbounded = [s.name for s in trains if not s.config.max_minutes > 0]
    line = (f"time not bounded by max_minutes (an estimate): ~{total / 60:.1f} min (teacher logits ~{est['teacher']:.0f} s, "
            f"evaluating {rows} rows ~{est['eval']:.0f} s, {conversions} exports/conversions ~{est['export']:.0f} s; from "
            f"{len(splits.train)} training and {len(splits.test)} test texts of ~{tokens} tokens and {params:,} "
            f"non-embedding parameters at an assumed {FLOPS / 1e9:.0f} GFLOP/s); with the stages' max_minutes "
            f"({bounded:g} min): ~{bounded + total / 60:.1f} min")
    if unbounded:
        line += f"; stages {', '.join(unbounded)} have no max_minutes: their training is not counted"
    out = [line]
    budget = getattr(recipe, "minutes", None)
    if budget and bounded + total / 60 > budget:
        out.append(f"warning: {recipe.source}: minutes: {budget:g} (the job's budget), but the stages' max_minutes "
                   f"({bounded:g}) and the estimate of the time they do not bound (~{total / 60:.1f}) add up to "
                   f"~{bounded + total / 60:.1f} min: lower max_minutes or data.max_train_samples")
    return out
