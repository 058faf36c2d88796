"""Stage methods of a `task: generate` recipe: baseline, full, lora, weight_only, prune_layers.

Each is a config dataclass plus `apply(model, tokenizer, cfg, ctx) -> StageResult`, like the
encoder methods (slimtune/stage.py), and trains through the one training path
(`slimtune.train.loop.train`, the Trainer) with the prompt/response dataset, its collator and
`causal_lm_loss` passed in: the causal-LM loss the model computes from `labels` is already the
response-only loss (labels are -100 on the prompt). Nothing here imports torch at import time:
recipes are validated with the configs alone. `registry.py` imports every method module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import SlimtuneError, check_ranges
from ..stage import Artifact, StageResult
from ..train.config import TrainConfig
from ..train.loop import count_trainable
from .chat import PairDataset, collate
from .data import PairSplits


@dataclass
class GenContext:
    splits: PairSplits
    work_dir: Path
    log: Callable[[str], None] = print
    cache_dir: Path | None = None
    checkpoint_dir: Path | None = None
    callbacks: list = field(default_factory=list)
    teacher: Path | None = None  # the stage's source folder (what a pruned model distils from)


@dataclass(frozen=True)
class GenMethod:
    name: str
    config_cls: type
    apply: Callable


GEN_METHODS: dict[str, GenMethod] = {}


def register(name: str, config_cls: type):
    def wrap(fn):
        GEN_METHODS[name] = GenMethod(name, config_cls, fn)
        return fn

    return wrap


@dataclass
class GenTrainConfig(TrainConfig):
    """How to train on prompt/response pairs (TrainConfig's fields; the loss is on response tokens only)."""

    batch_size: int = 8
    learning_rate: float = 5e-5
    max_length: int | None = 256  # prompt + response tokens; responses cut beyond it

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.early_stopping_patience:
            raise SlimtuneError("early_stopping_patience is for classification (validation accuracy); "
                                "a generate stage stops at max_steps, epochs or max_minutes")
        if self.truncation != "head":
            raise SlimtuneError("truncation: a generate stage keeps the prompt and cuts the response end (head only)")


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


def causal_lm_loss(model, inputs):
    """The model's own loss on `labels` (shifted next-token cross-entropy, -100 skipped): with
    labels -100 on the prompt, the loss on the response tokens only."""
    out = model(**inputs)
    return out.loss, out


def training_context(ctx: GenContext):
    """A StageContext for `train.loop.train`: the run's work and checkpoint folders, log and
    callbacks, and no classification splits (validation runs as perplexity after the stage, not
    inside the Trainer)."""
    from ..data import Splits, TextSet
    from ..stage import StageContext

    nothing = TextSet([], [])
    return StageContext(Splits(nothing, nothing, nothing, [], ctx.splits.source), ctx.work_dir, ctx.log,
                        cache_dir=ctx.cache_dir, checkpoint_dir=ctx.checkpoint_dir, callbacks=list(ctx.callbacks))


def train_pairs(model, tokenizer, cfg: GenTrainConfig, ctx: GenContext) -> dict:
    """Train `model` in place on the train pairs through slimtune's one training path."""
    from ..train.loop import train

    data = PairDataset(tokenizer, ctx.splits.train.prompts, ctx.splits.train.responses, ctx.splits.system, cfg.max_length)
    if not len(data):
        raise SlimtuneError(f"no training pair has a response token within max_length={cfg.max_length}")
    if data.dropped:
        ctx.log(f"  {data.dropped} training pairs left out: their response starts past max_length={cfg.max_length}")
    trainable, total = count_trainable(model)
    ctx.log(f"training {trainable:,} of {total:,} parameters ({trainable / total:.2%}) on {len(data)} pairs "
            f"({data.response_tokens:,} response tokens)")
    info = train(model, tokenizer, cfg, training_context(ctx), loss=causal_lm_loss, train_set=data,
                 collator=collate(tokenizer.pad_token_id))
    info.pop("val_accuracy", None)
    return {"trainable_params": trainable, "total_params": total, "train_response_tokens": data.response_tokens, **info}


@register("baseline", GenBaselineConfig)
def baseline(model, tokenizer, cfg: GenBaselineConfig, ctx: GenContext):
    """The model as it comes in (e.g. the untuned instruct model): a row of the report. A merged
    LoRA's adapter record comes along (genai-int4 builds from it: grid.py)."""
    from ..artifacts.peft_adapter import ADAPTER_DIR, record

    if ctx.teacher and (record(ctx.teacher) or {}).get("merged"):
        return StageResult(model, tokenizer, artifact=Artifact("peft_adapter", {"adapter": Path(ctx.teacher) / ADAPTER_DIR}))
    return StageResult(model, tokenizer)


@register("full", GenTrainConfig)
def full(model, tokenizer, cfg: GenTrainConfig, ctx: GenContext):
    """Fine-tune every parameter on the response tokens."""
    model.requires_grad_(True)
    return StageResult(model, tokenizer, train_pairs(model, tokenizer, cfg, ctx))


@register("lora", GenLoraConfig)
def lora(model, tokenizer, cfg: GenLoraConfig, ctx: GenContext):
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
def weight_only(model, tokenizer, cfg: GenWeightOnlyConfig, ctx: GenContext):
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
