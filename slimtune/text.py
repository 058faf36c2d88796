"""Tokenization and token lengths, once for every task (the text layer: below measure, above model).

Where a length comes from, in this order:

1. the number a user gives (a recipe's `max_length`, `--max-length`), checked against the model's
   position table (`length_for`, `check_positions`): a length the model cannot hold is one line
   before any work, not a position-embedding error deep inside a stage;
2. in a run, a training stage that leaves `max_length` unset gets the data's own length: the 95th
   percentile of the training texts' tokens, capped by the model (`suggested_length`,
   `fill_max_length`), and the run evaluates with at least the longest length a stage trained on
   (`eval_length`);
3. otherwise the task's one default (`Task.default_length`, tasks/names.py: classify 128, generate
   256), cut to the model's positions (`length_for`). eval, bench, predict, serve and export all
   resolve a length this way, so the same model is read the same way by each.

Long texts are cut from the end (`head`) or keep their start and end (`head_tail`, `encode`): the
first quarter of the budget from the start and the rest from the end, the split Sun et al. (2019,
"How to fine-tune BERT for text classification?") found best on long reviews (head 128 + tail 382
of 512). Tokenizers load through `model.folders.load_tokenizer` (transformers, through
model/loading.py). No torch here.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .errors import SlimtuneError
from .model.folders import positions
from .schema import FROM_MODEL, Stage
from .tasks.names import DEFAULT_LENGTH

TRUNCATIONS = ("head", "head_tail")
HEAD_SHARE = 0.25  # head_tail: this share of the kept tokens comes from the start
MIN_LENGTH = 8  # a data-derived length is never shorter
SUGGEST_PERCENTILE = 95  # the training texts' token length a stage reads when it sets none
UNKNOWN_LIMIT = 512  # what a profile assumes when neither the model nor its tokenizer says


# ---- tokenizers and truncation ------------------------------------------------------------------

def load_tokenizer(model: str | Path, vocab_size: int | None = None):
    """The tokenizer of a packaged model name or a model folder (checked: model/folders.py)."""
    from .model.folders import load_tokenizer as load, resolve

    return load(resolve(str(model)), vocab_size)


def check_truncation(value: str) -> None:
    if value not in TRUNCATIONS:
        raise SlimtuneError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {value!r}")


def head_tail_ids(ids: list[int], max_length: int, n_special: int) -> list[int]:
    """Cut one tokenized text (special tokens included) to `max_length`, keeping start and end.

    The special tokens stay where they are: one at each end for BERT-style models ([CLS] ... [SEP]),
    one at the end when the tokenizer adds a single one."""
    if len(ids) <= max_length:
        return list(ids)
    lead = 1 if n_special >= 2 else 0
    trail = n_special - lead
    body = ids[lead: len(ids) - trail if trail else None]
    room = max_length - n_special
    if room < 2:
        raise SlimtuneError(f"max_length {max_length} leaves no room for text with {n_special} special tokens")
    head = max(1, int(room * HEAD_SHARE))
    tail = room - head
    return ids[:lead] + body[:head] + body[len(body) - tail:] + (ids[len(ids) - trail:] if trail else [])


def encode(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> dict[str, list[list[int]]]:
    """Tokenize `texts` (unpadded lists) cut to `max_length` from the head, or from head and tail."""
    check_truncation(truncation)
    if truncation == "head":
        return dict(tokenizer(list(texts), truncation=True, max_length=max_length))
    enc = tokenizer(list(texts), truncation=False, verbose=False)
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    ids = [head_tail_ids(row, max_length, n_special) for row in enc["input_ids"]]
    out = {"input_ids": ids, "attention_mask": [[1] * len(r) for r in ids]}
    if "token_type_ids" in enc:
        out["token_type_ids"] = [[0] * len(r) for r in ids]
    return out


def encode_padded(tokenizer, texts: list[str], max_length: int, truncation: str = "head") -> dict:
    """`encode`, padded to the longest text, as int64 arrays (what a predictor feeds a model)."""
    import numpy as np

    if truncation == "head":
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    else:
        enc = tokenizer.pad(encode(tokenizer, texts, max_length, truncation), return_tensors="np")
    return {k: np.asarray(v).astype(np.int64) for k, v in enc.items()}


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Uncut token counts of `texts`, special tokens included (what the model would see)."""
    if not texts:
        return []
    return [len(r) for r in tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]]


# ---- lengths -------------------------------------------------------------------------------------

