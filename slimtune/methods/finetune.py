"""Fine-tuning: full, head only, last N encoder layers, BitFit (biases only). PEFT methods: adapters.py.

"Head" means what `*ForSequenceClassification` adds on top of the encoder: the classifier and,
for BERT-style models, the pooler (randomly initialised when the source had none, as MiniLM-L3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..errors import SlimtuneError
from ..train import TrainConfig, count_trainable, train
from . import StageContext, register


@dataclass
class FullConfig(TrainConfig):
    pass


@dataclass
class HeadOnlyConfig(TrainConfig):
    learning_rate: float = 1e-3


@dataclass
class LastNConfig(TrainConfig):
    layers: int = 2  # how many of the last encoder layers train (with the head)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 1:
            raise SlimtuneError("last_n: layers must be >= 1")


def head_names(model) -> list[str]:
    """Names of the head modules: the model's own children besides the encoder, plus its pooler."""
    base = model.base_model_prefix
    names = [n for n, m in model.named_children() if n != base and any(True for _ in m.parameters())]
    if getattr(getattr(model, base), "pooler", None) is not None:
        names.append(f"{base}.pooler")
    return names


def head_modules(model) -> list[nn.Module]:
    return [model.get_submodule(n) for n in head_names(model)]


def encoder_layers(model) -> nn.ModuleList:
    """The longest ModuleList of transformer blocks (BERT: encoder.layer; GPT-2: h; Llama: layers)."""
    lists = [m for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and name.split(".")[-1] in ("layer", "layers", "h")]
    if not lists:
        raise SlimtuneError(f"{type(model).__name__}: cannot find its encoder layers")
    return max(lists, key=len)


def freeze_all_but(model, modules: list[nn.Module]) -> None:
    model.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)


def _train(model, tokenizer, cfg: TrainConfig, ctx: StageContext) -> tuple:
    trainable, total = count_trainable(model)
    ctx.log(f"training {trainable:,} of {total:,} parameters ({trainable / total:.2%})")
    info = train(model, tokenizer, ctx.splits, cfg, ctx.work_dir / "trainer", callbacks=ctx.callbacks, checkpoint_dir=ctx.checkpoint_dir)
    return model, tokenizer, {"trainable_params": trainable, "total_params": total, **info}


@register("full", FullConfig)
def full(model, tokenizer, cfg: FullConfig, ctx: StageContext):
    """Fine-tune every parameter."""
    model.requires_grad_(True)
    return _train(model, tokenizer, cfg, ctx)


@register("head_only", HeadOnlyConfig)
def head_only(model, tokenizer, cfg: HeadOnlyConfig, ctx: StageContext):
    """Train only the classification head (pooler + classifier); the encoder stays frozen."""
    freeze_all_but(model, head_modules(model))
    return _train(model, tokenizer, cfg, ctx)


@register("last_n", LastNConfig)
def last_n(model, tokenizer, cfg: LastNConfig, ctx: StageContext):
    """Train the last N encoder layers and the head; embeddings and earlier layers stay frozen."""
    layers = encoder_layers(model)
    if cfg.layers > len(layers):
        raise SlimtuneError(f"last_n: layers={cfg.layers} but the model has {len(layers)} layers")
    freeze_all_but(model, [*layers[len(layers) - cfg.layers :], *head_modules(model)])
    return _train(model, tokenizer, cfg, ctx)


@dataclass
class BitFitConfig(TrainConfig):
    learning_rate: float = 1e-3
    subset: str = "all"  # all: every bias | query_ffn: query and FFN-intermediate biases only

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.subset not in ("all", "query_ffn"):
            raise SlimtuneError(f"bitfit: subset {self.subset!r} is not one of all, query_ffn")


@register("bitfit", BitFitConfig)
def bitfit(model, tokenizer, cfg: BitFitConfig, ctx: StageContext):
    """BitFit (Ben Zaken et al. 2022): train only bias terms, plus the head."""
    freeze_all_but(model, head_modules(model))
    wanted = ("query.bias", "intermediate.dense.bias") if cfg.subset == "query_ffn" else ("bias",)
    base = getattr(model, model.base_model_prefix)
    for name, p in base.named_parameters():
        if name.endswith(wanted):
            p.requires_grad_(True)
    return _train(model, tokenizer, cfg, ctx)


@dataclass
class BaselineConfig:
    pass


@register("baseline", BaselineConfig)
def baseline(model, tokenizer, cfg: BaselineConfig, ctx: StageContext):
    """Keep the incoming model as it is: measure a trained model as a row of the report."""
    return model, tokenizer, {}
