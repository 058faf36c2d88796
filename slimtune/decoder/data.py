"""Prompt/response pairs for generative fine-tuning: a CSV/TSV/JSONL file or packaged `chatterbot_qa`
(English) / `chatterbot_qa_zh` (Chinese).

The split is by prompt: chatterbot answers many prompts several ways ("Are you sapient?" has four
answers), and a prompt seen in training with one answer and tested with another would measure
memory, not generalisation. So every answer to a prompt lands in the same split (scikit-learn's
GroupShuffleSplit, seed 42): about 80/20 train/test by prompt, then a validation slice of train.
Exact duplicate pairs are dropped first. A pair without a prompt or a response (an empty or NaN
cell, a JSON null) is an error naming its line, unless `drop_missing` drops and counts such rows
(the packaged set's few empty ones always are).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import pandas as pd

from ..errors import SlimtuneError, check_ranges

PACKAGED_PAIRS = {"chatterbot_qa": "english", "chatterbot_qa_zh": "chinese"}  # name -> chatterbot-corpus language
COLUMNS_HINT = ("set data.prompt_column / data.response_column in a recipe, --prompt-column / --response-column "
                "on the command line")


@dataclass
class GenDataConfig:
    """Where the prompt/response pairs come from (a `task: generate` recipe's `data:` block)."""

    name: str | None = None  # packaged: chatterbot_qa, chatterbot_qa_zh
    path: str | None = None  # a CSV, TSV or JSONL file with a prompt and a response column
    prompt_column: str = "prompt"
    response_column: str = "response"
    encoding: str = "utf-8"
    test_size: float = 0.2
    val_size: float = 0.1
    seed: int = 42
    max_train_samples: int | None = None  # random subsample of train, for short CPU runs
    max_test_samples: int | None = None
    system: str | None = None  # a system message put before every prompt (the chat template's own default if unset)
    drop_missing: bool = False  # drop pairs with an empty or NaN prompt or response (counted) instead of stopping

    def __post_init__(self) -> None:
        if (self.name is None) == (self.path is None):
            raise SlimtuneError("data: give exactly one of `name` (packaged) or `path` (a file)")
        if self.name is not None and self.name not in PACKAGED_PAIRS:
            raise SlimtuneError(f"data.name: unknown dataset {self.name!r}; packaged prompt/response sets: "
                                f"{', '.join(PACKAGED_PAIRS)}")
        if not 0 < self.test_size < 1 or not 0 <= self.val_size < 1:
            raise SlimtuneError("data: test_size must be in (0, 1) and val_size in [0, 1)")
        check_ranges("data", self, seed=">= 0")
        for name in ("max_train_samples", "max_test_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise SlimtuneError(f"data.{name} must be >= 1")


@dataclass
class PairSet:
    prompts: list[str]
    responses: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class PairSplits:
    train: PairSet
    val: PairSet
    test: PairSet
    source: str
    system: str | None = None
    stats: dict = field(default_factory=dict)

    @cached_property
    def digest(self) -> str:
        import hashlib
        import json

        parts = [self.system] + [[s.prompts, s.responses] for s in (self.train, self.val, self.test)]
        return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()[:16]


def _frame(cfg: GenDataConfig) -> pd.DataFrame:
    if cfg.name in PACKAGED_PAIRS:
        from .packaged import chatterbot_pairs

        return pd.DataFrame(chatterbot_pairs(PACKAGED_PAIRS[cfg.name]), columns=["prompt", "response", "category"])[["prompt", "response"]]
    from ..data import read_table

    df = read_table(cfg.path, cfg.prompt_column, cfg.response_column, cfg.encoding, hint=COLUMNS_HINT)
    return df.rename(columns={"text": "prompt", "label": "response"})


def load_pairs(cfg: GenDataConfig) -> PairSplits:
    """Load, clean and split prompt/response pairs (grouped by prompt)."""
    from sklearn.model_selection import GroupShuffleSplit

    from ..data import missing_rows

    where = cfg.name or str(cfg.path)
    df = _frame(cfg)
    raw_rows = len(df)
    columns = {"prompt": cfg.prompt_column, "response": cfg.response_column}
    df, dropped = missing_rows(df, columns, where, cfg.drop_missing or cfg.name is not None)
    if dropped and cfg.path:
        from ..console import log_line

        log_line(f"data {where}: dropped {dropped} row{'s' * (dropped > 1)} without a prompt or response (drop_missing)")
    df = df.copy()
    for col in ("prompt", "response"):
        df[col] = df[col].astype(str).str.strip()
    df = df.drop_duplicates(["prompt", "response"]).reset_index(drop=True)
    groups = df["prompt"].nunique()
    if groups < 3:
        raise SlimtuneError(f"{where}: {groups} distinct non-empty prompt(s); a train/test split needs at least 3")

    def split(frame: pd.DataFrame, size: float) -> tuple[pd.DataFrame, pd.DataFrame]:
        gss = GroupShuffleSplit(n_splits=1, test_size=size, random_state=cfg.seed)
        a, b = next(gss.split(frame, groups=frame["prompt"]))
        return frame.iloc[a], frame.iloc[b]

    train_df, test_df = split(df, cfg.test_size)
    val_df = train_df.iloc[:0]
    if cfg.val_size > 0 and train_df["prompt"].nunique() >= 2:
        train_df, val_df = split(train_df, cfg.val_size)
    if cfg.max_train_samples and cfg.max_train_samples < len(train_df):
        train_df = train_df.sample(n=cfg.max_train_samples, random_state=cfg.seed)
    if cfg.max_test_samples and cfg.max_test_samples < len(test_df):
        test_df = test_df.sample(n=cfg.max_test_samples, random_state=cfg.seed)

    def to_set(frame: pd.DataFrame) -> PairSet:
        return PairSet(frame["prompt"].tolist(), frame["response"].tolist())

    stats = {"rows_read": raw_rows, "rows_dropped": dropped, "rows_unique": len(df), "prompts": groups,
             "train": len(train_df), "val": len(val_df), "test": len(test_df)}
    return PairSplits(to_set(train_df), to_set(val_df), to_set(test_df), where, cfg.system, stats)
