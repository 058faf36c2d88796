"""Run a recipe of any task: data -> stages -> artifacts -> measure -> exports -> report, resumable
stage by stage. What differs between tasks (splits, loading a model, measuring an artifact,
exports, report fields and Markdown) is asked of the recipe's Task (slimtune/tasks/).

Run folder layout:

    OUT/stages/01-<name>/   the stage's artifact (HF folder, or its StageResult.artifact format)
                            + metrics.json + what the task keeps for exports (classify: test_logits.npy,
                            generate: greedy.json)
    OUT/exports/<format>/   the export + metrics.json
    OUT/floor/              classify: the TF-IDF + logistic regression floor, measured like any artifact
    OUT/report.json, report.md (+ the task's plots: accuracy_vs_latency.png, accuracy_vs_size.png)

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

from . import artifacts, distributed, tasks
from .compute import Compute, resolve_device
from .console import trainer_progress
from .errors import SlimtuneError
from .measure import bench
from .measure.passes import Passes
from .recipe import FROM_MODEL, Recipe
from .report import write_report
from .runfolder import RunFolder, failing_step as _failing_step, finished as _finished, fingerprint as _fingerprint
from .runfolder import reuse_or_run as _reuse_or_run, write_json as _write_json
from .stage import StageContext, method


def run(recipe: Recipe, out: Path, log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Run `recipe` into the run folder `out` (see `RunFolder`: a user's non-empty folder only with
    `overwrite`; never the model's or the data's folder; one run at a time)."""
    task = tasks.get(recipe.task)
    rf = RunFolder(out)
    compute = None
    if task.compute:
        # hook (distributed.py): under torchrun every rank walks the recipe; rank 0 alone owns, writes and measures
        compute = Compute(resolve_device(recipe.device, f"{recipe.source}: device"), recipe.trainer, log)
        distributed.init(compute.device)
        if not distributed.is_main():
            return _run(recipe, task, rf, compute, _silent)
    elif distributed.active():
        raise SlimtuneError(f"{recipe.source}: a {task.name} recipe runs in one process; start it without torchrun or --nproc")
    with rf.owned(recipe, overwrite):
        return _run(recipe, task, rf, compute, log)


def _run(recipe: Recipe, task, rf: RunFolder, compute: Compute | None, log: Callable[[str], None]) -> dict:
    out, main = rf.root, distributed.is_main()
    # Nothing is written until the output folder, the data and every finished folder's recipe
    # are known good: a rejected run leaves OUT exactly as it was.
    splits = task.load_splits(recipe.data)
    stage_dirs = rf.check_finished(recipe, splits)
    for st in recipe.stages:  # a global batch that does not split across the processes fails now, not mid-run
        if compute and hasattr(st.config, "batch_size"):
            distributed.check_batch(st.config.batch_size, f"{recipe.source}: stages {st.name}")
    if main:
        rf.open(recipe)
    distributed.barrier()
    log(f"data {splits.source}: {splits.stats}")
    data_profile, stages, ev = task.prepare(recipe, splits, log)  # the default lengths, filled from the data
    rows: list[dict] = []
    source: str | Path = recipe.model
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
                                 lambda: _run_stage(stage, source, splits, ev, rf, folder, fp, log, compute, baseline(), task))
        elif not (done := _finished(folder, fp)):  # another rank trains alongside rank 0, then reads its folder
            with _failing_step(f"stage {stage.name} ({stage.method}) on rank {distributed.rank()}", out):
                _follow_stage(stage, source, splits, ev, rf.checkpoint_dir(folder, fp), rf.cache, compute, task)
            done = _finished(folder, fp)
        rows.append(_row(stage.name, stage.method, folder, rf, done))
        source = folder

    if not main:  # exports, the extra rows and the report are rank 0's alone
        distributed.finish()
        return {}
    reference = task.export_reference(recipe, source, bool(recipe.stages), splits, ev) if recipe.export else None
    for fmt in recipe.export:
        folder = rf.export_dir(fmt)
        fp = _fingerprint(recipe, splits, None, fmt)
        done = _reuse_or_run(folder, fp, f"export {fmt}", f"export {fmt}", out, log,
                             lambda: _export(task, source, reference, fmt, folder, fp, splits, recipe, ev, rf, log, baseline()))
        rows.append(_row(fmt, "export", folder, rf, done))

    report = {
        "recipe": recipe.source,
        "data": task.data_summary(splits),
        "hardware": bench.hardware(),
        "baseline": recipe.baseline_name,
        "stages": rows,
        "profile": data_profile,
    }
    report |= task.report_fields(recipe, splits, ev, rf, log, baseline(), rows, compute)
    write_report(report, rf, task)
    distributed.finish()
    return report


