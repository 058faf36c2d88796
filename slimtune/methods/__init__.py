"""Stage methods: each is a small config dataclass plus an `apply` function, registered by name.

`apply(model, tokenizer, cfg, ctx) -> (model, tokenizer, info)` takes the model coming out of
the previous stage and returns the next one, its tokenizer (a distilled student may bring its
own) and a dict of facts for the report (e.g. trainable params).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data import Splits


@dataclass
class StageContext:
    splits: Splits
    work_dir: Path  # scratch space inside the stage's temp folder, gone when the stage ends
    log: Callable[[str], None] = print
    cache_dir: Path | None = None  # run-wide cache that survives stages and reruns (teacher outputs)
    checkpoint_dir: Path | None = None  # this stage's resumable training checkpoints
    callbacks: list = field(default_factory=list)  # extra Trainer callbacks


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable
    doc: str = ""


METHODS: dict[str, Method] = {}


def register(name: str, config_cls: type):
    """Decorator: make `apply` available in recipes as `method: name`."""

    def wrap(fn):
        METHODS[name] = Method(name, config_cls, fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return wrap


# Importing the modules fills METHODS.
from . import adapters, distill, finetune, multitask, onnx_compact, onnx_int8, prune, quantize, sharing, vocab  # noqa: E402,F401
