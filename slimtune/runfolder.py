"""The run folder of the one runner (runner.py), whatever the task: its layout, who may write into
it, and how things are written. No torch.

    OUT/.slimtune-run        marker: slimtune made (or was allowed to take) this folder
    OUT/.slimtune-lock       held (flock) by the one run that owns OUT now; its pid inside
    OUT/recipe.yaml          the recipe the last run was given
    OUT/stages/NN-name/      one finished stage (artifact + metrics.json with its fingerprint)
    OUT/exports/FORMAT/      one finished export
    OUT/floor/ cache/ checkpoints/
    OUT/report.json, report.md (+ the task's plots)

Ownership (`RunFolder.owned`): before anything is written, OUT must be new, empty, or a slimtune
run folder (`.slimtune-run`, or the `recipe.yaml` + `stages/` of a folder made before the marker
existed); a user's non-empty folder only with `overwrite`. Never, whatever `overwrite` says, the
model's folder (or one inside it or holding it) or a folder the recipe reads from. One run at a
time holds the lock: an `fcntl.flock`, which the OS drops when its process dies (even by kill -9),
so a lock file left behind never blocks the next run.

Every folder is written under a temp name and renamed when complete, and a finished folder of
another recipe (another fingerprint) is never replaced, not even at that rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

try:
    import fcntl  # POSIX; without it (Windows) runs are not locked
except ImportError:  # pragma: no cover
    fcntl = None

from .artifacts.atomic import atomic_dir, check_writable, clean_temp, write_text
from .errors import SlimtuneError

MARKER = ".slimtune-run"
LOCK = ".slimtune-lock"
# recipe keys whose values are names, never paths the recipe reads (nor is any `*_column`)
NOT_PATHS = {"name", "method", "from", "baseline", "device", "export", "encoding"}


class RunFolder:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.stages, self.exports = self.root / "stages", self.root / "exports"
        self.floor, self.cache, self.checkpoints = self.root / "floor", self.root / "cache", self.root / "checkpoints"
        self._lock_fd: int | None = None
        self._made: list[Path] = []  # what `owned` created, undone if the run never opened the folder
        self._opened = False

    # ---- layout ---------------------------------------------------------------------------------

    def stage_dirs(self, recipe) -> list[Path]:
        return [self.stages / f"{i + 1:02d}-{st.name}" for i, st in enumerate(recipe.stages)]

    def export_dir(self, fmt: str) -> Path:
        return self.exports / fmt

    def checkpoint_dir(self, stage_dir: Path, fp: dict) -> Path:
        # keyed by the stage's fingerprint: a checkpoint of a since-changed recipe is never resumed
        key = hashlib.sha256(json.dumps(fp, sort_keys=True, default=str).encode()).hexdigest()[:12]
        return self.checkpoints / f"{stage_dir.name}-{key}"

    def relative(self, folder: Path) -> str:
        return str(Path(folder).relative_to(self.root))

    # ---- ownership ------------------------------------------------------------------------------

    @staticmethod
    def is_run_folder(path: Path) -> bool:
        path = Path(path)
        return (path / MARKER).is_file() or ((path / "recipe.yaml").is_file() and (path / "stages").is_dir())

    def check_target(self, recipe, overwrite: bool = False) -> None:
        """Fail with one line, touching nothing, when this run may not write into OUT (see the module)."""
        out = self.root
        check_writable(out, "--out")
        here = out.resolve()
        is_run = self.is_run_folder(out)
        for folder, what, inside_ok in _read_folders(recipe, is_run):
            rel = ("is" if here == folder else "holds" if here in folder.parents
                   else "is inside" if folder in here.parents and not inside_ok else None)
            if rel:
                raise SlimtuneError(f"--out {out} {rel} {folder} ({what}); choose another folder "
                                    "(--overwrite does not allow this)")
        if out.is_dir() and not is_run and not overwrite and any(p.name != LOCK for p in out.iterdir()):
            raise SlimtuneError(f"--out {out} is not empty and is not a slimtune run folder; choose a new or empty "
                                "folder, or pass --overwrite to write the run into it")
        pid = self.holder()
        if pid is not None:
            raise _in_use(out, pid)

    def holder(self) -> str | None:
        """The pid of the run holding OUT's lock (or "unknown"), None when nobody holds it. Reads only."""
        if fcntl is None:
            return None
        try:
            fd = os.open(self.root / LOCK, os.O_RDONLY)
        except OSError:
            return None
        try:
            return None if _try_lock(fd, shared=True) else _pid_in(fd)
        finally:
            os.close(fd)  # drops the probe's lock, if it got one

    @contextlib.contextmanager
    def owned(self, recipe, overwrite: bool = False):
        """Hold OUT for one run: checks (`check_target`), then the lock and the marker. On the way
        out the lock is released; if the run ended before `open` (bad data, a finished stage of
        another recipe), what this created is removed again, so OUT is exactly as it was."""
        self.check_target(recipe, overwrite)
        self._made = [p for p in (self.root, *self.root.parents) if not p.exists()][::-1]  # top first
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._lock()
            if not (self.root / MARKER).is_file():
                write_text(self.root / MARKER, "This folder is a slimtune run folder (slimtune run --out).\n")
                self._made.append(self.root / MARKER)
            yield self
        finally:
            self._release()

    def _lock(self) -> None:
        if fcntl is None:
            return
        path = self.root / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                pid = _pid_in(fd)
                os.close(fd)
                raise _in_use(self.root, pid)
            # the holder before us removes the file when it ends: our lock must be on the file at `path`
            try:
                st, now = os.fstat(fd), os.stat(path)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release(self) -> None:
        made = [] if self._opened else self._made
        if made and made[-1].name == MARKER:
            made.pop().unlink(missing_ok=True)
        if self._lock_fd is not None:
            (self.root / LOCK).unlink(missing_ok=True)  # while still held (see `_lock`)
            os.close(self._lock_fd)
            self._lock_fd = None
        for d in reversed(made):  # deepest first; only if empty (another run may be starting in it)
            with contextlib.suppress(OSError):
                d.rmdir()
        self._made = []

    # ---- writing --------------------------------------------------------------------------------

    def check_finished(self, recipe, splits) -> list[Path]:
        """Every stage folder of `recipe`, after checking that each finished stage and export here
        was made by this recipe and data: called before anything is written, so a rejected run
        leaves OUT exactly as it was."""
        stage_dirs = self.stage_dirs(recipe)
        for i, folder in enumerate(stage_dirs):
            finished(folder, fingerprint(recipe, splits, i))
        for fmt in recipe.export:
            finished(self.export_dir(fmt), fingerprint(recipe, splits, None, fmt))
        return stage_dirs

    def open(self, recipe) -> None:
        """Start writing: stages/ and exports/, leftovers of interrupted writes dropped, recipe.yaml."""
        self.root.mkdir(parents=True, exist_ok=True)
        clean_temp(self.root)
        for sub in (self.stages, self.exports):
            sub.mkdir(exist_ok=True)
            clean_temp(sub)
        write_text(self.root / "recipe.yaml", yaml_text(recipe.to_dict()))
        self._opened = True

    def atomic(self, folder: Path, fp: dict):
        """`atomic_dir` for a finished folder keyed by `fp`: a finished folder of another
        fingerprint that appeared meanwhile (another run despite the lock: a shared filesystem
        without flock, a removed lock file) is kept, and this run fails instead of replacing it."""
        def same_recipe(final: Path) -> None:
            saved = _saved_fingerprint(final)
            if saved is not None and saved != fp:
                raise SlimtuneError(f"{final} was finished meanwhile by a run of another recipe or data; it is kept and "
                                    "this result dropped (two runs share --out: use one folder per run)")

        return atomic_dir(folder, before_replace=same_recipe)

    def write_report(self, report: dict, markdown: str) -> None:
        # UTF-8, never \uXXXX: label names and texts in any language stay readable in both files
        write_text(self.root / "report.json", json.dumps(report, indent=2, default=str, ensure_ascii=False))
        write_text(self.root / "report.md", markdown)