def _export(task, source, reference, fmt: str, folder: Path, fp: dict, splits, recipe, ev, rf: RunFolder, log,
            against=None) -> dict:
    start = time.perf_counter()
    metrics = task.export(source, reference, fmt, folder, splits, recipe, ev, rf, log, against)
    seconds = time.perf_counter() - start
    if "export_seconds" in metrics:  # the task timed its conversion: the rest was measuring it
        metrics["eval_seconds"] = round(seconds - metrics["export_seconds"], 3)
    else:
        metrics["export_seconds"] = round(seconds, 3)  # conversion and measuring together
    done = {"metrics": metrics, "fingerprint": fp, "source": str(source)}
    _write_json(folder / "metrics.json", done)
    return done


def _run_stage(stage, source, splits, ev, rf: RunFolder, folder: Path, fp: dict, log,
               compute: Compute | None, against: tuple[str, Path] | None, task) -> dict:
    from transformers import set_seed

    apply = method(task.name, stage.method).apply
    # Seed before loading: a new classification head is initialised inside from_pretrained,
    # before the Trainer seeds anything; unseeded, reruns of one recipe differed by ~2 points.
    set_seed(getattr(stage.config, "seed", 42))
    model, tokenizer = task.load_model(source, splits)
    ckpt = rf.checkpoint_dir(folder, fp)
    with rf.atomic(folder, fp) as tmp:
        start = time.perf_counter()
        passes = Passes()  # what max_minutes does not bound: teacher logits, saving, measuring (report.md)
        ctx = StageContext(splits, tmp / "_work", log, cache_dir=rf.cache, checkpoint_dir=ckpt,
                           callbacks=[trainer_progress(log), *([compute.callback()] if compute else [])],
                           max_length=ev.max_length, teacher=Path(str(source)), passes=passes)
        result = apply(model, tokenizer, stage.config, ctx)
        distributed.barrier()  # every rank is done training (and with the checkpoints) before rank 0 writes
        info = dict(result.facts)
        info["stage_seconds"] = time.perf_counter() - start
        with passes.timed("export"):
            info |= artifacts.save(result.artifact, tmp, result.model, result.tokenizer)
        shutil.rmtree(tmp / "_work", ignore_errors=True)
        del model, result
        if against and against[1] == folder:  # the baseline itself: against its own (not yet renamed) folder
            against = (against[0], tmp)
        with passes.timed("eval"):
            metrics = task.measure_stage(tmp, splits, ev, log, device=compute.device if compute else "cpu", against=against)
        done = {"metrics": metrics | info | passes.metrics(), "fingerprint": fp, "source": str(source)}
        _write_json(tmp / "metrics.json", done)
    shutil.rmtree(ckpt, ignore_errors=True)  # the stage is finished: its checkpoints are spent
    distributed.barrier()  # the folder is in place: the other ranks may read it
    return done


def _follow_stage(stage, source, splits, ev, checkpoint_dir: Path, cache_dir: Path, compute: Compute, task) -> None:
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
        model, tokenizer = task.load_model(source, splits)
        work = Path(tempfile.mkdtemp(prefix=f"slimtune-rank{distributed.rank()}-"))
        try:
            ctx = StageContext(splits, work, _silent, cache_dir=cache_dir, checkpoint_dir=checkpoint_dir,
                               callbacks=[compute.callback()], max_length=ev.max_length, teacher=Path(str(source)))
            method(task.name, stage.method).apply(model, tokenizer, stage.config, ctx)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    distributed.barrier()  # everyone has trained
    distributed.barrier()  # rank 0 has written the stage folder


def _silent(msg: str) -> None:
    pass


def _row(name: str, method: str, folder: Path, rf: RunFolder, done: dict) -> dict:
    return {"name": name, "method": method, "artifact": rf.relative(folder), "metrics": done["metrics"]}
