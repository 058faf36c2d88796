"""Artifacts: every on-disk format slimtune writes or reads, one module each, registered once here.

A format is `detect(folder) -> bool`, `save(folder, model, tokenizer, **options) -> facts` and,
for a torch model, `load(folder, config, new_head[, task]) -> model`, or, for a model torch does
not run (ONNX, the TF-IDF floor), `predictor(folder, ...) -> Predictor`. A stage names its
format in `StageResult.artifact` (`Artifact(kind, options)`); `save` writes it, and `load_model` /
`load_predictor` find the format of a folder by asking each, in the order registered (the most
specific first, the plain HF folder last). A new format is one module and one `register` line.

    hf             save_pretrained folder (safetensors + config with labels + tokenizer)
    compact        slimtune.safetensors with per-tensor codecs (sparse, fp16/bf16, int8, int4, kmeans)
    peft_adapter   the base model + an unmerged PEFT adapter (prompt / prefix / P-tuning)
    multitask      the primary classifier + one head per extra task (`task=NAME`)
    onnx           model.onnx (+ config, tokenizer), run by ONNX Runtime
    tflite         model.tflite (+ config, tokenizer), run by LiteRT (optional extra slimtune[tflite])
    floor          the TF-IDF + logistic regression floor (no pickle)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SlimtuneError
from ..model.folders import is_classifier, label_names_of, load_tokenizer, resolve
from ..stage import Artifact
from . import compact, floor, hf, multitask, onnx, peft_adapter, tflite


@dataclass(frozen=True)
class Format:
    name: str
    detect: Callable[[Path], bool]
    save: Callable[..., dict]
    load: Callable | None = None  # torch formats
    predictor: Callable | None = None  # formats torch does not run
    tasks: bool = False  # load takes task=NAME


FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


register(Format("onnx", onnx.detect, onnx.save, predictor=onnx.predictor))
register(Format("tflite", tflite.detect, tflite.save, predictor=tflite.predictor))
register(Format("floor", floor.detect, floor.save, predictor=floor.predictor))
register(Format("compact", compact.detect, compact.save, compact.load))
register(Format("peft_adapter", peft_adapter.detect, peft_adapter.save, peft_adapter.load))
register(Format("multitask", multitask.detect, multitask.save, multitask.load, tasks=True))
register(Format("hf", hf.detect, hf.save, hf.load))  # last: every model folder has a config.json


def detect(path: str | Path) -> Format | None:
    return next((f for f in FORMATS.values() if f.detect(Path(path))), None)


def save(artifact: Artifact | None, folder: Path, model, tokenizer) -> dict:
    """Write `model` into the existing `folder` in the artifact's format; returns facts for the report."""
    artifact = artifact or Artifact()
    if artifact.kind not in FORMATS:
        raise SlimtuneError(f"artifact kind {artifact.kind!r} is not one of {', '.join(FORMATS)}")
    return FORMATS[artifact.kind].save(Path(folder), model, tokenizer, **artifact.options) or {}


def load_model(name_or_path: str | Path, label_names: list[str] | None = None, task: str | None = None):
    """Return `(model, tokenizer)` for classification (`task`: one head of a multi-task folder).

    A base model (e.g. a sentence encoder) gets a new classification head sized for
    `label_names`. A folder that already holds a classifier keeps its head; if `label_names` is
    given it must match the folder's `id2label`, or the predictions would be silently misread.
    """
    from ..model.folders import load_config

    path = resolve(name_or_path)
    config = load_config(path)
    fmt = next(f for f in FORMATS.values() if f.load is not None and f.detect(path))
    vocab = getattr(config, "vocab_size", None)
    if task is not None:  # a multi-task folder: swap in that task's head, then check its labels
        if not is_classifier(config):
            raise SlimtuneError(f"{path}: has no classification head; train it first (slimtune run)")
        if not fmt.tasks:
            raise SlimtuneError(f"{path}: not a multi-task model (no {multitask.TASKS_FILE}); drop --task")
        model = fmt.load(path, config, None, task=task)
        tokenizer = load_tokenizer(path, vocab)
        have = label_names_of(model)
        if label_names is not None and list(label_names) != have:
            raise SlimtuneError(f"{path}: task {task!r} was trained for labels {have}, but the data has {list(label_names)}")
        return model, tokenizer
    new_head = None
    if is_classifier(config):
        have = [config.id2label[i] for i in range(config.num_labels)]
        if label_names is not None and list(label_names) != have:
            raise SlimtuneError(f"{path}: model was trained for labels {have}, but the data has {list(label_names)}")
    else:
        if label_names is None:
            raise SlimtuneError(f"{path}: has no classification head; train it first (slimtune run)")
        new_head = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                        label2id={n: i for i, n in enumerate(label_names)})
    model = fmt.load(path, config, new_head)
    return model, load_tokenizer(path, vocab)


def load_predictor(path: str | Path, max_length: int | None = None, label_names: list[str] | None = None,
                   task: str | None = None, threads: int | None = None, provider: str = "cpu",
                   spin: bool = True):
    """A predictor for an artifact: ONNX Runtime for an ONNX folder (or .onnx file), the floor's own,
    else torch over `load_model`. `threads`: ONNX Runtime's intra-op threads (default: one per core);
    `spin`: False lets them sleep between calls instead of busy-waiting (a server's setting).
    `provider`: ONNX Runtime's execution provider for an ONNX artifact (cpu, cuda, tensorrt)."""
    from ..measure.predictors import TorchPredictor
    from ..tasks.names import CLASSIFY
    from ..text import length_for

    path = Path(path)
    max_length = max_length or length_for(CLASSIFY, path)  # unset: the classifier default, cut to the model
    fmt = next((f for f in FORMATS.values() if f.predictor is not None and f.detect(path)), None)
    if fmt is None and not path.exists():
        raise SlimtuneError(f"model not found: {path}")
    if fmt is not None and fmt.name == "onnx":
        return fmt.predictor(path, max_length, label_names, task, threads, provider=provider, spin=spin)
    if provider != "cpu":  # hook (compute.py): the GPU execution providers are ONNX Runtime's
        what = f"a {fmt.name} artifact" if fmt is not None else "a torch model"
        raise SlimtuneError(f"--provider {provider}: applies to ONNX artifacts; {path} is {what}")
    if fmt is not None:
        return fmt.predictor(path, max_length, label_names, task, threads)
    model, tokenizer = load_model(path, label_names, task)
    return TorchPredictor(model, tokenizer, max_length)
