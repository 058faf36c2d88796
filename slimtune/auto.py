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
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .data import DataConfig
from .errors import SlimtuneError
from .profile import EVAL_MAX_LENGTH

STUDY_NAME = "slimtune-auto"
FLOOR = "tfidf-floor"
VOCABS = ("full", "trim")
RUNTIMES = ("torch", "onnx-fp32", "onnx-int8", "onnx-int8-static", "onnx-int8-int4emb")

# Training settings of each kind of stage (the shipped recipes' measured settings); `train` in
# AutoConfig overrides any of them for every training stage (short runs, tests).
REFERENCE = {"method": "full", "epochs": 2, "batch_size": 32, "learning_rate": 5.0e-5, "warmup": 0.06,
             "early_stopping_patience": 1}
STUDENT = {"method": "distill", "student": "truncate", "alpha": 0.5, "temperature": 2.0, "epochs": 3,
           "batch_size": 32, "learning_rate": 1.0e-4}
PRUNE = {"method": "prune_structured", "layers": 2, "heads": 0.5, "ffn": 0.65, "score": "taylor", "rounds": 2,
         "epochs": 2, "batch_size": 32, "learning_rate": 5.0e-5, "alpha": 0.5}
PRUNE_LIGHT = PRUNE | {"layers": 0, "heads": 0.34, "ffn": 0.5, "rounds": 1, "epochs": 1}
# the main job's step after its student: half of every layer's FFN neurons, recovered for one epoch
SLIM = {"method": "prune_structured", "layers": 0, "heads": 0.0, "ffn": 0.5, "scope": "layer", "score": "taylor",
        "rounds": 1, "epochs": 1, "batch_size": 32, "learning_rate": 5.0e-5, "alpha": 0.5}
RUNTIME_STAGES = {
    "onnx-fp32": {"method": "onnx_compact", "matmul": "fp32", "embeddings": "fp32"},
    "onnx-int8": {"method": "onnx_int8", "mode": "dynamic"},
    "onnx-int8-static": {"method": "onnx_int8", "mode": "static", "calibration": "minmax"},
    # the main job's compact stage (recipes/default.yaml): 4-bit word table in blocks of 128 with zero points
    "onnx-int8-int4emb": {"method": "onnx_compact", "matmul": "int8", "embeddings": "int4", "block_size": 128, "symmetric": False},
}


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


# ---- candidates as chains of stages -----------------------------------------------------------


