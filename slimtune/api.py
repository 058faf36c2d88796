"""The library functions behind each CLI subcommand (same names): run, evaluate, bench, export, predict, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .data import PACKAGED, DataConfig, TextSet, load_splits
from .errors import SlimtuneError
from .artifacts import load_predictor
from .measure.predictors import Prediction
from .tasks import for_model
from .text import length_for


def data_config(data: str, text_column: str = "text", label_column: str = "label", **kw) -> DataConfig:
    """`data` is a packaged dataset name or a file path."""
    if data in PACKAGED:
        return DataConfig(name=data, **kw)
    return DataConfig(path=data, text_column=text_column, label_column=label_column, **kw)


def _eval_set(cfg: DataConfig, split: str) -> tuple[TextSet, list[str]]:
    if split not in ("test", "all"):
        raise SlimtuneError(f"split must be test or all, not {split!r}")
    s = load_splits(cfg)
    if split == "test":
        return s.test, s.label_names
    return TextSet(s.train.texts + s.val.texts + s.test.texts, s.train.labels + s.val.labels + s.test.labels), s.label_names


def run(recipe_path: str | Path, out: str | Path, log: Callable[[str], None] = print, device: str | None = None,
        overwrite: bool = False) -> dict:
    """Run a recipe file into `out` (resuming finished stages); returns the report dict.

    `out` must be new, empty or a slimtune run folder (`overwrite` allows a user's non-empty
    folder; never the model's or the data's folder), and not in use by another run.
    `device` (auto, cpu, cuda) overrides the recipe's. Launched as one of several processes
    (torchrun, or `slimtune run --nproc N`), training is data-parallel and rank 0 writes; the
    other ranks return an empty dict.
    """
    from .recipe import load
    from .runner import run as run_recipe

    recipe = load(recipe_path)
    if device is not None:
        recipe.device = device
    return run_recipe(recipe, Path(out), log, overwrite)


def check_run(recipe_path: str | Path, out: str | Path, device: str | None = None, nproc: int = 1,
              overwrite: bool = False) -> None:
    """What `run` checks before any work (the recipe, --out and who holds it, the device, batches
    that split across `nproc` processes), without running it or writing anything."""
    from .compute import resolve_device
    from .distributed import check_batch
    from .recipe import load
    from .runfolder import RunFolder

    from .tasks import get as get_task

    recipe = load(recipe_path)
    if nproc > 1 and not get_task(recipe.task).compute:
        raise SlimtuneError(f"{recipe.source}: a {recipe.task} recipe runs in one process; start it without torchrun or --nproc")
    resolve_device(device or recipe.device, f"{recipe.source}: device" if device is None else "--device")
    for st in recipe.stages:
        if hasattr(st.config, "batch_size"):
            check_batch(st.config.batch_size, f"{recipe.source}: stages {st.name}", nproc)
    RunFolder(out).check_target(recipe, overwrite)


def max_length_for(model: str | Path, max_length: int | None = None) -> int:
    """The token length eval, bench, export, predict and serve read `model`'s texts with: `max_length`
    checked against the model's positions, or unset (None) its task's default cut to them
    (text.length_for; nothing is loaded), so each command reads the same model the same way."""
    return length_for(for_model(model), model, max_length)


def evaluate(model: str | Path, data: DataConfig, split: str = "test", max_length: int | None = None, batch_size: int = 32,
             task: str | None = None) -> dict:
    """Accuracy, macro F1/precision/recall and confusion matrix of `model` on `data`'s test split (or
    all of it), and the max_length it was read with (unset: `max_length_for`)."""
    from .measure.metrics import evaluate as evaluate_predictor

    max_length = max_length_for(model, max_length)
    texts, label_names = _eval_set(data, split)
    pred = load_predictor(model, max_length, label_names, task)
    metrics, _ = evaluate_predictor(pred, texts, batch_size, progress="evaluating")
    return metrics | {"labels": label_names, "split": split, "max_length": max_length}


def pair_config(data: str, prompt_column: str = "prompt", response_column: str = "response", **kw):
    """`data` is a packaged prompt/response set (chatterbot_qa) or a file path."""
    from .decoder.data import PACKAGED_PAIRS, GenDataConfig

    if data in PACKAGED_PAIRS:
        return GenDataConfig(name=data, **kw)
    return GenDataConfig(path=data, prompt_column=prompt_column, response_column=response_column, **kw)


def evaluate_generative(model: str | Path, data, max_length: int | None = None, answer_prompts: int = 32,
                        max_new_tokens: int = 32) -> dict:
    """Response perplexity, token F1 / exact match of greedy answers and a few samples of a causal
    LM (torch folder or GenAI export) on `data`'s test pairs: what `task: generate` runs report."""
    from .decoder.data import load_pairs
    from .decoder.lm import load_decoder
    from .tasks.generate import GenEvalConfig, evaluate as evaluate_decoder

    max_length = max_length_for(model, max_length)
    ev = GenEvalConfig(max_length=max_length, answer_prompts=answer_prompts, max_new_tokens=max_new_tokens)
    splits = load_pairs(data)
    metrics, _ = evaluate_decoder(load_decoder(model), splits, ev)
    return metrics | {"split": "test", "data": splits.source, "max_length": max_length}


