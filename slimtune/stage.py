"""What a stage is: a small config dataclass plus `apply(model, tokenizer, cfg, ctx) -> StageResult`,
registered by task and name in the one registry METHODS (`@register("lora", LoraConfig)` for the
default task, classify; `@register("lora", GenLoraConfig, task=GENERATE)` for another). The modules
in `methods/` fill classify's methods, decoder/methods.py and decoder/prune/ generate's; a task
loads its method modules (slimtune/tasks/).

`apply` takes the model coming out of the previous stage and returns a `StageResult`: the next
model, its tokenizer (a distilled student may bring its own), facts for the report (e.g.
trainable params) and the `Artifact` the runner saves it as (default: a plain HF folder; see
`slimtune.artifacts` for the formats). Nothing here imports torch: recipes are validated with
the configs alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data import Splits
from .measure.passes import Passes
from .tasks.names import CLASSIFY, DEFAULT_LENGTH


@dataclass
class StageContext:
    splits: Splits  # the task's splits (a generate stage gets decoder.data.PairSplits)
    work_dir: Path  # scratch space inside the stage's temp folder, gone when the stage ends
    log: Callable[[str], None] = print
    cache_dir: Path | None = None  # run-wide cache that survives stages and reruns (teacher outputs)
    checkpoint_dir: Path | None = None  # this stage's resumable training checkpoints
    callbacks: list = field(default_factory=list)  # extra Trainer callbacks
    max_length: int = DEFAULT_LENGTH[CLASSIFY]  # how the run evaluates (text.eval_length): a stage's own checks use the same
    teacher: Path | None = None  # the stage's source folder (what a pruned decoder distils from)
    passes: Passes = field(default_factory=Passes)  # seconds outside the training loop (teacher logits)


@dataclass
class Artifact:
    """How the runner saves a stage's model: a format registered in `slimtune.artifacts`, with options."""

    kind: str = "hf"  # hf | compact | peft_adapter | multitask | onnx | tflite
    options: dict = field(default_factory=dict)


@dataclass
class StageResult:
    model: object
    tokenizer: object
    facts: dict = field(default_factory=dict)  # for the report (metrics.json), JSON-able
    artifact: Artifact = field(default_factory=Artifact)


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type
    apply: Callable[..., StageResult]
    doc: str = ""


# task -> {method name -> Method}: same-named methods of two tasks (lora) coexist
METHODS: dict[str, dict[str, Method]] = {}


def methods_for(task: str) -> dict[str, Method]:
    """The methods registered for `task` (the live dict: what a recipe of that task may name)."""
    return METHODS.setdefault(task, {})


def method(task: str, name: str) -> Method:
    return METHODS[task][name]


def register(name: str, config_cls: type, task: str = CLASSIFY):
    """Decorator: make `apply` available in recipes of `task` as `method: name`."""

    def wrap(fn):
        methods_for(task)[name] = Method(name, config_cls, fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return wrap

