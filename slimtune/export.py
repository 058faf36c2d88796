"""Exports, one path for the runner and `slimtune export`: write the artifact (atomically), load
it back, and compare its logits with the source model's on the same texts (parity).

    hf          a Hugging Face folder (save_pretrained)
    onnx        model.onnx, fused by ONNX Runtime's transformer optimizer
    onnx-int8   the same, dynamic int8 (per-channel, reduce_range)
    tflite      model.tflite for LiteRT (phones, edge), static 1 x max_length input
    tflite-int8 the same, int8 weights (ai-edge-quantizer's dynamic recipe); both need slimtune[tflite]

These are the classify task's formats; which formats a model takes is its task's
(`tasks.formats_for`, `tasks.check_format`; a causal LM's are decoder/export.py's).
"""

from __future__ import annotations

from pathlib import Path

from .errors import SlimtuneError
from .stage import Artifact
from .tasks.names import CLASSIFY, DEFAULT_LENGTH

FORMATS = {"hf": Artifact("hf"), "onnx": Artifact("onnx"), "onnx-int8": Artifact("onnx", {"int8": True}),
           "tflite": Artifact("tflite"), "tflite-int8": Artifact("tflite", {"int8": True})}


def write(model, tokenizer, fmt: str, out: Path, max_length: int | None = None) -> Path:
    """Write `model` as `fmt` at `out`, atomically (a finished folder or none). `max_length`: the
    fixed input length of a TFLite graph (the other formats take any length)."""
    from .artifacts import save
    from .artifacts.atomic import atomic_dir

    if fmt not in FORMATS:
        raise SlimtuneError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    artifact = FORMATS[fmt]
    if artifact.kind == "tflite":
        artifact = Artifact("tflite", artifact.options | {"max_length": max_length or DEFAULT_LENGTH[CLASSIFY]})
    with atomic_dir(out) as tmp:
        save(artifact, tmp, model, tokenizer)
    return Path(out)


def export_checked(model, tokenizer, fmt: str, out: Path, texts: list[str], max_length: int, source_logits=None,
                   label_names: list[str] | None = None, batch_size: int = 32):
    """Export, then measure parity on `texts`: returns (exported predictor, its logits, parity).

    `source_logits` (the source's logits on `texts`) are computed here with the torch model
    unless given (the runner passes the source stage's saved test logits)."""
    from .artifacts import load_predictor
    from .measure.metrics import parity
    from .measure.predictors import TorchPredictor, batched_logits

    if source_logits is None:
        source_logits = batched_logits(TorchPredictor(model, tokenizer, max_length), texts, batch_size, progress="source logits")
    write(model, tokenizer, fmt, out, max_length)
    exported = load_predictor(out, max_length, label_names)
    logits = batched_logits(exported, texts, batch_size, progress="exported logits")
    return exported, logits, parity(source_logits, logits)
