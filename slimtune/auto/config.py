"""`auto`'s budget: what the user asks of the chosen model (`AutoConfig`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data import DataConfig
from ..errors import SlimtuneError


@dataclass
class AutoConfig:
    data: DataConfig
    model: str = "minilm-l6"
    max_drop: float = 0.01  # accuracy drop allowed against the reference, on validation (0.01 = 1 point)
    max_latency_ms: float | None = None  # batch-1 p50
    max_size_mb: float | None = None  # MiB on disk
    minutes: float = 60  # wall-time budget of this invocation (a resumed auto gets a new one)
    storage: str | None = None  # Optuna storage URL; default sqlite:///OUT/study.db
    max_trials: int | None = None  # stop after this many candidates (default: the time budget decides)
    train: dict = field(default_factory=dict)  # overrides for every training stage (e.g. max_steps)
    eval: dict = field(default_factory=dict)  # EvalConfig fields
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0 <= self.max_drop < 1:
            raise SlimtuneError(f"--max-drop {self.max_drop}: must be a fraction in [0, 1) (0.01 = 1 accuracy point)")
        for name in ("max_latency_ms", "max_size_mb"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise SlimtuneError(f"--{name.replace('_', '-')} {v}: must be > 0")
        if self.minutes <= 0:
            raise SlimtuneError(f"--minutes {self.minutes}: must be > 0")
        if self.data.val_size <= 0:
            raise SlimtuneError("auto: the data needs a validation split (data.val_size > 0): candidates are chosen on it, never on test")
        if self.max_trials is not None and self.max_trials < 0:
            raise SlimtuneError("max_trials must be >= 0 (0: only report what is measured)")
