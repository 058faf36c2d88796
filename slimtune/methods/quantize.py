"""Quantization stages that keep a torch model: fp16/bf16, torch dynamic int8, weight-only codecs.

Each returns the model unchanged in fp32 as a compact artifact (`Artifact("compact", {"codec":
spec})`, see artifacts/compact.py `rules`) plus, where the model should *compute* differently, a
load-time `runtime`: the stage folder then holds only the compact weights, and the runner's
re-load + measure sees exactly what a user loading that folder gets.

    baseline     the model as it comes (the fp32 row of a comparison table)
    cast         fp16 or bf16 storage; `compute: bf16` also runs in bf16
    torch_int8   int8 weights on disk; torch `quantize_dynamic` on every Linear at load
    weight_only  int8 / int4 (group-wise) / kmeans codebook weights, dequantized to fp32 at load;
                 `embeddings` picks a separate codec for the embedding tables
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SlimtuneError
from ..stage import Artifact, StageContext, StageResult, register

EMBEDDINGS = r"embeddings\."  # tensor names of the embedding tables (BERT-style models)


def _compact(model, tokenizer, info: dict, codec, runtime: str | None = None) -> StageResult:
    return StageResult(model, tokenizer, info, Artifact("compact", {"codec": codec, "runtime": runtime}))


@dataclass
class CastConfig:
    dtype: str = "fp16"  # fp16 | bf16: how every float tensor is stored
    compute: str = "fp32"  # fp32 (cast back on load) | bf16 (run in bf16; needs dtype bf16)

    def __post_init__(self) -> None:
        if self.dtype not in ("fp16", "bf16") or self.compute not in ("fp32", "bf16"):
            raise SlimtuneError(f"cast: dtype must be fp16 or bf16 and compute fp32 or bf16, got {self.dtype}, {self.compute}")
        if self.compute == "bf16" and self.dtype != "bf16":
            raise SlimtuneError("cast: compute bf16 needs dtype bf16 (fp16 weights would be rounded twice)")


@register("cast", CastConfig)
def cast(model, tokenizer, cfg: CastConfig, ctx: StageContext):
    """Store every float tensor in fp16 or bf16 (half the size); optionally compute in bf16."""
    info, runtime = {}, None
    if cfg.compute == "bf16":
        from ..measure.bench import hardware

        isa = hardware()["isa"]
        runtime, info["cpu_bf16"] = "bf16", bool(isa.get("avx512_bf16") or isa.get("amx_bf16"))
        if not info["cpu_bf16"]:
            ctx.log("  this CPU has no avx512_bf16/amx_bf16: bf16 matmuls are emulated and may be slower than fp32")
    return _compact(model, tokenizer, info, cfg.dtype, runtime)


@dataclass
class TorchInt8Config:
    embeddings: str = "fp32"  # fp32 | int8 | int4: how the embedding tables are stored (weight-only)


@register("torch_int8", TorchInt8Config)
def torch_int8(model, tokenizer, cfg: TorchInt8Config, ctx: StageContext):
    """torch dynamic int8 on Linear layers (per-channel weights, activations quantized per call)."""
    import torch

    from ..measure.bench import int8_isa

    if cfg.embeddings not in ("fp32", "int8", "int4"):
        raise SlimtuneError(f"torch_int8: embeddings must be fp32, int8 or int4, got {cfg.embeddings!r}")
    info = int8_isa(ctx.log)
    linear = [re.escape(f"{n}.weight") for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    spec = [{"match": f"^({'|'.join(linear)})$", "codec": "int8"}]  # exactly what quantize_dynamic will quantize
    if cfg.embeddings != "fp32":
        spec.insert(0, {"match": EMBEDDINGS, "codec": cfg.embeddings})
    return _compact(model, tokenizer, info, spec, "torch-int8-dynamic")


@dataclass
class WeightOnlyConfig:
    codec: str = "int4"  # int8 | int4 | kmeans
    group_size: int = 64  # int4: weights per (scale, minimum) pair along a row
    centroids: int = 16  # kmeans: codebook size per matrix (<= 16 packs two indices a byte)
    embeddings: str = "same"  # codec for the embedding tables: same | fp32 | fp16 | int8 | int4 | kmeans

    def __post_init__(self) -> None:
        if self.codec not in ("int8", "int4", "kmeans"):
            raise SlimtuneError(f"weight_only: codec must be int8, int4 or kmeans, got {self.codec!r}")
        if self.embeddings not in ("same", "fp32", "fp16", "int8", "int4", "kmeans"):
            raise SlimtuneError(f"weight_only: embeddings {self.embeddings!r} is not one of same, fp32, fp16, int8, int4, kmeans")
        if self.group_size < 2 or self.group_size % 2:
            raise SlimtuneError(f"weight_only: group_size must be an even number >= 2, got {self.group_size}")
        if not 2 <= self.centroids <= 256:
            raise SlimtuneError(f"weight_only: centroids must be in 2..256, got {self.centroids}")

    def spec(self, codec: str) -> dict:
        options = {"int4": {"group_size": self.group_size}, "kmeans": {"centroids": self.centroids}}
        return {"codec": codec, **options.get(codec, {})}


@register("weight_only", WeightOnlyConfig)
def weight_only(model, tokenizer, cfg: WeightOnlyConfig, ctx: StageContext):
    """Weight-only int8 / int4 / k-means storage; the loader dequantizes to fp32."""
    emb = cfg.codec if cfg.embeddings == "same" else cfg.embeddings
    spec = [cfg.spec(cfg.codec)]
    if emb == "fp32":  # every tensor but the embedding tables
        spec = [{"match": f"^(?!.*{EMBEDDINGS})", **cfg.spec(cfg.codec)}]
    elif emb != cfg.codec:
        spec.insert(0, {"match": EMBEDDINGS, **cfg.spec(emb)})
    return _compact(model, tokenizer, {}, spec)
