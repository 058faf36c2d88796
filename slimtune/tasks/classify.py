"""The classify task (the default): labelled texts -> a sequence classifier, measured by accuracy,
macro-F1 and batch-1 latency, with the TF-IDF + linear floor as an extra report row.

A stage folder holds the artifact, metrics.json and `test_logits.npy` (the test split's logits: what
an export's parity is measured against). `measure` is how every artifact of a classify run is
measured: the test split, batch-1 agreement, then a benchmark in a fresh process, timed alternately
with the baseline (measure/alternate.py) when the runner passes `against`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .. import artifacts, methods  # noqa: F401  (methods: registers every classify method)
from ..data import DataConfig, Splits, load_splits
from ..errors import SlimtuneError
from ..export import FORMATS, export_checked
from ..measure import bench
from ..measure.alternate import compact
from ..measure.floor import KIND as FLOOR_KIND, fit_floor
from ..measure.metrics import evaluate, parity
from ..measure.predictors import batched_logits
from ..profile import profile_data
from ..text import eval_length, fill_max_length
from ..runfolder import finished, write_json
from ..stage import Artifact
from .base import Task
from .names import CLASSIFY, DEFAULT_LENGTH

LOGITS_FILE = "test_logits.npy"  # a stage's test logits (what an export's parity compares)


@dataclass
class EvalConfig:
    """How every artifact is measured (the same for all stages of a run)."""

    max_length: int | None = None  # unset: the task's default (128, cut to the model), or the longest max_length a stage trains with
    batch_size: int = 32  # evaluation and throughput batch size
    latency_runs: int = 100  # timed batch-1 calls (at least 50 recommended)
    warmup: int = 10
    bench_texts: int = 200  # how many test sentences the latency loop cycles through
    isolate: bool = True  # benchmark each artifact in a fresh process (clean memory and caches)
    floor: bool = True  # fit and measure the TF-IDF + linear floor on the same split (report row)

    def __post_init__(self) -> None:
        # checked when the recipe is read: a bad value found after training would throw the training away
        for name, low in (("max_length", 2), ("batch_size", 1), ("latency_runs", 1), ("warmup", 0), ("bench_texts", 1)):
            if getattr(self, name) is not None and getattr(self, name) < low:
                raise SlimtuneError(f"{name} must be >= {low}, not {getattr(self, name)!r}")


class Classify(Task):
    name = CLASSIFY
    data_config = DataConfig
    eval_config = EvalConfig
    compute = True
    formats = tuple(FORMATS)
    models_word = "classifiers"
    default_length = DEFAULT_LENGTH[CLASSIFY]

    def claims(self, model: str) -> bool:
        return True  # the default: every model no other task claims

    def model_help(self) -> str:
        from ..model.folders import PACKAGED_MODELS

        return f"a packaged name ({', '.join(PACKAGED_MODELS)}) or a folder path"

    def check(self, recipe) -> None:
        if recipe.export and not recipe.stages and not _is_classifier_folder(recipe.model):
            raise SlimtuneError(f"{recipe.source}: export needs a trained model: add a stage, or use a fine-tuned folder")

    def load_splits(self, data) -> Splits:
        return load_splits(data)

    def prepare(self, recipe, splits, log):
        from ..measure.passes import estimate_lines
        from ..model.folders import resolve

        profile = profile_data(splits, recipe.model, log)
        stages = [fill_max_length(s, profile, log) for s in recipe.stages]
        ev = dataclasses.replace(recipe.eval, max_length=eval_length(self, recipe.model, recipe.eval.max_length, stages))
        for line in estimate_lines(recipe, stages, splits, profile, ev, resolve(recipe.model)):
            log(line)
        return profile, stages, ev

    def load_model(self, source, splits):
        return artifacts.load_model(source, splits.label_names)

    def measure_stage(self, folder, splits, ev, log, device="cpu", against=None) -> dict:
        metrics, logits = measure(folder, splits, ev, log, device=device, against=against)
        np.save(folder / LOGITS_FILE, logits, allow_pickle=False)
        return metrics

    def export_reference(self, recipe, source, staged, splits, ev):
        if staged:
            return np.load(Path(source) / LOGITS_FILE, allow_pickle=False)
        # exporting a fine-tuned folder given as `model`
        pred = artifacts.load_predictor(source, ev.max_length, splits.label_names)
        _, logits = evaluate(pred, splits.test, ev.batch_size, progress="source logits")
        return logits

    def export(self, source, reference, fmt, folder, splits, recipe, ev, rf, log, against=None) -> dict:
        start = time.perf_counter()  # converting (with its parity pass) vs measuring: report.md's time section
        model, tokenizer = artifacts.load_model(source, splits.label_names)
        pred, logits, _ = export_checked(model, tokenizer, fmt, folder, splits.test.texts, ev.max_length,
                                         reference, splits.label_names, ev.batch_size)
        del model
        seconds = time.perf_counter() - start
        metrics, _ = measure(folder, splits, ev, log, reference, pred=pred, logits=logits, against=against)
        return metrics | {"export_seconds": round(seconds, 3)}

    def data_summary(self, splits) -> dict:
        return {"source": splits.source, **splits.stats, "labels": splits.label_names}

    def report_fields(self, recipe, splits, ev, rf, log, baseline, rows, compute) -> dict:
        from .. import distributed
        from ..runfolder import fingerprint

        fields = {
            "eval_batch_size": recipe.eval.batch_size,
            "compute": {"device": compute.device, "world_size": distributed.world_size(),
                        "effective_batch_size": {r["name"]: r["metrics"]["effective_batch_size"]
                                                 for r in rows if "effective_batch_size" in r["metrics"]}},
        }
        if ev.floor:  # the classical baseline every transformer row has to beat
            fields["floor"] = floor_row(splits, ev, rf, log, fingerprint(recipe, splits, -1, "floor"), baseline)
        return fields

    def markdown(self, report: dict) -> str:
        from ..report import markdown

        return markdown(report)

    def plot(self, report: dict, out: Path) -> None:
        from ..report import plot

        if report["stages"]:
            plot(report, "latency_ms_p50", "batch-1 latency p50 (ms)", out / "accuracy_vs_latency.png")
            plot(report, "size_bytes", "size on disk (MiB)", out / "accuracy_vs_size.png")


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
    log(f"  accuracy {metrics['accuracy']:.4f}  macro F1 {metrics['f1_macro']:.4f}; benchmarking ({ev.latency_runs} runs)")
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


def floor_row(splits: Splits, ev: EvalConfig, rf, log, fingerprint: dict, against=None) -> dict:
    """Fit (or reuse) the TF-IDF floor in OUT/floor and measure it like any artifact; a report row."""
    folder = rf.floor
    done = finished(folder, fingerprint)
    if done:
        log("floor (TF-IDF + logistic regression): measured earlier, reused")
    else:
        log("floor: TF-IDF (word 1-2-grams or character 1-3-grams) + logistic regression, chosen on validation")
        with rf.atomic(folder, fingerprint) as tmp:
            start = time.perf_counter()
            vec, clf, info = fit_floor(splits)
            log(f"floor: {info['why']}")
            artifacts.save(Artifact("floor", {"label_names": splits.label_names, "info": info}), tmp, (vec, clf), None)
            metrics, _ = measure(tmp, splits, ev, log, against=against)
            # fitting and measuring the floor: neither is bounded by any max_minutes
            done = {"metrics": metrics | info | {"eval_seconds": round(time.perf_counter() - start, 3)}, "fingerprint": fingerprint}
            write_json(tmp / "metrics.json", done)
    return {"name": "tfidf-floor", "method": FLOOR_KIND, "artifact": rf.relative(folder), "metrics": done["metrics"]}


def _is_classifier_folder(model: str) -> bool:
    cfg = Path(model) / "config.json"
    try:
        return any(a.endswith("ForSequenceClassification") for a in json.loads(cfg.read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return False
