"""The search space: every candidate is a chain of existing stage methods after the fine-tuned
reference (an architecture, a vocabulary, a runtime), or the TF-IDF floor. The model they all grow
from is the user's, or, when the default model cannot read the data, the packaged one that can
(`pick_model`)."""

from __future__ import annotations

import dataclasses
import itertools

FLOOR = "tfidf-floor"
VOCABS = ("full", "trim")
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8", "onnx-int8-static", "onnx-int8-int4emb")

# Training settings of each kind of stage (the shipped recipes' measured settings); `train` in
# AutoConfig overrides any of them for every training stage (short runs, tests).
REFERENCE = {"method": "full", "epochs": 2, "batch_size": 32, "learning_rate": 5.0e-5, "warmup": 0.06,
             "early_stopping_patience": 1}
STUDENT = {"method": "distill", "student": "truncate", "alpha": 0.5, "temperature": 2.0, "epochs": 3,
           "batch_size": 32, "learning_rate": 1.0e-4}
PRUNE = {"method": "prune_structured", "layers": 2, "heads": 0.5, "ffn": 0.65, "score": "taylor", "rounds": 2,
         "epochs": 2, "batch_size": 32, "learning_rate": 5.0e-5, "alpha": 0.5}
PRUNE_LIGHT = PRUNE | {"layers": 0, "heads": 0.34, "ffn": 0.5, "rounds": 1, "epochs": 1}
# the main job's step after its student: half of every layer's FFN neurons, recovered for one epoch
SLIM = {"method": "prune_structured", "layers": 0, "heads": 0.0, "ffn": 0.5, "scope": "layer", "score": "taylor",
        "rounds": 1, "epochs": 1, "batch_size": 32, "learning_rate": 5.0e-5, "alpha": 0.5}
RUNTIME_STAGES = {
    "onnx-fp32": {"method": "onnx_compact", "matmul": "fp32", "embeddings": "fp32"},
    "onnx-int8": {"method": "onnx_int8", "mode": "dynamic"},
    "onnx-int8-static": {"method": "onnx_int8", "mode": "static", "calibration": "minmax"},
    # the main job's compact stage (recipes/default.yaml): 4-bit word table in blocks of 128 with zero points
    "onnx-int8-int4emb": {"method": "onnx_compact", "matmul": "int8", "embeddings": "int4", "block_size": 128, "symmetric": False},
}


DEFAULT_MODEL = "minilm-l6"


