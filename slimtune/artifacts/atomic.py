"""Folders and files written whole or not at all: a temp sibling renamed into place when complete.

An interrupted run never leaves a half-written model (or report) where a finished one is expected;
leftovers of interrupted writes are removed by `clean_temp` before a run writes again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Callable

from ..errors import SlimtuneError


@contextlib.contextmanager
def atomic_dir(final: Path, before_replace: Callable[[Path], None] | None = None):
    """Yield a temp folder; on success it replaces `final` in one rename.

    `before_replace(final)` is called when `final` exists at that moment; if it raises, `final`
    is kept and the temp folder dropped (the run folder uses it to never replace a finished stage
    of another recipe)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and before_replace is not None:
        try:
            before_replace(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_file(final: Path):
    """Yield a temp path beside `final` (same suffix, so writers that go by it still work); on
    success it replaces `final` in one rename, so a reader never sees half a file."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.stem}-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) at `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_writable(out: Path, what: str) -> None:
    """Fail before any work when `out` cannot become a folder we write into (a file is in the
    way, or its nearest existing folder is read-only). Leaves nothing behind."""
    import tempfile

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SlimtuneError(f"{what} {out} is a file, not a folder")
    # atomic_dir writes a temp sibling in the parent, and a run writes inside `out`: probe both
    parent = next((p for p in out.parents if p.exists()), Path("."))
    for probe_in in [parent] + ([out] if out.is_dir() else []):
        if not probe_in.is_dir():
            raise SlimtuneError(f"{what} {out}: {probe_in} is a file, not a folder")
        try:
            tempfile.TemporaryDirectory(dir=probe_in, prefix=".slimtune-probe-").cleanup()
        except OSError as e:
            raise SlimtuneError(f"{what} {out}: cannot write in {probe_in} ({e.strerror or e})") from None


def clean_temp(folder: Path) -> None:
    """Remove leftovers of interrupted atomic writes (folders and files) in `folder`."""
    for p in [*Path(folder).glob(".tmp-*"), *Path(folder).glob(".old-*")]:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
