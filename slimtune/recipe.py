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
    device: auto                                                    # auto | cpu | cuda (compute.py)
    trainer: {gradient_accumulation_steps: 2}                       # more TrainingArguments (FSDP, DeepSpeed, ...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .data import DataConfig
from .errors import SlimtuneError, check_file
from .export import FORMATS
from .methods import METHODS
from .schema import FROM_MODEL, NAME_RE, Stage, _nondefault, build, load_yaml, parse_stages  # noqa: F401  (also this module's API)
from .text import check_positions


@dataclass
class EvalConfig:
    """How every artifact is measured (the same for all stages of a run)."""

    max_length: int | None = None  # unset: EVAL_MAX_LENGTH (128), or the longest max_length a stage trains with if longer
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


@dataclass
class Recipe:
    data: DataConfig
    model: str
    stages: list[Stage]
    export: list[str] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baseline: str | None = None
    source: str = "<recipe>"
    device: str = "auto"  # auto | cpu | cuda (slimtune.compute)
    trainer: dict = field(default_factory=dict)  # extra TrainingArguments, passed to every training

    @property
    def baseline_name(self) -> str | None:
        return self.baseline or (self.stages[0].name if self.stages else None)

    def to_dict(self) -> dict:
        return {
            "data": _nondefault(self.data),
            "model": self.model,
            "stages": [{"name": s.name, "method": s.method, **({"from": s.source} if s.source else {}), **_nondefault(s.config)}
                       for s in self.stages],
            "export": list(self.export),
            "eval": _nondefault(self.eval),
            **({"baseline": self.baseline} if self.baseline else {}),
            **({"device": self.device} if self.device != "auto" else {}),
            **({"trainer": dict(self.trainer)} if self.trainer else {}),
        }


TOP_KEYS = {"data", "model", "stages", "export", "eval", "baseline", "device", "trainer"}


def parse(raw: dict, source: str = "<recipe>") -> Recipe:
    if not isinstance(raw, dict):
        raise SlimtuneError(f"{source}: a recipe is a mapping with keys {', '.join(sorted(TOP_KEYS))}")
    # hook (decoders, issue 14): `task: generate` recipes are validated by slimtune/decoder/recipe.py
    task = raw.get("task", "classify")
    if task == "generate":
        from .decoder.recipe import parse as parse_generate

        return parse_generate(raw, source)
    if task != "classify":
        raise SlimtuneError(f"{source}: task must be classify (the default) or generate, not {task!r}")
    raw = {k: v for k, v in raw.items() if k != "task"}
    for key in raw:
        if key not in TOP_KEYS:
            raise SlimtuneError(f"{source}: unknown key {key!r}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("data", "model"):
        if key not in raw:
            raise SlimtuneError(f"{source}: missing key {key!r}")
    data = build(DataConfig, raw["data"], f"{source}: data")
    model = raw["model"]
    if isinstance(model, dict) and len(model) == 1 and next(iter(model)) in ("name", "path"):
        model = next(iter(model.values()))
    if not isinstance(model, str):
        from .model.folders import PACKAGED_MODELS

        raise SlimtuneError(f"{source}: model must be a packaged name ({', '.join(PACKAGED_MODELS)}) or a folder path")
    stages = parse_stages(raw.get("stages"), METHODS, source, "unknown method {method!r}")
    seen = [st.name for st in stages]
    export = raw.get("export") or []
    if not isinstance(export, list) or any(f not in FORMATS for f in export):
        raise SlimtuneError(f"{source}: export must be a list of formats from: {', '.join(FORMATS)}")
    if export and not stages and not _is_classifier_folder(model):
        raise SlimtuneError(f"{source}: export needs a trained model: add a stage, or use a fine-tuned folder")
    ev = build(EvalConfig, raw.get("eval") or {}, f"{source}: eval")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in seen:
        raise SlimtuneError(f"{source}: baseline {baseline!r} is not a stage name ({', '.join(seen) or 'none'})")
    from .compute import DEVICES, check_trainer_args

    device = raw.get("device", "auto")
    if device not in DEVICES:
        raise SlimtuneError(f"{source}: device must be one of {', '.join(DEVICES)}, not {device!r}")
    trainer = check_trainer_args(raw.get("trainer") or {}, f"{source}: trainer")
    check_positions(source, model, stages, ev, ("max_length",))
    return Recipe(data, model, stages, list(export), ev, baseline, source, device, trainer)


def _is_classifier_folder(model: str) -> bool:
    import json

    cfg = Path(model) / "config.json"
    try:
        return any(a.endswith("ForSequenceClassification") for a in json.loads(cfg.read_text()).get("architectures") or [])
    except (OSError, ValueError):
        return False


def load(path: str | Path) -> Recipe:
    path = Path(path)
    check_file(path, "recipe")
    return parse(load_yaml(path), str(path))