def bench_generative(model: str | Path, data=None, prompts: int = 8, new_tokens: int = 32) -> dict:
    """Time to first token and decode tokens/s at batch 1 (median over `prompts` test prompts of
    `data`, default chatterbot_qa), peak RSS in a fresh process, size on disk, hardware."""
    from .decoder.bench import speed_in_subprocess
    from .decoder.data import GenDataConfig, load_pairs
    from .decoder.lm import resolve
    from .measure.bench import artifact_size, hardware

    if prompts < 1 or new_tokens < 1:
        raise SlimtuneError("bench: prompts and new tokens must be >= 1")
    splits = load_pairs(data or GenDataConfig(name="chatterbot_qa"))
    texts = list(dict.fromkeys(splits.test.prompts))[:prompts]
    path = resolve(model)
    return speed_in_subprocess(path, texts, splits.system, new_tokens) | {
        "size_bytes": artifact_size(path), "hardware": hardware(), "data": splits.source}


def default_texts(n: int = 200) -> list[str]:
    """Real sentences for benchmarks and parity checks: the Rotten Tomatoes test split."""
    return load_splits(DataConfig(name="rotten_tomatoes")).test.texts[:n]


def bench(model: str | Path, texts: list[str] | None = None, runs: int = 100, warmup: int = 10, max_length: int | None = None,
          batch_size: int = 32, provider: str = "cpu", against: str | Path | None = None) -> dict:
    """Latency p50/p95 (batch 1), throughput, peak RSS, params, size on disk and hardware of `model`
    (`provider`: ONNX Runtime's cpu, cuda or tensorrt execution provider for an ONNX artifact);
    with `against` (a baseline artifact), its speed-up over that baseline, the two timed in
    alternating blocks in this process (measure/alternate.py)."""
    from .measure.bench import artifact_size, benchmark, hardware

    if against is not None and not Path(against).exists():  # said before any timing, not after it
        raise SlimtuneError(f"--against: model not found: {against}")
    max_length = max_length_for(model, max_length)
    pred = load_predictor(model, max_length, provider=provider)
    loader = None if against is None else (lambda: load_predictor(against, max_length, provider=provider))
    result = benchmark(pred, texts or default_texts(), runs, warmup, batch_size, against=loader)
    if against is not None:
        result["speedup"]["against"] = str(against)
    target = Path(model)
    result["size_bytes"] = artifact_size(target / "model.onnx" if (target / "model.onnx").is_file() else target)
    return result | {"hardware": hardware(), "provider": provider, "max_length": max_length}


