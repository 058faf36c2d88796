"""Run a `task: generate` recipe: pairs -> causal LM -> stages -> GenAI exports -> report.

The run folder has the encoder run's layout and rules (slimtune/runfolder.py): one atomically
written folder per finished stage (`stages/NN-name/`: HF folder + metrics.json + greedy.json)
and export (`exports/genai-int4/`), fingerprinted by the recipe and the data, skipped when
finished, an error when the recipe changed under them.

Every artifact is measured the same way on the held-out test pairs (measure.py): response
perplexity, greedy answers (token F1, exact match, samples), time to first token and decode
tokens/s at batch 1 in a fresh process, peak RSS and size. An export's parity is its first
`parity_tokens` greedy tokens against those of the stage it came from, prompt by prompt.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from .. import artifacts
from ..console import trainer_progress
from ..measure.bench import artifact_size, hardware
from ..runfolder import RunFolder, fingerprint as _fingerprint, reuse_or_run as _reuse_or_run
from ..runfolder import write_json as _write_json
from .bench import speed_in_subprocess
from .data import PairSplits, load_pairs
from .export import write as write_export
from .lm import load_causal_lm, load_decoder
from .measure import answer_quality, first_token_agreement, generation_speed, response_perplexity
from .profile import profile_data
from .recipe import FROM_MODEL, GenEvalConfig, GenRecipe
from .registry import GEN_METHODS, GenContext

GREEDY_FILE = "greedy.json"  # the greedy token ids of each answered prompt (what an export's parity compares)


def evaluate(dec, splits: PairSplits, ev: GenEvalConfig) -> tuple[dict, dict]:
    """Response perplexity and greedy answers (token F1, exact match, samples) of a loaded decoder
    on the test pairs, and its greedy ids per prompt: the quality half of `measure`."""
    start = time.perf_counter()
    metrics = response_perplexity(dec, splits.test, splits.system, ev.max_length)
    quality = answer_quality(dec, splits.test, splits.system, ev.answer_prompts, ev.max_new_tokens, ev.samples)
    greedy = quality.pop("_greedy_ids")
    metrics |= quality | {"eval_seconds": time.perf_counter() - start, "runtime": dec.kind,
                          "n_examples": len(splits.test)}
    return metrics, greedy


def measure(artifact: Path, splits: PairSplits, ev: GenEvalConfig, log: Callable[[str], None],
            source_greedy: dict | None = None) -> tuple[dict, dict]:
    """Metrics of one generative artifact, and its greedy ids per prompt."""
    dec = load_decoder(artifact)
    metrics, greedy = evaluate(dec, splits, ev)
    if source_greedy is not None:
        metrics["parity"] = first_token_agreement(source_greedy, greedy, ev.parity_tokens)
    if hasattr(dec, "num_params"):
        metrics["params"] = int(dec.num_params())
    log(f"  perplexity {metrics['perplexity']:.3f}  token F1 {metrics['token_f1']:.4f}  "
        f"exact {metrics['exact_match']:.4f}; timing {ev.speed_prompts} prompts x {ev.speed_new_tokens} tokens")
    prompts = list(dict.fromkeys(splits.test.prompts))[: ev.speed_prompts]
    if ev.isolate:
        del dec
        metrics |= speed_in_subprocess(artifact, prompts, splits.system, ev.speed_new_tokens)
    else:
        from ..measure.bench import peak_rss_mb

        metrics |= generation_speed(dec, prompts, splits.system, ev.speed_new_tokens) | {
            "peak_rss_mb": peak_rss_mb(), "peak_rss_note": "in-process"}
    metrics["size_bytes"] = artifact_size(artifact)
    log(f"  TTFT {metrics['ttft_ms']:.1f} ms  decode {metrics['decode_tokens_per_s']:.1f} tokens/s  "
        f"size {metrics['size_bytes'] / 2**20:.1f} MiB")
    return metrics, greedy


def run(recipe: GenRecipe, out: Path, log: Callable[[str], None] = print, overwrite: bool = False) -> dict:
    """Run `recipe` into the run folder `out`, owned by this run while it lives (`RunFolder.owned`)."""
    rf = RunFolder(out)
    with rf.owned(recipe, overwrite):
        return _run(recipe, rf, log)


def _run(recipe: GenRecipe, rf: RunFolder, log: Callable[[str], None]) -> dict:
    from .report import write_report

    out = rf.root
    splits = load_pairs(recipe.data)
    stage_dirs = rf.check_finished(recipe, splits)
    rf.open(recipe)
    log(f"data {splits.source}: {splits.stats}")
    data_profile = profile_data(splits, recipe.model, recipe.eval.max_length, log)
    rows, folders = [], {}
    source: str | Path = recipe.model
    for i, stage in enumerate(recipe.stages):
        folder = folders[stage.name] = stage_dirs[i]
        if stage.source:
            source = recipe.model if stage.source == FROM_MODEL else folders[stage.source]
        fp = _fingerprint(recipe, splits, i)
        done = _reuse_or_run(folder, fp, f"stage {stage.name} ({stage.method})", f"stage {stage.name}", out, log,
                             lambda: _run_stage(stage, source, splits, recipe.eval, rf, folder, fp, log))
        rows.append(_row(stage.name, stage.method, folder, rf, done))
        source = folder

    if recipe.export and not recipe.stages:
        raise_if_no_stage(recipe)
    for fmt in recipe.export:
        folder = rf.export_dir(fmt)
        fp = _fingerprint(recipe, splits, None, fmt)
        done = _reuse_or_run(folder, fp, f"export {fmt}", f"export {fmt}", out, log,
                             lambda: _export(Path(source), fmt, folder, fp, splits, recipe, rf, log))
        rows.append(_row(fmt, "export", folder, rf, done))

    report = {
        "task": "generate",
        "recipe": recipe.source,
        "data": {"source": splits.source, **splits.stats},
        "profile": data_profile,
        "hardware": hardware(),
        "baseline": recipe.baseline_name,
        "eval": recipe.to_dict()["eval"] | {"answer_prompts": recipe.eval.answer_prompts,
                                             "speed_prompts": recipe.eval.speed_prompts,
                                             "speed_new_tokens": recipe.eval.speed_new_tokens},
        "stages": rows,
    }
    write_report(report, rf)
    return report


def raise_if_no_stage(recipe: GenRecipe) -> None:
    from ..errors import SlimtuneError

    raise SlimtuneError(f"{recipe.source}: export needs a stage (e.g. `method: baseline`) whose greedy answers it is compared with")


def _export(source: Path, fmt: str, folder: Path, fp: dict, splits: PairSplits, recipe: GenRecipe, rf: RunFolder,
            log) -> dict:
    facts = write_export(source, fmt, folder, rf.cache / "genai", recipe.int4, log)
    greedy = json.loads((source / GREEDY_FILE).read_text())
    metrics, _ = measure(folder, splits, recipe.eval, log, greedy)
    done = {"metrics": metrics | facts, "fingerprint": fp, "source": str(source)}
    _write_json(folder / "metrics.json", done)
    return done


def _run_stage(stage, source, splits: PairSplits, ev: GenEvalConfig, rf: RunFolder, folder: Path, fp: dict, log) -> dict:
    from transformers import set_seed

    method = GEN_METHODS[stage.method]
    set_seed(getattr(stage.config, "seed", 42))
    model, tokenizer = load_causal_lm(source)
    ckpt = rf.checkpoint_dir(folder, fp)
    with rf.atomic(folder, fp) as tmp:
        start = time.perf_counter()
        ctx = GenContext(splits, tmp / "_work", log, cache_dir=rf.cache, checkpoint_dir=ckpt,
                         callbacks=[trainer_progress(log)], teacher=Path(str(source)))
        result = method.apply(model, tokenizer, stage.config, ctx)
        info = dict(result.facts)
        info["stage_seconds"] = time.perf_counter() - start
        info |= artifacts.save(result.artifact, tmp, result.model, result.tokenizer)  # HF folder (+ LoRA adapter)
        shutil.rmtree(tmp / "_work", ignore_errors=True)
        del model, result
        metrics, greedy = measure(tmp, splits, ev, log)
        (tmp / GREEDY_FILE).write_text(json.dumps(greedy))
        done = {"metrics": metrics | info, "fingerprint": fp, "source": str(source)}
        _write_json(tmp / "metrics.json", done)
    shutil.rmtree(ckpt, ignore_errors=True)
    return done


def _row(name: str, method: str, folder: Path, rf: RunFolder, done: dict) -> dict:
    return {"name": name, "method": method, "artifact": rf.relative(folder), "metrics": done["metrics"]}