def _read_folders(recipe, is_run_folder: bool):
    """(folder, what, writing inside it is fine) for every folder the recipe reads from: the model's
    (or slimtune's model cache for a packaged one), each folder named in it (teacher, student...)
    and the folder of each file named in it (data, extra texts...), and the recipe's own folder."""
    model = Path(recipe.model)
    if model.is_dir():
        yield model.resolve(), "the model's folder", False
    else:
        from .model.folders import cache_dir

        yield cache_dir().resolve(), "slimtune's model cache", False
    d = recipe.to_dict()
    for path in _paths_in({k: v for k, v in d.items() if k != "model"}):
        if path.is_dir():
            yield path.resolve(), "a folder the recipe reads", False
        else:
            yield path.resolve().parent, f"the folder of {path.name}, which the recipe reads", True
    source = Path(recipe.source)
    # a run folder's recipe.yaml is the run's own copy (`slimtune run OUT/recipe.yaml --out OUT` resumes)
    if source.is_file() and not is_run_folder:
        yield source.resolve().parent, f"the folder of the recipe {source.name}", True


def _paths_in(value):
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in NOT_PATHS and not k.endswith("_column"):
                yield from _paths_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from _paths_in(v)
    elif isinstance(value, str) and value.strip() and Path(value).exists():
        yield Path(value)