def architectures(depth: int) -> list[str]:
    """The reference, truncated students of the teacher's own layers (the middle one also with half
    its FFN: `truncate-K-ffn50`, sharing the student), and two pruning strengths."""
    sizes = [k for k in (4, 3, 2, 1) if k < depth and (k >= 2 or depth <= 3)]
    mid = max(1, depth // 2)
    slim = [f"truncate-{mid}-ffn50"] if mid in sizes else []
    return ["reference"] + [f"truncate-{k}" for k in sizes] + slim + (["prune-light", "prune"] if depth > 2 else [])


def truncate_layers(depth: int, keep: int) -> list[int]:
    """Evenly spread teacher layers, starting at 0 (6 -> 3: [0, 2, 4], the measured best)."""
    return sorted({min(depth - 1, int(i * depth / keep + 0.5) if i else 0) for i in range(keep)})


def chain(key: dict, depth: int) -> list[dict]:
    """The stages of candidate `key` (arch, vocab, runtime) after the reference, each with its `from`."""
    arch, vocab, runtime = key["arch"], key["vocab"], key["runtime"]
    stages, prev = [], "reference"
    if arch.startswith("truncate-"):
        student = "-".join(arch.split("-")[:2])  # truncate-3-ffn50 grows from truncate-3
        stages.append(STUDENT | {"name": student, "from": prev, "layers": truncate_layers(depth, int(student.split("-")[1]))})
        prev = student
        if arch != student:
            stages.append(SLIM | {"name": arch, "from": prev})
            prev = arch
    elif arch in ("prune", "prune-light"):
        layers = PRUNE["layers"] if depth > PRUNE["layers"] + 1 else 0
        stages.append((PRUNE if arch == "prune" else PRUNE_LIGHT) | {"name": arch, "from": prev}
                      | ({"layers": layers} if arch == "prune" else {}))
        prev = arch
    if vocab == "trim":
        name = f"{prev}-trim"
        stages.append({"name": name, "method": "trim_vocab", "from": prev})
        prev = name
    if runtime != "torch":
        name = f"{prev}-{runtime}"
        stages.append(RUNTIME_STAGES[runtime] | {"name": name, "from": prev})
        prev = name
    return stages


def key_name(key: dict) -> str:
    if key["arch"] == FLOOR:
        return FLOOR
    return "/".join((key["arch"], key["vocab"], key["runtime"]))


def seeds(depth: int) -> list[dict]:
    """Candidates tried first, most promising for speed, size and accuracy first."""
    mid = f"truncate-{max(1, depth // 2)}"
    archs = architectures(depth)
    prune = "prune" if "prune" in archs else mid
    out = [
        {"arch": FLOOR},
        {"arch": "reference", "vocab": "full", "runtime": "onnx-int8"},
        {"arch": mid, "vocab": "trim", "runtime": "onnx-int8-int4emb"},
        {"arch": f"{mid}-ffn50", "vocab": "trim", "runtime": "onnx-int8-int4emb"} if f"{mid}-ffn50" in archs else None,
        {"arch": mid, "vocab": "full", "runtime": "onnx-int8"},
        {"arch": prune, "vocab": "trim", "runtime": "onnx-int8"},
        {"arch": "reference", "vocab": "full", "runtime": "torch"},
        {"arch": mid, "vocab": "trim", "runtime": "onnx-int8"},
        {"arch": prune, "vocab": "full", "runtime": "onnx-int8-int4emb"},
    ]
    unique = []
    for k in out:
        if k is not None and k not in unique:
            unique.append(k)
    return unique


def suggest(trial, depth: int) -> dict:
    arch = trial.suggest_categorical("arch", [FLOOR] + architectures(depth))
    if arch == FLOOR:
        return {"arch": FLOOR}
    return {"arch": arch, "vocab": trial.suggest_categorical("vocab", list(VOCABS)),
            "runtime": trial.suggest_categorical("runtime", list(RUNTIMES))}


def space(depth: int) -> list[dict]:
    """Every candidate: the seeds first, then the rest in a fixed order."""
    rest = [{"arch": a, "vocab": v, "runtime": r} for a, v, r in itertools.product(architectures(depth), VOCABS, RUNTIMES)]
    first = seeds(depth)
    return first + [k for k in rest if k not in first]


# ---- the search -------------------------------------------------------------------------------


class Search:
    """The shared run folder (`OUT/search`) whose stage list grows by each candidate's new stages."""

    def __init__(self, cfg: AutoConfig, out: Path, log):
        from .model.folders import resolve

        self.cfg, self.out, self.log = cfg, Path(out), log
        self.folder = self.out / "search"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stages_file = self.folder / "stages.json"
        self.stages: list[dict] = json.loads(self.stages_file.read_text()) if self.stages_file.is_file() else []
        config = json.loads((resolve(cfg.model) / "config.json").read_text())
        self.depth = int(config.get("num_hidden_layers") or 6)
        if not self.stages:
            self._add([REFERENCE | {"name": "reference"}])
        self.report: dict | None = None
        self.splits = None
        self._val: dict[str, dict] = {}

    def _train_fields(self, st: dict) -> dict:
        from .methods import METHODS

        fields = {f.name for f in dataclasses.fields(METHODS[st["method"]].config_cls)}
        extra = {k: v for k, v in self.cfg.train.items() if k in fields}
        if "max_steps" in extra:  # a step budget (tests): drop what would fight it
            st = {k: v for k, v in st.items() if k not in ("early_stopping_patience",)}
        return st | extra

    def _add(self, stages: list[dict]) -> None:
        known = {s["name"] for s in self.stages}
        new = [self._train_fields(s) for s in stages if s["name"] not in known]
        if new:
            self.stages += new
            tmp = self.stages_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.stages, indent=2))
            tmp.replace(self.stages_file)

    def _drop(self, names: set[str]) -> None:
        """Forget stages of a failed candidate that never finished (so later runs do not retry them)."""
        keep = [s for s in self.stages if s["name"] not in names or self._folder(s["name"]) is not None]
        if len(keep) != len(self.stages):
            self.stages = keep
            self.stages_file.write_text(json.dumps(self.stages, indent=2))

    def recipe_dict(self, stages: list[dict] | None = None) -> dict:
        return {"data": dataclasses.asdict(self.cfg.data), "model": self.cfg.model,
                "stages": stages if stages is not None else self.stages, "eval": dict(self.cfg.eval), "baseline": "reference"}

    def run(self) -> dict:
        from .recipe import parse
        from .runner import run as run_recipe

        raw = self.recipe_dict()
        # OUT/search is auto's own folder (its stages.json is written before the first run)
        self.report = run_recipe(parse(_plain(raw), "auto"), self.folder, log=self.log, overwrite=True)
        if self.splits is None:
            from .data import load_splits

            self.splits = load_splits(self.cfg.data)
        return self.report

    def _folder(self, name: str) -> Path | None:
        for i, s in enumerate(self.stages):
            if s["name"] == name:
                f = self.folder / "stages" / f"{i + 1:02d}-{name}"
                return f if (f / "metrics.json").is_file() else None
        return None

    def val_metrics(self, artifact: Path) -> dict:
        """Accuracy on the validation split (what selection reads), cached beside the run."""
        from .measure.metrics import evaluate
        from .artifacts import load_predictor

        cache = self.folder / "val" / f"{artifact.name}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        if not len(self.splits.val):
            raise SlimtuneError("auto: the data has no validation split (data.val_size is 0); selection needs one")
        length = self.cfg.eval.get("max_length") or max(EVAL_MAX_LENGTH, self.cfg.train.get("max_length") or self.report["profile"]["suggested_max_length"])
        pred = load_predictor(artifact, length, self.splits.label_names)
        m, _ = evaluate(pred, self.splits.val, 32)
        out = {"val_accuracy": m["accuracy"], "val_f1_macro": m["f1_macro"]}
        cache.parent.mkdir(exist_ok=True)
        cache.write_text(json.dumps(out))
        return out

    def measure(self, key: dict) -> dict:
        """Run (or reuse) the candidate's stages and return its measured row."""
        if key["arch"] == FLOOR:
            if self.report is None:
                self.run()
            row = self.report["floor"]
            artifact = self.folder / "floor"
            stages = []
        else:
            stages = chain(key, self.depth)
            self._add(stages)
            try:
                self.run()
            except BaseException:
                self._drop({s["name"] for s in stages})
                raise
            name = stages[-1]["name"] if stages else "reference"
            row = next(s for s in self.report["stages"] if s["name"] == name)
            artifact = self.folder / row["artifact"]
        m = row["metrics"]
        return {
            "candidate": key_name(key), "key": key, "artifact": str(artifact), "stages": [s["name"] for s in stages],
            "val_accuracy": self.val_metrics(artifact)["val_accuracy"], "test_accuracy": m["accuracy"],
            "latency_ms_p50": m["latency_ms_p50"], "size_mb": m["size_bytes"] / 2**20, "params": m.get("params"),
            "method": row["method"],
        }

    def reference(self) -> dict:
        return self.measure({"arch": "reference", "vocab": "full", "runtime": "torch"})