def pick_model(cfg, texts: list[str]):
    """(cfg, note): the default model when it reads `texts`; when more than UNK_WARN of their tokens
    are unknown to it and the multilingual reader's are not, cfg with the reader as its model, and
    one line saying so. A model the user named is kept (the note warns). Decided from the tokens of
    the data, never from a language name."""
    from ..profile import READER, READER_SAMPLE, suggest_reader, unknown_line, unknown_share, UNK_WARN
    from ..text import load_tokenizer

    sample = list(texts)[:: max(1, len(texts) // READER_SAMPLE)][:READER_SAMPLE]
    share = unknown_share(load_tokenizer(cfg.model), sample)
    if share <= UNK_WARN:
        return cfg, None
    reader = suggest_reader(cfg.model, sample, share)
    line = unknown_line({"unk_share": share, "reader": reader}, cfg.model)
    if reader is None or cfg.model != DEFAULT_MODEL:
        return cfg, f"auto: warning: {line}"
    note = (f"auto: {share:.0%} of the tokens are unknown ([UNK]) to {cfg.model}; every candidate grows from "
            f"{READER} instead, which reads this text ({reader['unk_share']:.2%} unknown on a sample)")
    return dataclasses.replace(cfg, model=READER), note


def architectures(depth: int) -> list[str]:
    """The reference, truncated students of the teacher's own layers (the middle one also with half
    its FFN: `truncate-K-ffn50`, sharing the student), and two pruning strengths."""
    sizes = [k for k in (4, 3, 2, 1) if k < depth and (k >= 2 or depth <= 3)]
    mid = max(1, depth // 2)
    slim = [f"truncate-{mid}-ffn50"] if mid in sizes else []
    return ["reference"] + [f"truncate-{k}" for k in sizes] + slim + (["prune-light", "prune"] if depth > 2 else [])


def truncate_layers(depth: int, keep: int) -> list[int]:
    """Evenly spread teacher layers, starting at 0 (6 -> 3: [0, 2, 4], the measured best)."""
    return sorted({min(depth - 1, int(i * depth / keep + 0.5) if i else 0) for i in range(keep)})


def chain(key: dict, depth: int) -> list[dict]:
    """The stages of candidate `key` (arch, vocab, runtime) after the reference, each with its `from`."""
    arch, vocab, runtime = key["arch"], key["vocab"], key["runtime"]
    stages, prev = [], "reference"
    if arch.startswith("truncate-"):
        student = "-".join(arch.split("-")[:2])  # truncate-3-ffn50 grows from truncate-3
        stages.append(STUDENT | {"name": student, "from": prev, "layers": truncate_layers(depth, int(student.split("-")[1]))})
        prev = student
        if arch != student:
            stages.append(SLIM | {"name": arch, "from": prev})
            prev = arch
    elif arch in ("prune", "prune-light"):
        layers = PRUNE["layers"] if depth > PRUNE["layers"] + 1 else 0
        stages.append((PRUNE if arch == "prune" else PRUNE_LIGHT) | {"name": arch, "from": prev}
                      | ({"layers": layers} if arch == "prune" else {}))
        prev = arch
    if vocab == "trim":
        name = f"{prev}-trim"
        stages.append({"name": name, "method": "trim_vocab", "from": prev})
        prev = name
    if runtime != "torch":
        name = f"{prev}-{runtime}"
        stages.append(RUNTIME_STAGES[runtime] | {"name": name, "from": prev})
        prev = name
    return stages


def key_name(key: dict) -> str:
    if key["arch"] == FLOOR:
        return FLOOR
    return "/".join((key["arch"], key["vocab"], key["runtime"]))


def seeds(depth: int) -> list[dict]:
    """Candidates tried first, most promising for speed, size and accuracy first."""
    mid = f"truncate-{max(1, depth // 2)}"
    archs = architectures(depth)
    prune = "prune" if "prune" in archs else mid
    out = [
        {"arch": FLOOR},
        {"arch": "reference", "vocab": "full", "runtime": "onnx-int8"},
        {"arch": mid, "vocab": "trim", "runtime": "onnx-int8-int4emb"},
        {"arch": f"{mid}-ffn50", "vocab": "trim", "runtime": "onnx-int8-int4emb"} if f"{mid}-ffn50" in archs else None,
        {"arch": mid, "vocab": "full", "runtime": "onnx-int8"},
        {"arch": prune, "vocab": "trim", "runtime": "onnx-int8"},
        {"arch": "reference", "vocab": "full", "runtime": "torch"},
        {"arch": mid, "vocab": "trim", "runtime": "onnx-int8"},
        {"arch": prune, "vocab": "full", "runtime": "onnx-int8-int4emb"},
    ]
    unique = []
    for k in out:
        if k is not None and k not in unique:
            unique.append(k)
    return unique


def suggest(trial, depth: int) -> dict:
    arch = trial.suggest_categorical("arch", [FLOOR] + architectures(depth))
    if arch == FLOOR:
        return {"arch": FLOOR}
    return {"arch": arch, "vocab": trial.suggest_categorical("vocab", list(VOCABS)),
            "runtime": trial.suggest_categorical("runtime", list(RUNTIMES))}


def space(depth: int) -> list[dict]:
    """Every candidate: the seeds first, then the rest in a fixed order."""
    rest = [{"arch": a, "vocab": v, "runtime": r} for a, v, r in itertools.product(architectures(depth), VOCABS, RUNTIMES)]
    first = seeds(depth)
    return first + [k for k in rest if k not in first]
