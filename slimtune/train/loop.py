"""The one training path every method uses: transformers' Trainer (accelerate underneath).

Methods decide *which* parameters train (by setting `requires_grad`) and may pass extra
callbacks or a loss; this module only runs the loop. Dynamic padding (DataCollatorWithPadding)
and length-grouped batches keep CPU steps short. Multi-process runs come from launching the same
command under `torchrun` / `accelerate launch`; there is no distribution code here.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from .. import compute, distributed
from ..data import TextSet
from ..errors import SlimtuneError
from ..text import UNKNOWN_LIMIT, encode, tokenizer_limit
from .config import TrainConfig, class_weights


class EncodedDataset:
    """A torch-style dataset of tokenized examples; padding happens per batch in the collator."""

    def __init__(self, tokenizer, data: TextSet, max_length: int | None, truncation: str = "head"):
        limit = max_length or tokenizer_limit(tokenizer) or UNKNOWN_LIMIT
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


def count_trainable(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


class Collator:
    """Dynamic padding for the token fields; `extra_columns` (e.g. teacher logits, task ids) are
    taken out before padding and stacked as they are."""

    def __init__(self, tokenizer, extra_columns: tuple[str, ...] = ()):
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer)
        self.extra = tuple(extra_columns)

    def __call__(self, rows):
        import torch

        if not self.extra:
            return self.pad(rows)
        batch = self.pad([{k: v for k, v in r.items() if k not in self.extra} for r in rows])
        for key in self.extra:
            if key in rows[0]:
                values = [r[key] for r in rows]
                batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
        return batch


@functools.cache
def _loss_trainer():
    """Trainer whose loss is a plain function `loss(model, inputs) -> (loss, outputs)` (train/losses.py).

    Built on first use: importing transformers' Trainer costs seconds, and recipes are validated
    without it."""
    from transformers import Trainer

    class LossTrainer(Trainer):
        # Every loss in train/losses.py is a mean over the batch and ignores `num_items_in_batch`.
        # Left to guess, the Trainer takes a forward with **kwargs (peft, slim_bert) for one that
        # sums over `num_items_in_batch`: it then skips the division by gradient_accumulation_steps
        # (and gathers item counts across processes under DDP) -- N x the gradient, invisible with
        # Adam, N x the learning rate with SGD. Say so, once, for every loss.
        loss_is_scaled_for_ga = False

        def __init__(self, *args, loss, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss = loss
            self.model_accepts_loss_kwargs = False  # no num_items_in_batch: the loss is a batch mean

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):
            loss, out = self.loss(model, inputs)
            return (loss, out) if return_outputs else loss

    return LossTrainer


def class_weights_for(cfg: TrainConfig, ctx) -> list[float] | None:
    """The CE term's class weights for this training (cfg.class_weight over the training labels)."""
    return class_weights(cfg.class_weight, ctx.splits.train.labels, len(ctx.splits.label_names))


