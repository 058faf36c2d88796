"""Run a recipe: data -> model -> stages -> exports -> report, resumable stage by stage.

Run folder layout:

    OUT/stages/01-<name>/   the stage's artifact (HF folder, or its StageResult.artifact format)
                            + metrics.json + test_logits.npy
    OUT/exports/<format>/   model.onnx (or HF folder) + config + tokenizer + metrics.json
    OUT/floor/              the TF-IDF + logistic regression floor, measured like any artifact
    OUT/report.json, report.md, accuracy_vs_latency.png, accuracy_vs_size.png

Each folder is written under a temp name and renamed when complete (`artifacts.atomic`), so a
folder that exists is finished. Run again with the same OUT and finished stages are skipped; a
stage whose recipe changed since it ran is an error rather than silently reused. Who may write
into OUT, and the layout itself, are `runfolder.RunFolder`'s.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifacts, distributed
from .compute import Compute, resolve_device
from .console import trainer_progress
from .data import Splits, load_splits
from .export import export_checked
from .measure import bench
from .measure.alternate import compact
from .measure.floor import KIND as FLOOR_KIND, fit_floor
from .measure.metrics import evaluate, parity
from .measure.predictors import batched_logits
from .profile import eval_config, fill_max_length, profile_data
from .recipe import FROM_MODEL, EvalConfig, Recipe
from .runfolder import RunFolder, failing_step as _failing_step, finished as _finished, fingerprint as _fingerprint
from .runfolder import reuse_or_run as _reuse_or_run, write_json as _write_json
from .stage import METHODS, Artifact, StageContext


def measure(artifact: Path, splits: Splits, ev: EvalConfig, log: Callable[[str], None], source_logits=None,
            pred=None, logits=None, device: str = "cpu", against: tuple[str, Path] | None = None) -> tuple[dict, np.ndarray]:
    """Evaluate `artifact` on the test split, then benchmark it in a fresh process. `pred` and its
    test `logits`, when the caller has them already (an export's parity check), are not recomputed.
    `against` (the baseline's name and folder; the artifact itself for the baseline's own row) is
    loaded beside it and timed alternately: the row's speed-up (measure/alternate.py).
    `device: cuda` evaluates a torch model on the GPU; the batch-1 checks and the benchmark stay on
    the CPU (they measure the artifact as it will be deployed, and compare across rows)."""
    pred = pred or artifacts.load_predictor(artifact, ev.max_length, splits.label_names)
    on_gpu = device == "cuda" and pred.kind == "torch" and logits is None
    if on_gpu:
        pred.to(device)
    metrics, logits = evaluate(pred, splits.test, ev.batch_size, progress=f"evaluating {artifact.name}", logits=logits)
    if on_gpu:
        pred.to("cpu")
    metrics["eval_device"] = device if on_gpu else "cpu"
    if source_logits is not None:
        metrics["parity"] = parity(source_logits, logits)
    texts = splits.test.texts[: ev.bench_texts]
    # Dynamic int8 computes its activation scales over the whole batch, so a text's prediction can
    # depend on its batch-mates: how often does a text alone get the label it got in its batch?
    alone = batched_logits(pred, texts, batch_size=1, progress=f"batch-1 predictions {artifact.name}")
    metrics["batch1_agreement"] = float((alone.argmax(1) == logits[: len(texts)].argmax(1)).mean())
    metrics["batch1_agreement_texts"] = len(texts)
    log(f"  accuracy {metrics['accuracy']:.4f}  f1 {metrics['f1_macro']:.4f}; benchmarking ({ev.latency_runs} runs)")
    base = against[1] if against else None
    if ev.isolate:
        del pred
        metrics |= bench.benchmark_in_subprocess(artifact, texts, ev.max_length, ev.latency_runs, ev.warmup, ev.batch_size, base)
    else:
        loader = None if base is None else (lambda: pred) if Path(base) == Path(artifact) else (
            lambda: artifacts.load_predictor(base, ev.max_length, splits.label_names))
        metrics |= bench.benchmark(pred, texts, ev.latency_runs, ev.warmup, ev.batch_size, against=loader) | {
            "peak_rss_note": "in-process"}
    if "speedup" in metrics:
        metrics["speedup"]["against"] = against[0]
    metrics["size_bytes"] = bench.artifact_size(artifact)
    noisy = " (noisy: the machine was busy; compare with care)" if metrics.get("noisy") else ""
    speed = (f"  speed-up {compact(metrics['speedup'], itself=Path(base) == Path(artifact))} vs {against[0]}"
             if "speedup" in metrics else "")
    log(f"  p50 {metrics['latency_ms_p50']:.2f} ms{noisy}{speed}  size {metrics['size_bytes'] / 2**20:.1f} MiB")
    return metrics, logits


def run(recipe: Recipe, out: Path, log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Run `recipe` into the run folder `out` (see `RunFolder`: a user's non-empty folder only with
    `overwrite`; never the model's or the data's folder; one run at a time)."""
    if getattr(recipe, "task", "classify") == "generate":  # hook (decoders, issue 14)
        from .decoder.runner import run as run_generate

        return run_generate(recipe, out, log, overwrite)
    rf = RunFolder(out)
    # hook (distributed.py): under torchrun every rank walks the recipe; rank 0 alone owns, writes and measures
    compute = Compute(resolve_device(recipe.device, f"{recipe.source}: device"), recipe.trainer, log)
    distributed.init(compute.device)
    if not distributed.is_main():
        return _run(recipe, rf, compute, _silent)
    with rf.owned(recipe, overwrite):
        return _run(recipe, rf, compute, log)


def _run(recipe: Recipe, rf: RunFolder, compute: Compute, log: Callable[[str], None]) -> dict:
    from .report import write_report

    out, main = rf.root, distributed.is_main()
    # Nothing is written until the output folder, the data and every finished folder's recipe
    # are known good: a rejected run leaves OUT exactly as it was.
    splits = load_splits(recipe.data)
    stage_dirs = rf.check_finished(recipe, splits)
    for st in recipe.stages:  # a global batch that does not split across the processes fails now, not mid-run
        if hasattr(st.config, "batch_size"):
            distributed.check_batch(st.config.batch_size, f"{recipe.source}: stages {st.name}")
    if main:
        rf.open(recipe)
    distributed.barrier()
    log(f"data {splits.source}: {splits.stats}")
    data_profile = profile_data(splits, recipe.model, log)
    stages = [fill_max_length(s, data_profile, log) for s in recipe.stages]
    ev = eval_config(recipe.eval, stages)
    rows: list[dict] = []
    source: str | Path = recipe.model
    source_logits = None

    folders: dict[str, Path] = {}

    def baseline() -> tuple[str, Path] | None:
        # every row's speed-up is timed alternately with the baseline's folder, once it exists
        name = recipe.baseline_name
        return (name, folders[name]) if name in folders else None

    for i, stage in enumerate(stages):
        folder = folders[stage.name] = stage_dirs[i]
        if stage.source:  # `from: model` starts again from the recipe's model
            source = recipe.model if stage.source == FROM_MODEL else folders[stage.source]
        fp = _fingerprint(recipe, splits, i)
        if main:
            done = _reuse_or_run(folder, fp, f"stage {stage.name} ({stage.method})", f"stage {stage.name}", out, log,
                                 lambda: _run_stage(stage, source, splits, ev, rf, folder, fp, log, compute, baseline()))
        elif not (done := _finished(folder, fp)):  # another rank trains alongside rank 0, then reads its folder
            with _failing_step(f"stage {stage.name} ({stage.method}) on rank {distributed.rank()}", out):
                _follow_stage(stage, source, splits, ev, rf.checkpoint_dir(folder, fp), rf.cache, compute)
            done = _finished(folder, fp)
        rows.append(_row(stage.name, stage.method, folder, rf, done))
        source, source_logits = folder, np.load(folder / "test_logits.npy", allow_pickle=False)

    if not main:  # exports, the floor and the report are rank 0's alone
        distributed.finish()
        return {}
    if recipe.export and not recipe.stages:  # exporting a fine-tuned folder given as `model`
        pred = artifacts.load_predictor(source, ev.max_length, splits.label_names)
        _, source_logits = evaluate(pred, splits.test, ev.batch_size, progress="source logits")
        del pred
    for fmt in recipe.export:
        folder = rf.export_dir(fmt)
        fp = _fingerprint(recipe, splits, None, fmt)
        done = _reuse_or_run(folder, fp, f"export {fmt}", f"export {fmt}", out, log,
                             lambda: _export(source, source_logits, fmt, folder, fp, splits, ev, log, baseline()))
        rows.append(_row(fmt, "export", folder, rf, done))

    report = {
        "recipe": recipe.source,
        "data": {"source": splits.source, **splits.stats, "labels": splits.label_names},
        "hardware": bench.hardware(),
        "baseline": recipe.baseline_name,
        "eval_batch_size": recipe.eval.batch_size,
        "stages": rows,
        "profile": data_profile,
        "compute": {"device": compute.device, "world_size": distributed.world_size(),
                    "effective_batch_size": {r["name"]: r["metrics"]["effective_batch_size"]
                                             for r in rows if "effective_batch_size" in r["metrics"]}},
    }
    if ev.floor:  # the classical baseline every transformer row has to beat
        report["floor"] = _floor_row(splits, ev, rf, log, _fingerprint(recipe, splits, -1, "floor"), baseline())
    write_report(report, rf)
    distributed.finish()
    return report


def _export(source, source_logits, fmt: str, folder: Path, fp: dict, splits: Splits, ev: EvalConfig, log, against=None) -> dict:
    model, tokenizer = artifacts.load_model(source, splits.label_names)
    pred, logits, _ = export_checked(model, tokenizer, fmt, folder, splits.test.texts, ev.max_length,
                                     source_logits, splits.label_names, ev.batch_size)
    del model
    metrics, _ = measure(folder, splits, ev, log, source_logits, pred=pred, logits=logits, against=against)
    done = {"metrics": metrics, "fingerprint": fp, "source": str(source)}
    _write_json(folder / "metrics.json", done)
    return done


def _run_stage(stage, source, splits: Splits, ev: EvalConfig, rf: RunFolder, folder: Path, fp: dict, log,
               compute: Compute | None = None, against: tuple[str, Path] | None = None) -> dict:
    from transformers import set_seed

    method = METHODS[stage.method]
    # Seed before loading: a new classification head is initialised inside from_pretrained,
    # before the Trainer seeds anything; unseeded, reruns of one recipe differed by ~2 points.
    set_seed(getattr(stage.config, "seed", 42))
    model, tokenizer = artifacts.load_model(source, splits.label_names)
    ckpt = rf.checkpoint_dir(folder, fp)
    with rf.atomic(folder, fp) as tmp:
        start = time.perf_counter()
        ctx = StageContext(splits, tmp / "_work", log, cache_dir=rf.cache, checkpoint_dir=ckpt,
                           callbacks=[trainer_progress(log), *([compute.callback()] if compute else [])],
                           max_length=ev.max_length)
        result = method.apply(model, tokenizer, stage.config, ctx)
        distributed.barrier()  # every rank is done training (and with the checkpoints) before rank 0 writes
        info = dict(result.facts)
        info["stage_seconds"] = time.perf_counter() - start
        info |= artifacts.save(result.artifact, tmp, result.model, result.tokenizer)
        shutil.rmtree(tmp / "_work", ignore_errors=True)
        del model, result
        if against and against[1] == folder:  # the baseline itself: against its own (not yet renamed) folder
            against = (against[0], tmp)
        metrics, logits = measure(tmp, splits, ev, log, device=compute.device if compute else "cpu", against=against)
        np.save(tmp / "test_logits.npy", logits, allow_pickle=False)
        done = {"metrics": metrics | info, "fingerprint": fp, "source": str(source)}
        _write_json(tmp / "metrics.json", done)
    shutil.rmtree(ckpt, ignore_errors=True)  # the stage is finished: its checkpoints are spent
    distributed.barrier()  # the folder is in place: the other ranks may read it
    return done


def _follow_stage(stage, source, splits: Splits, ev: EvalConfig, checkpoint_dir: Path, cache_dir: Path, compute: Compute) -> None:
    """Rank >= 1 (distributed.py): take part in the stage's training (same seed, same model, same
    method), then wait while rank 0 saves, measures and renames the stage folder.

    The model trained here is thrown away (DDP keeps it identical to rank 0's). Scratch goes to
    a private temp folder, never into the run folder; the run-wide cache and the checkpoint folder
    are shared with rank 0, which alone writes them (the Trainer saves per-rank RNG state beside
    rank 0's checkpoint, as it is designed to). Methods that do not train are left to rank 0.
    """
    import tempfile

    from transformers import set_seed

    from .train.config import TrainConfig

    if isinstance(stage.config, TrainConfig):
        set_seed(getattr(stage.config, "seed", 42))  # as rank 0 does: the new head starts identical
        model, tokenizer = artifacts.load_model(source, splits.label_names)
        work = Path(tempfile.mkdtemp(prefix=f"slimtune-rank{distributed.rank()}-"))
        try:
            ctx = StageContext(splits, work, _silent, cache_dir=cache_dir, checkpoint_dir=checkpoint_dir,
                               callbacks=[compute.callback()], max_length=ev.max_length)
            METHODS[stage.method].apply(model, tokenizer, stage.config, ctx)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()  # everyone has trained
    distributed.barrier()  # rank 0 has written the stage folder


def _silent(msg: str) -> None:
    pass


def _floor_row(splits: Splits, ev: EvalConfig, rf: RunFolder, log, fingerprint: dict, against=None) -> dict:
    """Fit (or reuse) the TF-IDF floor in OUT/floor and measure it like any artifact; a report row."""
    folder = rf.floor
    done = _finished(folder, fingerprint)
    if done:
        log("floor (TF-IDF + logistic regression): measured earlier, reused")
    else:
        log("floor: TF-IDF (word 1-2-grams or character 1-3-grams) + logistic regression, chosen on validation")
        with rf.atomic(folder, fingerprint) as tmp:
            vec, clf, info = fit_floor(splits)
            log(f"floor: {info['why']}")
            artifacts.save(Artifact("floor", {"label_names": splits.label_names, "info": info}), tmp, (vec, clf), None)
            metrics, _ = measure(tmp, splits, ev, log, against=against)
            done = {"metrics": metrics | info, "fingerprint": fingerprint}
            _write_json(tmp / "metrics.json", done)
    return {"name": "tfidf-floor", "method": FLOOR_KIND, "artifact": rf.relative(folder), "metrics": done["metrics"]}


def _row(name: str, method: str, folder: Path, rf: RunFolder, done: dict) -> dict:
    return {"name": name, "method": method, "artifact": rf.relative(folder), "metrics": done["metrics"]}
