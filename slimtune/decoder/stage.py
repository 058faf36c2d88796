"""How a stage of a `task: generate` recipe trains: the training config every generate method
shares (`GenTrainConfig`) and the one way to train on prompt/response pairs (`train_pairs`). A
generate method gets the one `StageContext` (slimtune/stage.py; its splits are `PairSplits`, its
`teacher` the stage's source folder) and registers in the one registry (`register(name, cfg,
task=GENERATE)`). The methods themselves (methods.py, prune/) import this module, never each other.

Training goes through the one training path (`slimtune.train.loop.train`, the Trainer) with the
prompt/response dataset, its collator and `causal_lm_loss` passed in: the causal-LM loss the model
computes from `labels` is already the response-only loss (labels are -100 on the prompt). Nothing
here imports torch at import time: recipes are validated with the configs alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from ..errors import SlimtuneError
from ..stage import StageContext, register as register_method
from ..tasks.names import GENERATE
from ..train.config import TrainConfig
from ..train.loop import count_trainable
from .chat import PairDataset, collate

register = partial(register_method, task=GENERATE)  # `@register("lora", GenLoraConfig)`: a generate method


@dataclass
class GenTrainConfig(TrainConfig):
    """How to train on prompt/response pairs (TrainConfig's fields; the loss is on response tokens only)."""

    batch_size: int = 8
    learning_rate: float = 5e-5
    max_length: int | None = None  # prompt + response tokens, responses cut beyond; unset: 256 cut to the model (text.length_for)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.early_stopping_patience:
            raise SlimtuneError("early_stopping_patience is for classification (validation accuracy); "
                                "a generate stage stops at max_steps, epochs or max_minutes")
        if self.truncation != "head":
            raise SlimtuneError("truncation: a generate stage keeps the prompt and cuts the response end (head only)")


def causal_lm_loss(model, inputs):
    """The model's own loss on `labels` (shifted next-token cross-entropy, -100 skipped): with
    labels -100 on the prompt, the loss on the response tokens only."""
    out = model(**inputs)
    return out.loss, out


def training_context(ctx: StageContext):
    """A StageContext for `train.loop.train`: the run's work and checkpoint folders, log and
    callbacks, and no classification splits (validation runs as perplexity after the stage, not
    inside the Trainer)."""
    from ..data import Splits, TextSet

    nothing = TextSet([], [])
    return StageContext(Splits(nothing, nothing, nothing, [], ctx.splits.source), ctx.work_dir, ctx.log,
                        cache_dir=ctx.cache_dir, checkpoint_dir=ctx.checkpoint_dir, callbacks=list(ctx.callbacks))


def train_pairs(model, tokenizer, cfg: GenTrainConfig, ctx: StageContext) -> dict:
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
