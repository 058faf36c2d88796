"""How to train, as data (no torch): the fields every training method's config shares.

`TrainConfig` is the loop's settings; `RecoveryConfig` adds the objective of training that
recovers a model after surgery (pruning, sharing): CE on the labels, optionally plus KL to the
unchanged model's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimtuneError, one_of
from ..profile import check_truncation

OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    """How to train (shared by every training method's config)."""

    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16
    learning_rate: float = 5e-5
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.01
    warmup: float = 0.06  # fraction of the steps
    max_length: int | None = None  # unset: the data's 95th percentile (profile.fill_max_length)
    truncation: str = "head"  # head | head_tail (keep the start and the end of long texts)
    seed: int = 42
    early_stopping_patience: int = 0  # > 0: stop when validation accuracy stops improving
    eval_steps: int = 0  # validation every N steps (0: once per epoch)
    group_by_length: bool = True
    checkpoint_steps: int = 0  # > 0: keep a resumable checkpoint every N steps (interrupted runs continue)
    max_minutes: float = 0  # > 0: stop training after this much wall time (methods compared on one budget)

    def __post_init__(self) -> None:
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.batch_size < 1 or self.learning_rate <= 0 or (self.epochs <= 0 and self.max_steps <= 0):
            raise SlimtuneError("training: batch_size >= 1, learning_rate > 0 and epochs or max_steps > 0 are required")
        for name, ok, rule in [("epochs", self.epochs > 0, "> 0"),
                               ("max_steps", self.max_steps == -1 or self.max_steps >= 1, ">= 1 (or -1: no step limit)"),
                               ("max_length", self.max_length is None or self.max_length >= 2, ">= 2 (room for [CLS] and [SEP])"),
                               ("warmup", 0 <= self.warmup < 1, "a fraction of the steps in [0, 1)"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                               ("seed", self.seed >= 0, ">= 0"),
                               ("early_stopping_patience", self.early_stopping_patience >= 0, ">= 0"),
                               ("eval_steps", self.eval_steps >= 0, ">= 0"),
                               ("checkpoint_steps", self.checkpoint_steps >= 0, ">= 0"),
                               ("max_minutes", self.max_minutes >= 0, ">= 0")]:
            if not ok:
                raise SlimtuneError(f"{name} must be {rule}, not {getattr(self, name)!r}")
        check_truncation(self.truncation)


@dataclass
class RecoveryConfig(TrainConfig):
    learning_rate: float = 3e-5
    recover: bool = True  # False: change the model only, no training
    alpha: float = 1.0  # weight of the hard-label CE; 1 - alpha on KL to the unchanged model's logits
    temperature: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.alpha <= 1 or self.temperature <= 0:
            raise SlimtuneError("alpha must be in [0, 1] and temperature > 0")
