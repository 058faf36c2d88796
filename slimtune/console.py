"""Where slimtune talks to a person: progress and log lines on stderr (rich), results on stdout.

`slimtune --quiet` sets SLIMTUNE_QUIET=1 (an environment variable, so the benchmark child
processes are quiet too): progress bars and log lines are dropped, errors and results remain.
"""

from __future__ import annotations

import os

QUIET_ENV = "SLIMTUNE_QUIET"


def quiet() -> bool:
    return os.environ.get(QUIET_ENV) == "1"


def console():
    from rich.console import Console

    return Console(stderr=True, quiet=quiet())


def log_line(msg: str) -> None:
    """One progress line on stderr (the runner's default `log` in the CLI)."""
    console().print(msg, markup=False, highlight=False, soft_wrap=True)


def track(items, description: str | None):
    """A transient progress bar over `items` on stderr (none when quiet or without a description)."""
    if not description or quiet():
        return items
    from rich.progress import track as rich_track

    return rich_track(items, description=description, transient=True, console=console())


def trainer_progress(log):
    """A Trainer callback: one progress bar on stderr (steps, loss) instead of transformers' tqdm
    bar and its raw `{'loss': ...}` dicts on stdout; validation results go to `log` as lines."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        bar = task = None

        def on_train_begin(self, args, state, control, **kwargs):
            if quiet():
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("  training {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=console(), transient=True)
            self.bar.start()
            self.task = self.bar.add_task("", total=state.max_steps, completed=state.global_step)

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if self.bar is not None and "loss" in logs:
                self.bar.update(self.task, description=f"loss {logs['loss']:.4f}")
            if "eval_accuracy" in logs:
                log(f"  step {state.global_step}/{state.max_steps}: validation accuracy {logs['eval_accuracy']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return _Progress()
