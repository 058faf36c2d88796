"""Folders written whole or not at all: a temp sibling renamed into place when complete.

An interrupted run never leaves a half-written model where a finished one is expected; leftovers
of interrupted writes are removed by `clean_temp` before a run writes again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from ..errors import SlimtuneError


@contextlib.contextmanager
def atomic_dir(final: Path):
    """Yield a temp folder; on success it replaces `final` in one rename."""
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
    if final.exists():
        trash = final.with_name(f".old-{final.name}-{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)


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
    """Remove leftovers of interrupted atomic writes in `folder`."""
    for p in Path(folder).glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(folder).glob(".old-*"):
        shutil.rmtree(p, ignore_errors=True)