def check_export_target(model: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> None:
    """Refuse an export target that would destroy something: the source itself (or a folder
    holding it, or inside it), or a non-empty folder that is not a finished export of the same
    format (unless `overwrite`). Checked before any work; nothing is touched."""
    from .artifacts.atomic import check_writable
    from .tasks import check_format

    check_format(model, fmt)
    out, src = Path(out).resolve(), Path(model).resolve()
    if out == src or src in out.parents or out in src.parents:
        raise SlimtuneError(f"--out {out} is the source model's folder (or holds it, or is inside it); choose another folder")
    check_writable(out, "--out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        try:
            same_kind = json.loads((out / "metrics.json").read_text()).get("format") == fmt
        except (OSError, ValueError, AttributeError):
            same_kind = False
        if not same_kind:
            raise SlimtuneError(f"--out {out} is not empty and is not a finished {fmt} export; "
                                "choose an empty or new folder, or pass --overwrite to replace what it holds")


def export(model: str | Path, fmt: str, out: str | Path, data: DataConfig | None = None, max_length: int | None = None,
           task: str | None = None, overwrite: bool = False) -> dict:
    """Export a model folder to `fmt` at `out`, then check parity with the source.

    A classifier: hf, onnx, onnx-int8, tflite, tflite-int8. A causal LM (see `tasks.formats_for`):
    hf, genai-fp32, genai-int4, checked on `data`'s held-out pairs (a GenDataConfig, default
    chatterbot_qa): greedy first tokens agreeing with the source's, and response perplexity.

    Parity (max |Δlogit|, argmax agreement) is measured on `data`'s test split, or on real
    Rotten Tomatoes sentences when no data is given; with data, accuracy is reported too.
    `out` must be new, empty or a finished export of the same format (`overwrite` replaces
    anything else); it is never the source.
    """
    from .artifacts import load_model
    from .export import export_checked
    from .measure.metrics import classification_metrics

    check_export_target(model, fmt, out, overwrite)
    out = Path(out)
    if for_model(model).data_kind == "pairs":  # a causal LM: checked on prompt/response pairs (decoder/export.py)
        from .decoder.export import export_checked as export_decoder

        return export_decoder(model, fmt, out, data)
    max_length = max_length_for(model, max_length)
    torch_model, tokenizer = load_model(model, task=task)
    if data is not None:
        test, _ = _eval_set(data, "test")
        texts = test.texts
    else:
        test, texts = None, default_texts()
    exported, logits, check = export_checked(torch_model, tokenizer, fmt, out, texts, max_length)
    result = {"format": fmt, "source": str(model), "artifact": str(out), "parity": check, "n_texts": len(texts),
              "max_length": max_length}
    if test is not None:
        result |= classification_metrics(test.labels, logits.argmax(1), len(exported.label_names))
    (out / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return result


def predict(model: str | Path, texts: list[str], max_length: int | None = None, task: str | None = None) -> list[Prediction]:
    """Label and probability for each text (`max_length` unset: `max_length_for`, the task's default
    cut to the model's positions). A causal LM is refused in one line naming `generate`."""
    from .measure.predictors import predict as predict_texts

    if not texts:
        raise SlimtuneError("predict: give at least one text")
    for_model(model).check_predict(str(model))
    max_length = max_length_for(model, max_length)
    return predict_texts(load_predictor(model, max_length, task=task), texts)


def serve(artifact: str | Path, host: str = "127.0.0.1", port: int = 8000, max_batch: int = 32, max_wait_ms: float = 5.0,
          workers: int = 1, max_queue: int = 1024, max_texts: int = 64, max_length: int | None = None, per_row: str = "auto",
          log: Callable[[str], None] = print, max_new_tokens: int = 256) -> None:
    """Serve `artifact` over HTTP (POST /predict, GET /health /ready /metrics /info) with dynamic
    micro-batching, until SIGTERM or Ctrl-C; in-flight requests are answered before it returns.
    A causal LM is served with OpenAI's API instead (/v1/chat/completions, /v1/completions, /v1/models)."""
    from .server import serve as run_server

    run_server(artifact, host, port, max_batch, max_wait_ms, workers, max_queue, max_texts, max_length, per_row, log,
               max_new_tokens)