def _plain(obj):
    """JSON round trip: tuples to lists (the recipe parser expects YAML-like values)."""
    return json.loads(json.dumps(obj))


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


def _study(cfg: AutoConfig, out: Path, depth: int, worker: str, log):
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=len(seeds(depth)))
    study = optuna.create_study(storage=_storage(cfg, out), study_name=STUDY_NAME, sampler=sampler,
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


def auto(cfg: AutoConfig, out: str | Path, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    """Search pipelines for `cfg`'s data under its budget; write OUT/report.json, report.md,
    pareto.png and chosen.yaml; return the report. Ends with a SlimtuneError naming the closest
    candidate when nothing meets the constraints (the report is written first)."""
    from optuna.trial import TrialState

    from .data import load_splits
    from .model.folders import resolve

    load_splits(cfg.data)  # bad data or model: one line before anything is created in OUT
    resolve(cfg.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + 60 * cfg.minutes
    worker = f"{socket.gethostname()}:{out.resolve()}"
    bar = _Progress(cfg.minutes, log) if progress else None
    say = bar.log if bar else log
    search = Search(cfg, out, say)
    study = _study(cfg, out, search.depth, worker, say)
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


def _values(row: dict) -> list[float]:
    return [row["val_accuracy"], row["latency_ms_p50"], row["size_mb"]]


# ---- choosing ---------------------------------------------------------------------------------


def violations(row: dict, ref: dict, cfg: AutoConfig) -> dict[str, float]:
    """How far `row` is outside each constraint (0 = met), each relative to its limit. Validation only."""
    floor_acc = ref["val_accuracy"] - cfg.max_drop
    v = {"accuracy": max(0.0, floor_acc - row["val_accuracy"]) / max(cfg.max_drop, 0.005)}
    if cfg.max_latency_ms is not None:
        v["latency"] = max(0.0, row["latency_ms_p50"] / cfg.max_latency_ms - 1)
    if cfg.max_size_mb is not None:
        v["size"] = max(0.0, row["size_mb"] / cfg.max_size_mb - 1)
    return v


def choose(rows: list[dict], ref: dict, cfg: AutoConfig) -> tuple[dict | None, dict | None]:
    """(chosen, closest): the fastest row meeting every constraint on *validation* accuracy,
    latency and size; else None and the row that misses them by the least."""
    ok = [r for r in rows if not any(violations(r, ref, cfg).values())]
    if ok:
        return min(ok, key=lambda r: (r["latency_ms_p50"], r["size_mb"], -r["val_accuracy"])), None
    closest = min(rows, key=lambda r: (sum(violations(r, ref, cfg).values()), r["latency_ms_p50"])) if rows else None
    return None, closest


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on validation accuracy, p50 latency and size at once."""
    def dominates(a, b):
        ge = a["val_accuracy"] >= b["val_accuracy"] and a["latency_ms_p50"] <= b["latency_ms_p50"] and a["size_mb"] <= b["size_mb"]
        gt = a["val_accuracy"] > b["val_accuracy"] or a["latency_ms_p50"] < b["latency_ms_p50"] or a["size_mb"] < b["size_mb"]
        return ge and gt

    return sorted((r for r in rows if not any(dominates(o, r) for o in rows if o is not r)), key=lambda r: r["latency_ms_p50"])


def _unmet(row: dict, ref: dict, cfg: AutoConfig) -> str:
    v = violations(row, ref, cfg)
    parts = []
    if v.get("accuracy"):
        parts.append(f"validation accuracy {row['val_accuracy']:.4f} vs {ref['val_accuracy'] - cfg.max_drop:.4f} needed")
    if v.get("latency"):
        parts.append(f"p50 {row['latency_ms_p50']:.2f} ms vs {cfg.max_latency_ms:g} ms asked")
    if v.get("size"):
        parts.append(f"{row['size_mb']:.1f} MiB vs {cfg.max_size_mb:g} MiB asked")
    return "; ".join(parts)


def finish(cfg: AutoConfig, out: Path, search: Search, study, ref: dict, seconds: float, log) -> dict:
    done = _done(study)
    done.setdefault(ref["candidate"], ref)  # the reference is a point of the front too
    rows = sorted(done.values(), key=lambda r: r["latency_ms_p50"])
    for r in rows:
        r["val_drop_points"] = 100 * (ref["val_accuracy"] - r["val_accuracy"])
        r["test_drop_points"] = 100 * (ref["test_accuracy"] - r["test_accuracy"])
        r["speedup_p50"] = ref["latency_ms_p50"] / r["latency_ms_p50"]
        r["size_ratio"] = ref["size_mb"] / r["size_mb"]
    chosen, closest = choose(rows, ref, cfg)
    message = None
    if chosen:
        chosen = dict(chosen)
        chosen["confirmed_on_test"] = chosen["test_drop_points"] <= 100 * cfg.max_drop + 1e-9
        chosen["recipe"] = str(out / "chosen.yaml")
        (out / "chosen.yaml").write_text(chosen_recipe(search, chosen))
    elif closest:
        message = (f"no candidate meets every constraint (max drop {100 * cfg.max_drop:g} points on validation"
                   + (f", p50 <= {cfg.max_latency_ms:g} ms" if cfg.max_latency_ms else "")
                   + (f", size <= {cfg.max_size_mb:g} MiB" if cfg.max_size_mb else "")
                   + f"); the closest is {closest['candidate']} ({_unmet(closest, ref, cfg)}; artifact {closest['artifact']})")
    front = pareto(rows)
    report = {
        "auto": {"model": cfg.model, "data": search.report["data"]["source"] if search.report else None,
                 "max_drop": cfg.max_drop, "max_latency_ms": cfg.max_latency_ms, "max_size_mb": cfg.max_size_mb,
                 "minutes": cfg.minutes, "seconds": seconds, "storage": cfg.storage or f"sqlite:///{out / 'study.db'}",
                 "trials": sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)), "selection": "validation accuracy (test only confirms)"},
        "reference": ref,
        "candidates": rows,
        "pareto": front,
        "chosen": chosen,
        "closest": closest,
        "message": message,
        "floor": search.report.get("floor") if search.report else None,
        "profile": search.report.get("profile") if search.report else None,
        "hardware": search.report.get("hardware") if search.report else None,
        "search_report": str(search.folder / "report.md"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown(report))
    if rows:
        plot(report, out / "pareto.png")
    if chosen:
        log(f"auto: chosen {chosen['candidate']}: {chosen['speedup_p50']:.1f}x faster, {chosen['size_ratio']:.1f}x smaller, "
            f"validation drop {chosen['val_drop_points']:.2f} points (test {chosen['test_drop_points']:.2f}, "
            f"{'confirmed' if chosen['confirmed_on_test'] else 'NOT confirmed'} on test); recipe {out / 'chosen.yaml'}")
    if message:
        raise SlimtuneError(f"auto: {message}. Report: {out / 'report.md'}")
    return report


def chosen_recipe(search: Search, chosen: dict) -> str:
    """A recipe that reproduces the chosen candidate with `slimtune run` (its chain, in order)."""
    import yaml

    by_name = {s["name"]: s for s in search.stages}
    stages = [by_name["reference"]] + [by_name[n] for n in chosen["stages"]]
    stages = [{"name": s["name"], "method": s["method"]} | {k: v for k, v in s.items() if k not in ("name", "method", "from")}
              for s in stages]
    raw = search.recipe_dict(stages)
    raw["data"] = {k: v for k, v in raw["data"].items() if v is not None and v != getattr(DataConfig, k, object())}
    head = (f"# Found by `slimtune auto`: {chosen['candidate']}, validation accuracy {chosen['val_accuracy']:.4f}, "
            f"p50 {chosen['latency_ms_p50']:.2f} ms, {chosen['size_mb']:.1f} MiB.\n"
            "# Reproduce it: slimtune run chosen.yaml --out DIR\n")
    if chosen["candidate"] == FLOOR:
        head += "# The chosen model is the TF-IDF floor, which every run fits: its artifact is DIR/floor.\n"
        raw["stages"] = []
    return head + yaml.safe_dump(_plain(raw), sort_keys=False)


def markdown(report: dict) -> str:
    a, ref = report["auto"], report["reference"]
    lines = [f"# slimtune auto: {a['data']} with {a['model']}", "",
             f"Constraints: accuracy drop <= {100 * a['max_drop']:g} points on **validation** (test only confirms)"
             + (f", batch-1 p50 <= {a['max_latency_ms']:g} ms" if a["max_latency_ms"] else "")
             + (f", size <= {a['max_size_mb']:g} MiB" if a["max_size_mb"] else "")
             + f". {len(report['candidates'])} candidates measured in {a['seconds'] / 60:.1f} min ({a['trials']} trials; "
             f"study {a['storage']}).", ""]
    c = report["chosen"]
    if c:
        lines += [f"**Chosen: {c['candidate']}**: {c['speedup_p50']:.2f}x faster and {c['size_ratio']:.2f}x smaller than the "
                  f"reference; validation drop {c['val_drop_points']:.2f} points, test drop {c['test_drop_points']:.2f} points "
                  f"({'confirmed' if c['confirmed_on_test'] else '**not confirmed**'} on test). Artifact `{c['artifact']}`; "
                  f"reproduce with `slimtune run {c['recipe']} --out DIR`.", ""]
    if report["message"]:
        lines += [f"**{report['message']}.**", ""]
    front = {r["candidate"] for r in report["pareto"]}
    lines += ["| candidate | val acc | test acc | p50 ms | speed-up | MiB | size ratio | Pareto |", "|---|---|---|---|---|---|---|---|"]
    for r in report["candidates"]:
        mark = " (chosen)" if c and r["candidate"] == c["candidate"] else (" (reference)" if r["candidate"] == ref["candidate"] else "")
        lines.append(f"| {r['candidate']}{mark} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['speedup_p50']:.2f}x | {r['size_mb']:.1f} | {r['size_ratio']:.2f}x | {'yes' if r['candidate'] in front else ''} |")
    floor = next((r for r in report["candidates"] if r["candidate"] == FLOOR), None)
    if floor:
        best = max((r for r in report["candidates"] if r["candidate"] != FLOOR), key=lambda r: r["val_accuracy"], default=None)
        if best and best["val_accuracy"] <= floor["val_accuracy"]:
            lines += ["", f"**No transformer candidate beats the TF-IDF floor on validation** ({best['val_accuracy']:.4f} vs "
                          f"{floor['val_accuracy']:.4f})."]
        elif best:
            lines += ["", f"The TF-IDF floor scores {floor['val_accuracy']:.4f} on validation ({floor['test_accuracy']:.4f} test); "
                          f"the best transformer candidate {best['val_accuracy']:.4f}."]
    lines += ["", "Candidate names: architecture / vocabulary / runtime. Every candidate was measured like any stage "
              f"(test split, batch-1 latency in a fresh process); all stages are in `{report['search_report']}`."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    front = {r["candidate"] for r in report["pareto"]}
    for ax, key, label in ((axes[0], "latency_ms_p50", "batch-1 p50 (ms)"), (axes[1], "size_mb", "size on disk (MiB)")):
        for r in report["candidates"]:
            on = r["candidate"] in front
            ax.scatter(r[key], r["val_accuracy"], s=45 if on else 20, c="tab:red" if on else "tab:gray")
            if on:
                ax.annotate(r["candidate"], (r[key], r["val_accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle("slimtune auto: candidates (red: Pareto front)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        self.progress.console.print(msg, markup=False, highlight=False)

    def update(self, done: int, elapsed: float) -> None:
        left = max(0.0, self.minutes - elapsed / 60)
        self.progress.update(self.task, completed=min(elapsed, 60 * self.minutes),
                             description=f"auto: {done} candidates done, {left:.0f} min left")

    def close(self) -> None:
        self.progress.stop()