def train(model, tokenizer, cfg: TrainConfig, ctx, loss=None, train_set=None, extra_columns: tuple[str, ...] = (),
          callbacks=(), work_name: str = "trainer", checkpoints: bool = True, collator=None) -> dict:
    """Train `model` in place on `ctx.splits.train` (or a prepared `train_set`); returns a summary
    with the trainable and total parameter counts.

    `loss` (default: cross-entropy on the labels, weighted by `cfg.class_weight`) is a plain function
    `(model, inputs) -> (loss, outputs)`, built by `losses.objective` (a method that builds its own
    passes `class_weights_for(cfg, ctx)` to it); `extra_columns` are row fields it reads besides the
    tokens and labels (e.g. `teacher_logits`). `callbacks` come before the context's (progress).
    With `cfg.checkpoint_steps`, a context `checkpoint_dir` and `checkpoints`, a rerun resumes from
    the last checkpoint (weights, optimizer, scheduler, RNG) instead of starting over.
    `collator` replaces the default dynamic padding (`Collator`), e.g. for rows whose labels are
    token sequences (decoders); it receives the extra columns too.
    """
    import numpy as np
    import torch
    from transformers import EarlyStoppingCallback, TrainingArguments

    from .losses import objective

    splits, work_dir = ctx.splits, ctx.work_dir / work_name
    checkpoint_dir = ctx.checkpoint_dir if checkpoints else None
    trainable, total = count_trainable(model)
    ctx.log(f"training {trainable:,} of {total:,} parameters ({trainable / total:.2%})")
    weights = class_weights_for(cfg, ctx)
    if weights is not None:
        ctx.log(f"class weights ({cfg.class_weight}): " + ", ".join(f"{n} {w:.3f}" for n, w in zip(ctx.splits.label_names, weights)))
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
        # The Trainer drops every row field the model's forward does not name (teacher_logits,
        # task_ids): the loss then silently trained without the teacher. The collator builds
        # batches of exactly the token fields, labels and `extra_columns`, so nothing needs removing.
        remove_unused_columns=False,
        disable_tqdm=True,  # progress goes to stderr through console.trainer_progress, not tqdm on stdout
    )
    # hook (compute.py, distributed.py): device, precision, the DDP batch split and the recipe's `trainer:` extras
    run_compute = compute.from_callbacks([*callbacks, *ctx.callbacks])
    args = TrainingArguments(**(args | run_compute.training_arguments(cfg.batch_size)))
    optimizers = (None, None)
    if cfg.optimizer == "sgd":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizers = (torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay), None)

    def compute_metrics(pred):
        return {"accuracy": float((np.asarray(pred.predictions).argmax(-1) == pred.label_ids).mean())}

    trainer = _loss_trainer()(
        model=model,
        loss=loss or objective(class_weights=weights),
        args=args,
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        data_collator=collator or Collator(tokenizer, extra_columns),
        compute_metrics=compute_metrics if val_set is not None else None,
        optimizers=optimizers,
        callbacks=[*map(_as_trainer_callback, [*callbacks, *ctx.callbacks]), *([EarlyStoppingCallback(cfg.early_stopping_patience)] if early else []),
                   *([TimeBudget(cfg.max_minutes)] if cfg.max_minutes > 0 else [])],
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw log dicts on stdout
    from ..measure.bench import peak_rss_mb, reset_peak_rss

    fresh_peak = reset_peak_rss()  # the training's own peak, not the loading before it
    last = _last_checkpoint(checkpoint_dir) if resumable else None
    result = trainer.train(resume_from_checkpoint=str(last) if last else None)
    history = trainer.state.log_history
    val_acc = [h["eval_accuracy"] for h in history if "eval_accuracy" in h]
    model.eval()
    if cfg.truncation != "head":  # predictors cut texts the way the model was trained
        model.config.slimtune_truncation = cfg.truncation
    return {
        "trainable_params": trainable,
        "total_params": total,
        "train_steps": int(trainer.state.global_step),
        "train_seconds": float(result.metrics.get("train_runtime", 0.0)),
        "train_loss": float(result.training_loss),
        "train_examples": len(train_set),
        "class_weights": weights,
        "val_accuracy": val_acc,
        "resumed_from_step": int(last.name.split("-")[-1]) if last else 0,
        "seconds_per_step": float(result.metrics.get("train_runtime", 0.0)) / max(1, trainer.state.global_step),
        "train_peak_rss_mb": peak_rss_mb() if fresh_peak else None,
        **distributed.record(args, cfg.batch_size),  # world size, effective (global) batch
    }


def _as_trainer_callback(cb):
    """A plain object with `on_*` methods (e.g. the prune stage's MaskCallback, importable without
    torch) as a TrainerCallback: the Trainer calls every event on every callback."""
    from transformers import TrainerCallback

    if isinstance(cb, TrainerCallback):
        return cb
    wrapped = TrainerCallback()
    for name in dir(cb):
        if name.startswith("on_") and callable(getattr(cb, name)):
            setattr(wrapped, name, getattr(cb, name))
    return wrapped


def TimeBudget(minutes: float):
    """A Trainer callback that ends training once `minutes` of wall time have passed since it began,
    and anneals the learning rate to the deadline: the next step's rate is at most its peak times the
    share of the budget left. The linear schedule decays over `max_steps`; when the time runs out
    first, that schedule would stop with the rate still high, and a run cut short at a high rate ends
    worse than one annealed to the same budget (Li et al. 2020, "Budgeted Training"). When the steps
    end first, the step schedule is the lower of the two and nothing changes."""
    import time

    from transformers import TrainerCallback

    class _TimeBudget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.start = time.monotonic()

        def on_step_end(self, args, state, control, optimizer=None, **kwargs):
            # under DDP every rank must stop at the same step and use the same rate (clocks differ): the
            # largest elapsed time of any rank decides
            used = distributed.max_over_ranks(time.monotonic() - self.start) / (60 * minutes)
            if used >= 1:
                control.should_training_stop = True
            for group in optimizer.param_groups if optimizer is not None else []:
                group["lr"] = min(group["lr"], group.get("initial_lr", group["lr"]) * max(0.0, 1 - used))

        def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
            # the Trainer logs its scheduler's rate; the rate in use is the optimizer's, lowered above
            if logs is None or "learning_rate" not in logs or optimizer is None:
                return
            logs["learning_rate"] = optimizer.param_groups[0]["lr"]
            if state is not None and state.log_history and "learning_rate" in state.log_history[-1]:
                state.log_history[-1]["learning_rate"] = logs["learning_rate"]  # the copy already kept

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
