"""`Int4Config`: how a `genai-int4` export quantizes, the `int4:` block of a generate recipe. No torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SlimtuneError

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
