"""How to train, as data (no torch): the fields every training method's config shares.

`TrainConfig` is the loop's settings; `RecoveryConfig` adds the objective of training that
recovers a model after surgery (pruning, sharing): CE on the labels, optionally plus KL to the
unchanged model's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import SlimtuneError, one_of
from ..text import check_truncation

OPTIMIZERS = ("adamw", "sgd")
CLASS_WEIGHTS = ("none", "balanced", "auto")
AUTO_IMBALANCE = 1.5  # class_weight: auto weighs the classes when majority / minority (train) exceeds this


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
    max_length: int | None = None  # unset: the data's 95th percentile (text.fill_max_length)
    truncation: str = "head"  # head | head_tail (keep the start and the end of long texts)
    seed: int = 42
    early_stopping_patience: int = 0  # > 0: stop when validation accuracy stops improving
    eval_steps: int = 0  # validation every N steps (0: once per epoch)
    group_by_length: bool = True
    checkpoint_steps: int = 0  # > 0: keep a resumable checkpoint every N steps (interrupted runs continue)
    max_minutes: float = 0  # > 0: stop training after this much wall time (methods compared on one budget)
    # the CE term's class weights: none | balanced (n / (K * count) per class, counted in train) |
    # auto (balanced when the largest class of train is over AUTO_IMBALANCE times the smallest, else none)
    class_weight: str = "none"

    def __post_init__(self) -> None:
        one_of("optimizer", self.optimizer, OPTIMIZERS)
        one_of("class_weight", self.class_weight, CLASS_WEIGHTS)
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


def class_weights(mode: str, labels: list[int], n_classes: int) -> list[float] | None:
    """The CE term's per-class weights for `mode` (TrainConfig.class_weight) from the training labels
    (negative ids, unlabelled rows, left out): balanced is n / (K * count_k), scikit-learn's
    `class_weight="balanced"`, so a balanced set gets 1.0 everywhere; None means unweighted."""
    if mode == "none":
        return None
    counts = [0] * n_classes
    for y in labels:
        if y >= 0:
            counts[y] += 1
    present = [c for c in counts if c]
    if not present:
        return None
    if mode == "auto" and max(present) <= AUTO_IMBALANCE * min(present):
        return None
    n, k = sum(present), len(present)
    return [n / (k * c) if c else 0.0 for c in counts]  # a class absent from train never appears as a label


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