def _try_lock(fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _pid_in(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def _in_use(out: Path, pid: str) -> SlimtuneError:
    return SlimtuneError(f"--out {out} is in use by another slimtune run (pid {pid}); wait for it to end, "
                         "or choose another --out")


def _saved_fingerprint(folder: Path):
    try:
        return json.loads((folder / "metrics.json").read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def fingerprint(recipe, splits, upto: int | None, fmt: str | None = None) -> dict:
    """What a folder's content depends on: the data (its settings and its content: editing the
    file must not reuse stages trained on the old one), model, eval and every stage up to it; an
    export's, the recipe blocks its format is built with (`Recipe.export_keys`: genai-int4's `int4:`)."""
    d = recipe.to_dict()
    stages = d["stages"] if upto is None else d["stages"][: upto + 1]
    return {"data": d["data"], "data_digest": splits.digest, "model": d["model"], "eval": d["eval"],
            "stages": stages, "format": fmt, **({"trainer": d["trainer"]} if d.get("trainer") else {}),
            **{k: d[k] for k in recipe.export_keys(fmt) if d.get(k)}}


def finished(folder: Path, fingerprint: dict) -> dict | None:
    path = folder / "metrics.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    if saved.get("fingerprint") != fingerprint:
        raise SlimtuneError(
            f"{folder} was made by a different recipe or data (stage settings, data settings or the data "
            "file's content changed); use a new --out folder or delete that one"
        )
    return saved


@contextlib.contextmanager
def failing_step(what: str, out: Path):
    """A stage or export that fails ends the run with one line: which step, the cause, how to resume.

    The traceback stays on the exception chain (`slimtune --debug` prints it); finished stages are
    already renamed into place, and the failed step's temp folder is removed by `atomic_dir`.
    """
    try:
        yield
    except SlimtuneError as e:
        raise SlimtuneError(f"{what}: {e}") from e
    except Exception as e:  # anything from torch / transformers / peft / onnxruntime deep inside a step
        text = str(e).strip()
        cause = f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
        raise SlimtuneError(
            f"{what} failed: {cause}. Finished stages are kept in {out}; fix the cause and run the same "
            "command to resume (--debug shows the traceback)"
        ) from e


def reuse_or_run(folder: Path, fp: dict, what: str, label: str, out: Path, log, run) -> dict:
    """One step of a run (a stage or an export): the finished folder's metrics when it was made by
    this recipe and data, else `run()` under `failing_step` (one line on failure). `label` names it
    in the log ("stage NAME", "export FMT"); `what` adds the method for the failure line."""
    done = finished(folder, fp)
    if done:
        log(f"{label}: finished earlier, skipped")
        return done
    log(what)
    with failing_step(what, out):
        return run()


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def yaml_text(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
