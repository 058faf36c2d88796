"""Recipes: YAML in, validated into small dataclasses; a typo in a key is an error, not a default.

A recipe is pure data: parsing and validating one imports no torch (the method configs are plain
dataclasses), and nested blocks are typed (a multitask stage's `tasks:` is a mapping of data
blocks), so `build` recurses instead of a method calling back into the parser.

    data:   {name: rotten_tomatoes} | {path: FILE, text_column: text, label_column: label, ...}
    model:  minilm-l6 | minilm-l3 | PATH/TO/HF_FOLDER
    stages: [{name: finetune, method: full, epochs: 1, ...}, ...]   # method fields inline;
                                                                    # `from: NAME` branches off an earlier stage,
                                                                    # `from: model` starts from the recipe's model
    export: [onnx, onnx-int8]                                       # formats, from the last stage
    eval:   {max_length: 128, latency_runs: 100, ...}               # how every artifact is measured
    baseline: finetune                                              # default: the first stage
    minutes: 30                                                     # optional: the whole job's budget (a warning, not a stop)
    device: auto                                                    # auto | cpu | cuda (compute.py)
    trainer: {gradient_accumulation_steps: 2}                       # more TrainingArguments (FSDP, DeepSpeed, ...)
    task:   classify                                                # the default; `generate`: slimtune/tasks/generate.py

One parser for every task: `task:` picks the Task (slimtune/tasks/), which gives the data and eval
config classes, its own top-level keys (generate: `int4:`), its methods (the one registry, by task)
and its export formats; `device:` and `trainer:` are for the tasks that take them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import SlimtuneError, check_file
from .schema import FROM_MODEL, NAME_RE, Stage, _nondefault, build, load_yaml, parse_stages  # noqa: F401  (also this module's API)
from .stage import methods_for
from .tasks import get as get_task
from .tasks.classify import EvalConfig  # noqa: F401  (also this module's API)
from .tasks.names import CLASSIFY
from .text import check_positions

COMMON_KEYS = {"data", "model", "stages", "export", "eval", "baseline", "minutes"}
COMPUTE_KEYS = {"device", "trainer"}  # where and how training runs: for the tasks that take them (Task.compute)
TOP_KEYS = COMMON_KEYS | COMPUTE_KEYS  # a classify recipe's keys


@dataclass
class Recipe:
    data: object  # the task's data config (DataConfig, GenDataConfig, ...)
    model: str
    stages: list[Stage]
    export: list[str] = field(default_factory=list)
    eval: object = field(default_factory=EvalConfig)  # the task's eval config
    baseline: str | None = None
    source: str = "<recipe>"
    device: str = "auto"  # auto | cpu | cuda (slimtune.compute)
    trainer: dict = field(default_factory=dict)  # extra TrainingArguments, passed to every training
    task: str = CLASSIFY
    extras: dict = field(default_factory=dict)  # the task's own top-level keys (generate: int4), as configs
    # the whole job's wall-time budget, if the recipe states one: max_minutes bound only the training
    # loops, so a run warns at its start when they plus the estimate of the rest exceed it (measure/passes.py)
    minutes: float | None = None

    def __getattr__(self, name: str):
        # a task's extra key reads like any other: recipe.int4
        extras = self.__dict__.get("extras") or {}
        if name in extras:
            return extras[name]
        raise AttributeError(name)

    @property
    def baseline_name(self) -> str | None:
        return self.baseline or (self.stages[0].name if self.stages else None)

    def to_dict(self) -> dict:
        return {
            **({"task": self.task} if self.task != CLASSIFY else {}),
            "data": _nondefault(self.data),
            "model": self.model,
            "stages": [{"name": s.name, "method": s.method, **({"from": s.source} if s.source else {}), **_nondefault(s.config)}
                       for s in self.stages],
            "export": list(self.export),
            "eval": _nondefault(self.eval),
            **({"baseline": self.baseline} if self.baseline else {}),
            **({"device": self.device} if self.device != "auto" else {}),
            **({"trainer": dict(self.trainer)} if self.trainer else {}),
            **get_task(self.task).extras_to_dict(self.extras),
            **({"minutes": self.minutes} if self.minutes is not None else {}),
        }

    def export_keys(self, fmt: str | None) -> tuple[str, ...]:
        """The top-level blocks an export as `fmt` is built with (the format's entry in its task's
        `recipe_keys`): a change to one of them makes that export again, and no other."""
        return get_task(self.task).recipe_keys.get(fmt, ())


def parse(raw: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise SlimtuneError(f"{source}: a recipe is a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    name = raw.get("task", CLASSIFY)
    task = get_task(name, source)
    # a task other than the default names itself in the messages: "is not a generate method"
    of = "" if task.name == CLASSIFY else f" of a {task.name} recipe"
    allowed = COMMON_KEYS | (COMPUTE_KEYS if task.compute else set()) | set(task.extras) | ({"task"} if of else set())
    for key in raw:
        if key in COMPUTE_KEYS and not task.compute:
            raise SlimtuneError(f"{source}: {key}: a {task.name} recipe does not take it yet (it trains on the CPU, "
                                "in one process); remove the key")
        if key not in allowed and key != "task":
            raise SlimtuneError(f"{source}: unknown key {key!r}; allowed: {', '.join(sorted(allowed))}")
    for key in ("data", "model"):
        if key not in raw:
            raise SlimtuneError(f"{source}: missing key {key!r}")
    data = build(task.data_config, raw["data"], f"{source}: data")
    model = raw["model"]
    if isinstance(model, dict) and len(model) == 1 and next(iter(model)) in ("name", "path"):
        model = next(iter(model.values()))
    if not isinstance(model, str):
        raise SlimtuneError(f"{source}: model must be {task.model_help()}")
    unknown = "unknown method {method!r}" if not of else f"method {{method!r}} is not a {task.name} method"
    stages = parse_stages(raw.get("stages"), methods_for(task.name), source, unknown)
    seen = [st.name for st in stages]
    export = raw.get("export") or []
    if not isinstance(export, list) or any(f not in task.formats for f in export):
        raise SlimtuneError(f"{source}: export{of} must be a list of formats from: {', '.join(task.formats)}")
    for fmt in export:
        task.check_export(model, fmt, recipe=True)
    ev = build(task.eval_config, raw.get("eval") or {}, f"{source}: eval")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in seen:
        raise SlimtuneError(f"{source}: baseline {baseline!r} is not a stage name ({', '.join(seen) or 'none'})")
    device, trainer = "auto", {}
    if task.compute:
        from .compute import DEVICES, check_trainer_args

        device = raw.get("device", "auto")
        if device not in DEVICES:
            raise SlimtuneError(f"{source}: device must be one of {', '.join(DEVICES)}, not {device!r}")
        trainer = check_trainer_args(raw.get("trainer") or {}, f"{source}: trainer")
    extras = {key: build(cls, raw.get(key) or {}, f"{source}: {key}") for key, cls in task.extras.items()}
    minutes = raw.get("minutes")
    if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or minutes <= 0):
        raise SlimtuneError(f"{source}: minutes (the whole job's budget) must be a number > 0, got {minutes!r}")
    check_positions(source, model, stages, ev, task.length_keys)
    recipe = Recipe(data, model, stages, list(export), ev, baseline, source, device, trainer, task.name, extras, minutes)
    task.check(recipe)
    return recipe


def load(path: str | Path) -> Recipe:
    path = Path(path)
    check_file(path, "recipe")
    return parse(load_yaml(path), str(path))