def token_limit(model: str | Path, tokenizer=None, unknown: int | None = UNKNOWN_LIMIT) -> int | None:
    """The longest input `model` takes: its position table (config.json alone), and its tokenizer's
    `model_max_length` when that is shorter; `unknown` when neither says."""
    limits = [n for n in (positions(model), tokenizer_limit(tokenizer)) if n is not None]
    return min(limits) if limits else unknown


def tokenizer_limit(tokenizer) -> int | None:
    """The tokenizer's own `model_max_length`, None when it sets none."""
    n = getattr(tokenizer, "model_max_length", None)  # transformers' "no limit" is a huge int
    return int(n) if isinstance(n, int) and 0 < n < 1_000_000 else None


def default_length(task) -> int:
    """A task's one default (a Task, or a built-in task's name)."""
    return DEFAULT_LENGTH[task] if isinstance(task, str) else task.default_length


def length_for(task, model: str | Path, given: int | None = None) -> int:
    """The token length `model` reads texts with: `given`, checked against the model's position
    table (config.json; nothing is loaded: a longer one would fail only on the first long text,
    deep inside the model), or unset (None) the task's default, cut to those positions."""
    limit = positions(model)
    if given is None:
        n = default_length(task)
        return min(n, limit) if limit else n
    if limit is not None and given > limit:
        raise SlimtuneError(f"max_length {given} is more than the model's {limit} positions ({model})")
    return given


def suggested_length(lengths, limit: int | None) -> int | None:
    """The data-derived max_length: the `SUGGEST_PERCENTILE`th percentile of `lengths` (rounded up),
    capped at `limit`, at least `MIN_LENGTH`; None without lengths."""
    import numpy as np

    if not len(lengths):
        return None
    n = int(math.ceil(np.percentile(np.asarray(lengths), SUGGEST_PERCENTILE)))
    return max(MIN_LENGTH, min(n, limit) if limit else n)


def fill_max_length(stage: Stage, profile: dict | None, log=print) -> Stage:
    """A stage whose config has `max_length: None` gets the data's suggested length (printed)."""
    cfg = stage.config
    if profile is None or not any(f.name == "max_length" for f in dataclasses.fields(cfg)) or cfg.max_length is not None:
        return stage
    n = profile["suggested_max_length"]
    log(f"stage {stage.name}: max_length not set; using {n} ({SUGGEST_PERCENTILE}th percentile of training texts' "
        f"tokens, capped at the model's {profile['model_max_length']})")
    return dataclasses.replace(stage, config=dataclasses.replace(cfg, max_length=n))


def eval_length(task, model: str | Path, given: int | None, stages: list[Stage]) -> int:
    """How a run measures every artifact: `given`, else the task's default for `model`, or longer
    when a stage trains on longer texts (evaluating a model on texts cut shorter than it was
    trained on hides its accuracy)."""
    if given is not None:
        return given
    trained = [s.config.max_length for s in stages if getattr(s.config, "max_length", None)]
    return max([length_for(task, model), *trained])


def check_positions(source: str, model: str, stages: list[Stage], ev, eval_keys: tuple[str, ...]) -> None:
    """Every token length of a recipe (each stage's `max_length`, the eval block's `eval_keys`)
    against the position table of the model it runs on, when the recipe is read: `max_length:
    100000` would otherwise fail minutes into a stage. The limits come from config.json alone
    (`model.folders.positions`: no weights read, no packaged model converted). A stage runs on the
    previous stage's model (or its `from:`); a stage's `student` (distill: a packaged name or a
    folder) is the model after it, and its `teacher`, when named, bounds it too. A model whose
    limit is unknown (a folder not there yet: loading it says so) is not checked."""
    def bound(name: str) -> tuple[int | None, str]:
        return positions(name), name

    base = last = bound(model)
    made: dict[str, tuple[int | None, str]] = {}
    for i, st in enumerate(stages):
        into = base if st.source == FROM_MODEL else made[st.source] if st.source else last
        student, teacher = getattr(st.config, "student", None), getattr(st.config, "teacher", None)
        out = into if student in (None, "truncate", "shrink") else bound(student)  # truncate/shrink keep the positions
        bounds = [into, out] + ([bound(teacher)] if teacher else [])
        _fits(getattr(st.config, "max_length", None), bounds, f"{source}: stages[{i}] ({st.name}) max_length")
        made[st.name] = last = out
    for key in eval_keys:  # every artifact of the run is measured with them
        _fits(getattr(ev, key), [base, *made.values()], f"{source}: eval.{key}")


def _fits(value: int | None, bounds: list[tuple[int | None, str]], what: str) -> None:
    for limit, name in bounds:
        if value is not None and limit is not None and value > limit:
            raise SlimtuneError(f"{what} {value} is more than the model's {limit} positions ({name})")
