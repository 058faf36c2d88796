"""A `task: generate` recipe: the same shape as a classification recipe, validated as strictly.

    task:   generate
    data:   {name: chatterbot_qa} | {path: pairs.jsonl, prompt_column: prompt, response_column: response}
    model:  smollm2-135m | gemma3-270m | PATH/TO/HF_CAUSAL_LM
    stages: [{name: untuned, method: baseline}, {name: lora, method: lora, max_minutes: 20}, ...]
    export: [genai-int4, genai-fp32]
    eval:   {answer_prompts: 32, max_new_tokens: 32, ...}
    int4:   {algo: k_quant, block_size: 32, accuracy_level: 4, int8: [], grid: keep}   # how genai-int4 quantizes
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SlimtuneError
from ..model.convert_smollm2 import PACKAGED_DECODERS
from ..schema import FROM_MODEL, NAME_RE, Stage, _nondefault, build, parse_stages
from ..text import check_positions
from .data import GenDataConfig
from .export import DECODER_FORMATS
from .genai import check_buildable
from .int4 import INT8_GROUPS, Int4Config  # noqa: F401  (also this module's API)
from .gguf_export import check_available
from .registry import GEN_METHODS

TOP_KEYS = {"task", "data", "model", "stages", "export", "eval", "baseline", "int4"}
@dataclass
class GenEvalConfig:
    """How every generative artifact is measured (the same for all stages of a run)."""

    max_length: int = 256  # prompt + response tokens scored for perplexity
    answer_prompts: int = 32  # distinct test prompts answered greedily (token F1 / exact match, parity)
    max_new_tokens: int = 32  # tokens generated per answer, at most
    parity_tokens: int = 32  # an export's first N greedy tokens compared with its source's
    speed_prompts: int = 8  # test prompts timed at batch 1 (median TTFT and decode tokens/s)
    speed_new_tokens: int = 32  # tokens generated per timed prompt (all of them: end-of-sequence does not stop the timing)
    samples: int = 5  # prompt -> answer examples shown in report.md
    isolate: bool = True  # time each artifact in a fresh process (its own peak RSS)

    def __post_init__(self) -> None:
        for name in ("max_length", "answer_prompts", "max_new_tokens", "parity_tokens", "speed_prompts", "speed_new_tokens"):
            if getattr(self, name) < 1:
                raise SlimtuneError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        if self.samples < 0:
            raise SlimtuneError("samples must be >= 0")


@dataclass
class GenRecipe:
    data: GenDataConfig
    model: str
    stages: list[Stage]
    export: list[str] = field(default_factory=list)
    eval: GenEvalConfig = field(default_factory=GenEvalConfig)
    baseline: str | None = None
    source: str = "<recipe>"
    task: str = "generate"
    int4: Int4Config = field(default_factory=Int4Config)

    @property
    def baseline_name(self) -> str | None:
        return self.baseline or (self.stages[0].name if self.stages else None)

    def to_dict(self) -> dict:
        return {
            "task": "generate",
            "data": _nondefault(self.data),
            "model": self.model,
            "stages": [{"name": s.name, "method": s.method, **({"from": s.source} if s.source else {}), **_nondefault(s.config)}
                       for s in self.stages],
            "export": list(self.export),
            "eval": _nondefault(self.eval),
            **({"baseline": self.baseline} if self.baseline else {}),
            # always written out: a genai-int4 export's fingerprint holds the options it was built with
            "int4": self.int4.as_dict(),
        }


def parse(raw: dict, source: str = "<recipe>") -> GenRecipe:
    for key in raw:
        if key not in TOP_KEYS:
            raise SlimtuneError(f"{source}: unknown key {key!r}; allowed: {', '.join(sorted(TOP_KEYS))}")
    for key in ("data", "model"):
        if key not in raw:
            raise SlimtuneError(f"{source}: missing key {key!r}")
    data = build(GenDataConfig, raw["data"], f"{source}: data")
    model = raw["model"]
    if not isinstance(model, str):
        raise SlimtuneError(f"{source}: model must be a packaged decoder ({', '.join(PACKAGED_DECODERS)}) or a folder path")
    stages = parse_stages(raw.get("stages"), GEN_METHODS, source, "method {method!r} is not a generate method")
    seen = [st.name for st in stages]
    export = raw.get("export") or []
    if not isinstance(export, list) or any(f not in DECODER_FORMATS for f in export):
        raise SlimtuneError(f"{source}: export of a generate recipe must be a list of formats from: {', '.join(DECODER_FORMATS)}")
    for fmt in export:
        check_available(fmt)  # before any stage trains
        check_buildable(model, fmt)
    ev = build(GenEvalConfig, raw.get("eval") or {}, f"{source}: eval")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in seen:
        raise SlimtuneError(f"{source}: baseline {baseline!r} is not a stage name ({', '.join(seen) or 'none'})")
    int4 = build(Int4Config, raw.get("int4") or {}, f"{source}: int4")
    check_positions(source, model, stages, ev, ("max_length", "max_new_tokens", "parity_tokens", "speed_new_tokens"))
    return GenRecipe(data, model, stages, list(export), ev, baseline, source, int4=int4)
