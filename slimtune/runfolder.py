"""The run folder's bookkeeping, shared by the classification runner (runner.py) and the
generation runner (decoder/runner.py): what a finished folder was made from (its fingerprint),
whether it can be reused, one-line failures, atomic JSON. No torch.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .errors import SlimtuneError


def fingerprint(recipe, splits, upto: int | None, fmt: str | None = None) -> dict:
    """What a folder's content depends on: the data (its settings and its content: editing the
    file must not reuse stages trained on the old one), model, eval and every stage up to it."""
    d = recipe.to_dict()
    stages = d["stages"] if upto is None else d["stages"][: upto + 1]
    return {"data": d["data"], "data_digest": splits.digest, "model": d["model"], "eval": d["eval"],
            "stages": stages, "format": fmt, **({"trainer": d["trainer"]} if d.get("trainer") else {}),
            **({"int4": d["int4"]} if fmt == "genai-int4" and d.get("int4") else {})}


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


def check_folders(recipe, splits, out: Path) -> list[Path]:
    """Every stage folder of `recipe` in `out`, after checking that each finished stage and export
    there was made by this recipe and data: called before anything is written, so a rejected run
    leaves OUT exactly as it was."""
    stage_dirs = [out / "stages" / f"{i + 1:02d}-{st.name}" for i, st in enumerate(recipe.stages)]
    for i, folder in enumerate(stage_dirs):
        finished(folder, fingerprint(recipe, splits, i))
    for fmt in recipe.export:
        finished(out / "exports" / fmt, fingerprint(recipe, splits, None, fmt))
    return stage_dirs


def open_folder(recipe, out: Path) -> None:
    """Create OUT's stages/ and exports/, drop leftovers of interrupted writes, write recipe.yaml."""
    from .artifacts.atomic import clean_temp

    out.mkdir(parents=True, exist_ok=True)
    for sub in ("stages", "exports"):
        (out / sub).mkdir(exist_ok=True)
        clean_temp(out / sub)
    (out / "recipe.yaml").write_text(yaml_text(recipe.to_dict()))


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
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def yaml_text(d: dict) -> str:
    import yaml

    return yaml.safe_dump(d, sort_keys=False)
