"""Fine-tuning: full, head only, last N encoder layers, BitFit (biases only). PEFT methods: adapters.py.

"Head" means what `*ForSequenceClassification` adds on top of the encoder: the classifier and,
for BERT-style models, the pooler (randomly initialised when the source had none, as MiniLM-L3).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimtuneError, one_of
from ..model.structure import encoder_layers, freeze_all_but, head_modules
from ..stage import StageContext, StageResult, register
from ..train.config import TrainConfig
from ..train.loop import train


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


def _train(model, tokenizer, cfg: TrainConfig, ctx: StageContext) -> StageResult:
    return StageResult(model, tokenizer, train(model, tokenizer, cfg, ctx))


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
        one_of("subset", self.subset, ("all", "query_ffn"), "bitfit")


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
    return StageResult(model, tokenizer)
