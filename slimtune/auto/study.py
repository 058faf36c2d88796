"""The Optuna study the search asks for candidates (shared by workers through its storage), and the
progress bar of the time budget."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import SlimtuneError
from .candidates import seeds
from .config import AutoConfig

STUDY_NAME = "slimtune-auto"


def _storage(cfg: AutoConfig, out: Path):
    import optuna

    url = cfg.storage or f"sqlite:///{(out / 'study.db').resolve()}"
    for attempt in range(5):
        try:
            # heartbeats let other workers see a crashed worker's trial as failed (RDB storage only)
            return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {})
        except Exception as e:  # sqlalchemy / optuna raise many kinds for a bad URL
            first = str(e).splitlines()[0]
            # Workers started together on a new database race to create its tables ("table studies
            # already exists", alembic_version "UNIQUE constraint failed"): optuna has no lock for it
            # (optuna#1092, #4621: create the schema first). The loser finds the tables on a retry.
            if attempt < 4 and any(m in first for m in ("already exists", "UNIQUE constraint failed", "duplicate key")):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise SlimtuneError(f"--storage {url}: cannot open the study database: {first}") from None


def _study(cfg: AutoConfig, out: Path, depth: int, worker: str, log, storage=None):
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=len(seeds(depth)))
    study = optuna.create_study(storage=storage or _storage(cfg, out), study_name=STUDY_NAME, sampler=sampler,
                                directions=["maximize", "minimize", "minimize"], load_if_exists=True)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        for k in seeds(depth):
            study.enqueue_trial(_params(k), user_attrs={"seed": True})
    for t in trials:  # this worker was interrupted inside these: ask them again (finished stages are kept)
        if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == worker:
            study.tell(t.number, state=TrialState.FAIL)
            study.enqueue_trial(t.params, user_attrs={"resumed_from": t.number})
            log(f"auto: candidate {t.params} was interrupted; it continues from its finished stages")
    return study


def _params(key: dict) -> dict:
    return dict(key)


def _done(study) -> dict[str, dict]:
    from optuna.trial import TrialState

    return {t.user_attrs["row"]["candidate"]: t.user_attrs["row"]
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "row" in t.user_attrs}


def _values(row: dict) -> list[float]:
    return [row["val_accuracy"], row["latency_ms_p50"], row["size_mb"]]


class _Progress:
    """A rich progress bar on stderr: candidates done and the time budget left; logs print above it."""

    def __init__(self, minutes: float, log):
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        self.minutes = minutes
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of the budget"),
                                 console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task(f"auto: 0 candidates, {minutes:.0f} min left", total=60 * minutes)
        self.progress.start()

    def log(self, msg: str) -> None:
        self.progress.console.print(msg, markup=False, highlight=False, soft_wrap=True)  # a line stays one line

    def update(self, done: int, elapsed: float) -> None:
        left = max(0.0, self.minutes - elapsed / 60)
        self.progress.update(self.task, completed=min(elapsed, 60 * self.minutes),
                             description=f"auto: {done} candidates done, {left:.0f} min left")

    def close(self) -> None:
        self.progress.stop()

