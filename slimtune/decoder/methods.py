"""Stage methods of a `task: generate` recipe: baseline, full, lora, weight_only (pruning: prune/).

Each is a config dataclass plus `apply(model, tokenizer, cfg, ctx) -> StageResult`, like the
encoder methods, registered in the one registry (slimtune/stage.py) under the generate task
(decoder/stage.py: `register`, the shared training config and `train_pairs`, the one training path).
Nothing here imports torch at import time: recipes are validated with the configs alone. The
generate task (slimtune/tasks/generate.py) imports every method module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlimtuneError, check_ranges
from ..stage import Artifact, StageContext, StageResult
from .stage import GenTrainConfig, register, train_pairs


@dataclass
class GenLoraConfig(GenTrainConfig):
    learning_rate: float = 5e-4
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.r < 1:
            raise SlimtuneError("lora: r must be >= 1")
        check_ranges("lora", self, alpha="> 0", dropout="in [0, 1)")


@dataclass
class GenBaselineConfig:
    pass


@register("baseline", GenBaselineConfig)
def baseline(model, tokenizer, cfg: GenBaselineConfig, ctx: StageContext):
    """The model as it comes in (e.g. the untuned instruct model): a row of the report. A merged
    LoRA's adapter record comes along (genai-int4 builds from it: grid.py)."""
    from ..artifacts.peft_adapter import ADAPTER_DIR, record

    if ctx.teacher and (record(ctx.teacher) or {}).get("merged"):
        return StageResult(model, tokenizer, artifact=Artifact("peft_adapter", {"adapter": Path(ctx.teacher) / ADAPTER_DIR}))
    return StageResult(model, tokenizer)


@register("full", GenTrainConfig)
def full(model, tokenizer, cfg: GenTrainConfig, ctx: StageContext):
    """Fine-tune every parameter on the response tokens."""
    model.requires_grad_(True)
    return StageResult(model, tokenizer, train_pairs(model, tokenizer, cfg, ctx))


@register("lora", GenLoraConfig)
def lora(model, tokenizer, cfg: GenLoraConfig, ctx: StageContext):
    """LoRA (PEFT) on the attention projections, merged into the weights after training."""
    import peft

    from ..artifacts.peft_adapter import ADAPTER_DIR, write_adapter

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise SlimtuneError(f"lora: target module {missing[0]!r} not in the model "
                            f"(Llama: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)")
    pcfg = peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=list(cfg.target_modules))
    pmodel = peft.get_peft_model(model, pcfg)
    info = train_pairs(pmodel, tokenizer, cfg, ctx)
    # the adapter is kept beside the merged model (it applies to the stage's source), marked merged
    adapter = write_adapter(pmodel, ctx.work_dir / ADAPTER_DIR, True, str(ctx.teacher or model.config.name_or_path))
    merged = pmodel.merge_and_unload()
    return StageResult(merged.eval(), tokenizer, info, Artifact("peft_adapter", {"adapter": adapter}))


@dataclass
class GenWeightOnlyConfig:
    codec: str = "int4"  # int8 | int4 (group-wise scale and minimum)
    group_size: int = 64  # int4: weights per (scale, minimum) pair along a row
    embeddings: str = "same"  # the token embedding table (tied to the output layer): same | fp32 | int8

    def __post_init__(self) -> None:
        if self.codec not in ("int8", "int4"):
            raise SlimtuneError(f"weight_only: codec must be int8 or int4, got {self.codec!r}")
        if self.embeddings not in ("same", "fp32", "int8"):
            raise SlimtuneError(f"weight_only: embeddings must be same, fp32 or int8, got {self.embeddings!r}")
        if self.group_size < 2 or self.group_size % 2:
            raise SlimtuneError(f"weight_only: group_size must be an even number >= 2, got {self.group_size}")


@register("weight_only", GenWeightOnlyConfig)
def weight_only(model, tokenizer, cfg: GenWeightOnlyConfig, ctx: StageContext):
    """Weight-only int8 / int4 storage of every matrix (the compact format's codecs): smaller on
    disk, dequantized to fp32 when loaded, so torch decodes no faster ("size-only"); the speed comes
    from `export: [genai-int4]`, whose kernels run int4 weights."""
    matrix = {"codec": cfg.codec, **({"group_size": cfg.group_size} if cfg.codec == "int4" else {})}
    emb = cfg.codec if cfg.embeddings == "same" else cfg.embeddings
    spec = [matrix]
    if emb == "fp32":
        spec = [{"match": r"^(?!.*embed_tokens\.)", **matrix}]
    elif emb != cfg.codec:
        spec.insert(0, {"match": r"embed_tokens\.", "codec": emb})
    info = {"storage_note": "size-only: dequantized to fp32 at load"}
    return StageResult(model, tokenizer, info, Artifact("compact", {"codec": spec}))
