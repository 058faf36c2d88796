"""The one training path every method uses: transformers' Trainer (accelerate underneath).

Methods decide *which* parameters train (by setting `requires_grad`) and may pass extra
callbacks or a loss; this module only runs the loop. Dynamic padding (DataCollatorWithPadding)
and length-grouped batches keep CPU steps short. Multi-process runs come from launching the same
command under `torchrun` / `accelerate launch`; there is no distribution code here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from . import compute, distributed
from .data import Splits, TextSet
from .errors import SlimtuneError
from .profile import check_truncation, encode

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
        if self.optimizer not in OPTIMIZERS:
            raise SlimtuneError(f"optimizer: {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.batch_size < 1 or self.learning_rate <= 0 or (self.epochs <= 0 and self.max_steps <= 0):
            raise SlimtuneError("training: batch_size >= 1, learning_rate > 0 and epochs or max_steps > 0 are required")
        for name, ok, rule in [("max_length", self.max_length is None or self.max_length >= 2, ">= 2 (room for [CLS] and [SEP])"),
                               ("warmup", 0 <= self.warmup < 1, "a fraction of the steps in [0, 1)"),
                               ("weight_decay", self.weight_decay >= 0, ">= 0"),
                               ("early_stopping_patience", self.early_stopping_patience >= 0, ">= 0"),
                               ("eval_steps", self.eval_steps >= 0, ">= 0"),
                               ("checkpoint_steps", self.checkpoint_steps >= 0, ">= 0"),
                               ("max_minutes", self.max_minutes >= 0, ">= 0")]:
            if not ok:
                raise SlimtuneError(f"{name} must be {rule}, not {getattr(self, name)!r}")
        check_truncation(self.truncation)


class EncodedDataset:
    """A torch-style dataset of tokenized examples; padding happens per batch in the collator."""

    def __init__(self, tokenizer, data: TextSet, max_length: int | None, truncation: str = "head"):
        limit = max_length or _tokenizer_limit(tokenizer)
        enc = encode(tokenizer, data.texts, limit, truncation)
        self.rows = [
            {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": data.labels[i]}
            | ({"token_type_ids": enc["token_type_ids"][i]} if "token_type_ids" in enc else {})
            for i in range(len(data))
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def _tokenizer_limit(tokenizer) -> int:
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 100_000 else 512


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def train(
    model, tokenizer, splits: Splits, cfg: TrainConfig, work_dir: Path, callbacks=(), trainer_cls=None,
    train_set=None, collator=None, checkpoint_dir: Path | None = None,
) -> dict:
    """Train `model` in place on `splits.train` (or a prepared `train_set`); returns a summary.

    `trainer_cls` (a Trainer subclass with its own `compute_loss`) and `collator` are how methods
    such as distillation change the objective without a second training loop. With
    `cfg.checkpoint_steps` and a `checkpoint_dir` that survives interruption, a rerun resumes from
    the last checkpoint (weights, optimizer, scheduler, RNG) instead of starting over.
    """
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments

    train_set = train_set if train_set is not None else EncodedDataset(tokenizer, splits.train, cfg.max_length, cfg.truncation)
    val_set = EncodedDataset(tokenizer, splits.val, cfg.max_length, cfg.truncation) if len(splits.val) else None
    early = cfg.early_stopping_patience > 0 and val_set is not None
    strategy = ("steps" if cfg.eval_steps else "epoch") if val_set is not None else "no"
    resumable = cfg.checkpoint_steps > 0 and checkpoint_dir is not None
    if resumable and early:
        raise SlimtuneError("checkpoint_steps and early_stopping_patience cannot be combined yet; choose one")
    save_strategy = "steps" if resumable else (strategy if early else "no")
    args = dict(
        output_dir=str(checkpoint_dir if resumable else work_dir),
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,
        warmup_steps=cfg.warmup,
        lr_scheduler_type="linear",
        seed=cfg.seed,
        eval_strategy=strategy,
        eval_steps=cfg.eval_steps or None,
        save_strategy=save_strategy,
        save_steps=cfg.checkpoint_steps or None,
        save_total_limit=1 if (early or resumable) else None,
        load_best_model_at_end=early,
        metric_for_best_model="accuracy" if early else None,
        greater_is_better=True,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        logging_steps=max(1, _steps(cfg, len(train_set)) // 20),
        report_to="none",
        optim="adamw_torch",
        save_only_model=not resumable,  # resuming needs optimizer and scheduler state
        dataloader_num_workers=0,
        disable_tqdm=True,  # progress goes to stderr through console.trainer_progress, not tqdm on stdout
    )
    # hook (compute.py, distributed.py): device, precision, the DDP batch split and the recipe's `trainer:` extras
    args = TrainingArguments(**(args | compute.from_callbacks(callbacks).training_arguments(cfg.batch_size)))
    # Every loss here is a mean over the batch. A forward that takes **kwargs makes the Trainer assume
    # the model sums over `num_items_in_batch` instead: it then multiplies the loss by the number of
    # processes and skips the division by gradient_accumulation_steps (N x the gradient; invisible
    # with Adam, N x the learning rate with SGD). Say so, on the model the Trainer inspects.
    for m in {id(model): model, id(base := getattr(model, "get_base_model", lambda: model)()): base}.values():
        m.accepts_loss_kwargs = False
    optimizers = (None, None)
    if cfg.optimizer == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizers = (torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay), None)

    def compute_metrics(pred):
        return {"accuracy": float((np.asarray(pred.predictions).argmax(-1) == pred.label_ids).mean())}

    trainer = (trainer_cls or Trainer)(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        data_collator=collator or DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics if val_set is not None else None,
        optimizers=optimizers,
        callbacks=[*callbacks, *([EarlyStoppingCallback(cfg.early_stopping_patience)] if early else []),
                   *([TimeBudget(cfg.max_minutes)] if cfg.max_minutes > 0 else [])],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts on stdout
    from .benchmark import peak_rss_mb, reset_peak_rss

    fresh_peak = reset_peak_rss()  # the training's own peak, not the loading before it
    last = _last_checkpoint(checkpoint_dir) if resumable else None
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    history = trainer.state.log_history
    val_acc = [h["eval_accuracy"] for h in history if "eval_accuracy" in h]
    model.eval()
    if cfg.truncation != "head":  # predictors cut texts the way the model was trained
        model.config.slimtune_truncation = cfg.truncation
    return {
        "train_steps": int(trainer.state.global_step),
        "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
        "train_loss": float(result.training_loss),
        "train_examples": len(train_set),
        "val_accuracy": val_acc,
        "resumed_from_step": int(last.name.split("-")[-1]) if last else 0,
        "seconds_per_step": float(result.metrics.get("train_runtime", 0.0)) / max(1, trainer.state.global_step),
        "train_peak_rss_mb": peak_rss_mb() if fresh_peak else None,
        **distributed.record(args, cfg.batch_size),  # world size, effective (global) batch
    }


def TimeBudget(minutes: float):
    """A Trainer callback that ends training once `minutes` of wall time have passed since it began."""
    import time

    from transformers import TrainerCallback

    class _TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.deadline = time.monotonic() + 60 * minutes

        def on_step_end(self, args, state, control, **kwargs):
            # under DDP every rank must stop at the same step (clocks differ): stop when any rank is out of time
            if distributed.any_rank(time.monotonic() >= self.deadline):
                control.should_training_stop = True

    return _TimeBudget()


def _last_checkpoint(folder: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not Path(folder).is_dir():
        return None
    last = get_last_checkpoint(str(folder))
    return Path(last) if last else None


def _steps(cfg: TrainConfig, n: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    return max(1, math.ceil(n / cfg.batch_size) * math.ceil(cfg.epochs))
