"""`slimtune auto`: the best small model for the user's data and budget, found for them.

    slimtune auto --data DATA [--model minilm-l6] --max-drop 0.01 [--max-latency-ms X]
                  [--max-size-mb Y] --minutes 60 --out DIR [--storage URL]

How it works:

- Every candidate is a chain of existing stage methods, run by the recipe runner in one shared
  run folder (`OUT/search`): the reference is fine-tuned once (stage `reference`), and each
  candidate adds only the stages it does not share with an earlier one, named by their chain
  (`truncate-3`, `truncate-3-trim`, `truncate-3-trim-onnx-int8`, ...), each branching `from:` its
  parent. The runner skips finished stages, and distillation and pruning read the teacher's
  logits from the run's cache, so nothing is recomputed. The stage list is kept in
  `OUT/search/stages.json` and only grows, so every finished stage keeps its fingerprint.
- The model is the user's (`--model`, default minilm-l6); when more than 5% of the data's tokens
  are unknown to the default model and multilingual-e5-small reads them, every candidate grows
  from multilingual-e5-small instead (the first line of the log and the report say so).
- A candidate is: an architecture (the reference, the teacher's own layers distilled
  (`truncate-N`), structured pruning), a vocabulary (full, or trimmed to the training texts), and
  a runtime (torch fp32, ONNX fp32, ONNX int8 dynamic / static, ONNX int8 with 4-bit embeddings
  inside the graph); or the TF-IDF floor (`tfidf-floor`).
- The search is Optuna's (multi-objective TPE over validation accuracy, batch-1 p50 latency and
  size; sensible candidates are enqueued first), with its study in `OUT/study.db` (SQLite) unless
  `--storage URL` names a shared database (several workers, each with its own OUT, on one study).
  An interrupted `auto` continues: a candidate this worker left running is asked again, and its
  finished stages are skipped; a candidate already measured is never re-run.
- Every candidate is measured like any stage (test split, benchmark in a fresh process); its
  *validation* accuracy is measured too. **The choice uses validation accuracy only** (drop
  against the reference's validation accuracy <= max_drop), and test accuracy only confirms it.
- `chosen` is the fastest candidate (batch-1 p50) that meets every constraint. If none does, the
  report is written anyway and the run ends with one line naming the closest candidate.
- Output: `OUT/report.json` (`candidates`, `pareto`, `chosen`), `OUT/report.md`, `OUT/pareto.png`
  and `OUT/chosen.yaml`, a recipe that reproduces the chosen model with `slimtune run`.

The package: `config` (the budget), `candidates` (the search space), `trials` (the shared run folder
that runs and measures a candidate), `study` (the Optuna study), `report` (choice, Pareto front,
report); `auto` below is the loop that ties them.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

from ..errors import SlimtuneError
from .config import AutoConfig
from .report import choose, finish, pareto
from .candidates import FLOOR, architectures, chain, key_name, pick_model, seeds, space, suggest
from .study import _Progress, _done, _params, _storage, _study, _values
from .trials import Search

__all__ = ["FLOOR", "AutoConfig", "architectures", "auto", "chain", "choose", "pareto", "seeds"]


def auto(cfg: AutoConfig, out: str | Path, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Search pipelines for `cfg`'s data under its budget; write OUT/report.json, report.md,
    pareto.png and chosen.yaml; return the report. Ends with a SlimtuneError naming the closest
    candidate when nothing meets the constraints (the report is written first)."""
    from optuna.trial import TrialState

    from ..data import load_splits
    from ..model.folders import resolve

    splits = load_splits(cfg.data)  # bad data or model: one line before anything is created in OUT
    # a shared study database that cannot be opened fails now, not after a packaged model's conversion
    storage = _storage(cfg, Path(out)) if cfg.storage else None
    resolve(cfg.model)
    cfg, model_note = pick_model(cfg, splits.train.texts)  # first: the model every candidate grows from
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + 60 * cfg.minutes
    worker = f"{socket.gethostname()}:{out.resolve()}"
    bar = _Progress(cfg.minutes, log) if progress else None
    say = bar.log if bar else log
    if model_note:
        say(model_note)
    search = Search(cfg, out, say)
    search.model_note = model_note
    study = _study(cfg, out, search.depth, worker, say, storage)
    say(f"auto: fine-tuning the reference ({cfg.model}) once; every candidate starts from it")
    ref = search.reference()
    say(f"auto: reference validation accuracy {ref['val_accuracy']:.4f}, test {ref['test_accuracy']:.4f}, "
        f"p50 {ref['latency_ms_p50']:.2f} ms, {ref['size_mb']:.1f} MiB")
    tried, repeats, failed = 0, 0, set()
    candidates = space(search.depth)
    while time.monotonic() < deadline and (cfg.max_trials is None or tried < cfg.max_trials):
        done = _done(study)
        untried = [k for k in candidates if key_name(k) not in done and key_name(k) not in failed]
        if not untried:
            say("auto: every candidate of the search space is measured")
            break
        if repeats >= 3:  # the sampler keeps proposing measured candidates: take the next unmeasured one
            study.enqueue_trial(_params(untried[0]))
            repeats = 0
        trial = study.ask()
        try:
            key = suggest(trial, search.depth)
        except ValueError as e:  # optuna: the study's earlier trials drew `arch` etc. from other choices
            study.tell(trial, state=TrialState.FAIL)
            where = cfg.storage or out / "study.db"
            raise SlimtuneError(f"{where}: this study searched other candidates (made by another slimtune version?): "
                                f"{str(e).splitlines()[0]}; continue it with that version, or start a new --out") from None
        name = key_name(key)
        trial.set_user_attr("worker", worker)
        if name in done or name in failed:  # measured (by this or another worker) or failed: never re-run
            repeats += 1
            if name in done:
                study.tell(trial, _values(done[name]))
            else:
                study.tell(trial, state=TrialState.FAIL)
            continue
        tried += 1
        say(f"auto: candidate {tried}: {name}")
        try:
            row = search.measure(key)
        except SlimtuneError as e:
            say(f"auto: candidate {name} failed: {e}")
            failed.add(name)
            study.tell(trial, state=TrialState.FAIL)
            continue
        row["worker"] = worker
        trial.set_user_attr("row", row)
        study.tell(trial, _values(row))
        say(f"auto: {name}: validation {row['val_accuracy']:.4f}, p50 {row['latency_ms_p50']:.2f} ms, "
            f"{row['size_mb']:.1f} MiB")
        if bar:
            bar.update(len(_done(study)), time.monotonic() - start)
    if bar:
        bar.close()
    return finish(cfg, out, search, study, ref, time.monotonic() - start, say)
