"""A `task: generate` recipe: the same shape as a classification recipe, validated as strictly.

    task:   generate
    data:   {name: chatterbot_qa} | {path: pairs.jsonl, prompt_column: prompt, response_column: response}
    model:  smollm2-135m | PATH/TO/HF_CAUSAL_LM
    stages: [{name: untuned, method: baseline}, {name: lora, method: lora, max_minutes: 20}, ...]
    export: [genai-int4, genai-fp32]
    eval:   {answer_prompts: 32, max_new_tokens: 32, ...}
    int4:   {algo: k_quant, block_size: 32, accuracy_level: 4, int8: [], grid: keep}   # how genai-int4 quantizes
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SlimtuneError
from ..schema import FROM_MODEL, NAME_RE, Stage, _nondefault, build, parse_stages
from .data import GenDataConfig
from .export import DECODER_FORMATS
from .gguf_export import check_available
from .registry import GEN_METHODS

TOP_KEYS = {"task", "data", "model", "stages", "export", "eval", "baseline", "int4"}
# the GenAI builder's `matmul_mixed_precision` selectors: the output projection (lm_head), and
# llama.cpp's "mixed" choice (first and last eighth of the layers plus every third layer's
# qkv / v / down projections)
INT8_GROUPS = ("last_matmul", "mixed_layers")


@dataclass
class Int4Config:
    """How `genai-int4` quantizes (the GenAI builder's weight-only MatMulNBits options).

    Measured on SmolLM2-135M-Instruct (120 chatterbot test pairs, response perplexity; fp32 23.0,
    decode at batch 1 on 2 cores): round-to-nearest, block 32 (the builder's own default) 33.8 at
    86 MB; `k_quant`, block 32 30.0 at 88 MB and the same speed; `k_quant`, block 16 25.6 at 106 MB
    but ~0.6x the decode speed. fp32 activations (`accuracy_level: 1`) barely helped (33.3) and cost
    a third of the speed; asymmetric (uint4) weights did not load (the builder's shared embedding
    Gather), so they are not offered. `int8: [last_matmul, mixed_layers]` (k_quant, block 32): 24.1,
    within 5% of fp32, at 112 MiB and 0.75x the decode speed; either group alone: 28.3 / 25.8.

    `grid: keep` (the default) goes first: layer weights already on a 4-bit grid (the packaged Q4_1
    GGUF, a `weight_only` int4 stage) are exported on that grid exactly, a merged LoRA as its base
    plus the adapter (grid.py); the options above then apply only to what the builder still
    quantizes (the tied embedding / output table). Untuned SmolLM2: 24.3 at block 32, 22.3 at
    block 16 (fp32 23.0); LoRA-tuned: 1.05x fp32 at block 16, 5.2x smaller, ~0.7x the decode speed
    of `grid: requantize` (the block-minimum term's small MatMuls)."""

    algo: str = "k_quant"  # k_quant | rtn
    block_size: int = 32  # 16 | 32 | 64 | 128 | 256 weights per scale
    accuracy_level: int = 4  # 4: int8 activations (the CPU default) | 3 bf16 | 2 fp16 | 1 fp32
    int8: list[str] = field(default_factory=list)  # MatMul groups kept at int8: last_matmul (lm_head), mixed_layers
    grid: str = "keep"  # keep: layer weights already on a 4-bit grid stay on it (grid.py) | requantize: the builder's own

    def __post_init__(self) -> None:
        if not isinstance(self.int8, list) or any(g not in INT8_GROUPS for g in self.int8):
            raise SlimtuneError(f"int4.int8 must be a list of {', '.join(INT8_GROUPS)}, not {self.int8!r}")
        if self.int8 and self.block_size != 32:  # measured: the builder's int8 groups fail to reshape at 64 and 128
            raise SlimtuneError(f"int4.int8 needs block_size 32 (onnxruntime-genai 0.18 fails on int8 groups at "
                                f"block {self.block_size}), got {self.block_size}")
        if self.algo not in ("k_quant", "rtn"):
            raise SlimtuneError(f"int4.algo must be k_quant or rtn, not {self.algo!r}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise SlimtuneError(f"int4.block_size must be one of 16, 32, 64, 128, 256, not {self.block_size!r}")
        if self.accuracy_level not in (1, 2, 3, 4):
            raise SlimtuneError(f"int4.accuracy_level must be 1, 2, 3 or 4, not {self.accuracy_level!r}")
        if self.grid not in ("keep", "requantize"):
            raise SlimtuneError(f"int4.grid must be keep or requantize, not {self.grid!r}")

    def builder_options(self) -> dict:
        opts = {"algo_config": self.algo, "block_size": self.block_size, "accuracy_level": self.accuracy_level}
        if self.int8:
            opts["matmul_mixed_precision"] = ",".join(f"{g}:int8" for g in self.int8)
        return opts

    def as_dict(self) -> dict:
        # int8 only when set (fingerprints from before it existed still hold); grid always: a genai-int4
        # built before it existed was requantized and is rebuilt
        out = {"algo": self.algo, "block_size": self.block_size, "accuracy_level": self.accuracy_level}
        return out | ({"int8": list(self.int8)} if self.int8 else {}) | {"grid": self.grid}


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
        raise SlimtuneError(f"{source}: model must be a packaged decoder (smollm2-135m) or a folder path")
    stages = parse_stages(raw.get("stages"), GEN_METHODS, source, "method {method!r} is not a generate method")
    seen = [st.name for st in stages]
    export = raw.get("export") or []
    if not isinstance(export, list) or any(f not in DECODER_FORMATS for f in export):
        raise SlimtuneError(f"{source}: export of a generate recipe must be a list of formats from: {', '.join(DECODER_FORMATS)}")
    for fmt in export:
        check_available(fmt)  # before any stage trains
    ev = build(GenEvalConfig, raw.get("eval") or {}, f"{source}: eval")
    baseline = raw.get("baseline")
    if baseline is not None and baseline not in seen:
        raise SlimtuneError(f"{source}: baseline {baseline!r} is not a stage name ({', '.join(seen) or 'none'})")
    int4 = build(Int4Config, raw.get("int4") or {}, f"{source}: int4")
    return GenRecipe(data, model, stages, list(export), ev, baseline, source, int4=int4)
