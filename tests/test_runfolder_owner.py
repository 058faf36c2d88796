"""Issues 25 (items 1, 3) and 26 (item 3): a run folder is slimtune's, and one run's at a time.

`run --out` never writes into a user's folder without --overwrite, never into the model's or the
data's folder, a second run on a held folder fails at once naming the holder, a lock left by a
killed run does not block, and a finished stage of another recipe is never replaced."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slimtune.errors import SlimtuneError
from slimtune.recipe import load
from slimtune.runfolder import LOCK, MARKER, RunFolder
from test_cli import assert_one_line_error, slimtune  # a lock held by another process: real subprocesses
from test_hostile import tree_digest, write_recipe

OTHER = {"fingerprint": {"stages": [{"name": "head", "method": "full"}]}, "metrics": {"accuracy": 0.5}}


def hold_lock(out: Path) -> int:
    """Take OUT's lock from this process, as a live run does; returns the fd (closing it releases)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("x")
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def test_a_users_folder_is_refused_untouched_then_taken_with_overwrite(tiny_clf_dir, tiny_csv, tmp_path, slimtune_in_process):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_clf_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes")
    (mine / "stages").mkdir()
    (mine / "stages" / "keep.txt").write_text("mine too")
    before = tree_digest(mine)
    assert_one_line_error(slimtune_in_process("run", recipe, "--out", mine),
                          f"--out {mine} is not empty and is not a slimtune run folder; choose a new or empty folder, "
                          "or pass --overwrite")
    assert tree_digest(mine) == before and sorted(p.name for p in mine.iterdir()) == ["report.md", "stages"]

    proc = slimtune_in_process("run", recipe, "--out", mine, "--overwrite")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (mine / MARKER).is_file() and not (mine / LOCK).exists()  # marked as slimtune's; the lock went with the run
    assert (mine / "stages" / "keep.txt").read_text() == "mine too" and (mine / "stages" / "01-head" / "metrics.json").is_file()
    assert "slimtune report" in (mine / "report.md").read_text()

    # another recipe on the same folder: its finished stage is never replaced, nothing is touched
    after = tree_digest(mine)
    other = write_recipe(tmp_path / "other.yaml", tiny_csv, tiny_clf_dir,
                         {"name": "head", "method": "head_only", "max_steps": 3, "max_length": 32})
    assert_one_line_error(slimtune_in_process("run", other, "--out", mine), "was made by a different recipe or data")
    assert tree_digest(mine) == after


def test_the_model_folder_is_refused_even_with_overwrite(tiny_clf_dir, tiny_csv, tmp_path, slimtune_in_process):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_clf_dir)
    before = tree_digest(tiny_clf_dir)
    assert_one_line_error(slimtune_in_process("run", recipe, "--out", tiny_clf_dir, "--overwrite"),
                          f"--out {tiny_clf_dir} is {tiny_clf_dir.resolve()} (the model's folder); choose another folder "
                          "(--overwrite does not allow this)")
    assert tree_digest(tiny_clf_dir) == before and not (tiny_clf_dir / MARKER).exists()


@pytest.mark.parametrize("where, relation, what", [
    ("{model}/sub", "is inside", "the model's folder"),
    ("{model}/..", "holds", "the model's folder"),
    ("{data}", "is", "the folder of reviews.csv, which the recipe reads"),
    ("{teacher}", "is", "a folder the recipe reads"),
    ("{teacher}/run", "is inside", "a folder the recipe reads"),
    ("{extra}", "is", "the folder of extra.txt, which the recipe reads"),
    ("{recipes}", "is", "the folder of the recipe r.yaml"),
], ids=["inside-model", "holding-model", "data-folder", "teacher-folder", "inside-teacher", "extra-texts-folder",
        "recipe-folder"])
def test_folders_the_recipe_reads_are_refused_even_with_overwrite(where, relation, what, tiny_clf_dir, tiny_csv, tmp_path):
    model = tmp_path / "models" / "clf"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    data, teacher, extra = tmp_path / "data", tmp_path / "teacher", tmp_path / "extra"
    for d in (data, teacher, extra):
        d.mkdir()
    (data / "reviews.csv").write_text(tiny_csv.read_text())
    (extra / "extra.txt").write_text("text\nmore words\n")
    (teacher / "config.json").write_text("{}")
    stage = {"name": "student", "method": "distill", "teacher": str(teacher), "extra_texts": str(extra / "extra.txt"),
             "max_steps": 1}
    (tmp_path / "recipes").mkdir()
    recipe = load(write_recipe(tmp_path / "recipes" / "r.yaml", data / "reviews.csv", model, stage))
    out = Path(where.format(model=model, data=data, teacher=teacher, extra=extra, recipes=tmp_path / "recipes"))
    with pytest.raises(SlimtuneError) as e:
        with RunFolder(out).owned(recipe, overwrite=True):
            pass
    assert str(e.value).startswith(f"--out {out} {relation} ") and f"({what}); choose another folder" in str(e.value)
    # writing beside the data, in a folder of its own, is fine
    with RunFolder(data / "runs" / "a").owned(recipe, overwrite=False) as rf:
        assert (rf.root / MARKER).is_file()


def test_a_held_folder_fails_at_once_naming_the_holder_then_a_killed_holder_does_not_block(tiny_clf_dir, tiny_csv, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_clf_dir)
    out = tmp_path / "out"
    fd = hold_lock(out)
    try:
        for extra in ([], ["--nproc", "2"]):  # with --nproc the launcher finds it before starting the processes
            # the lock stays held here, so a run that waited for it would never return (the
            # subprocess time limit stops it): an answer at all means it did not wait; no clock read
            assert_one_line_error(slimtune("run", recipe, "--out", out, *extra),
                                  f"--out {out} is in use by another slimtune run (pid {os.getpid()}); wait for it to end")
    finally:
        os.close(fd)
    assert (out / LOCK).read_text() == f"{os.getpid()}\n"  # the refused run left the holder's lock alone

    # a run killed with -9 leaves its lock file behind; the OS has released the lock itself
    taker = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
             "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, b'%d\\n' % os.getpid()); "
             "print('held', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", taker, str(out / LOCK)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    assert RunFolder(out).holder() == str(child.pid)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert (out / LOCK).read_text() == f"{child.pid}\n" and RunFolder(out).holder() is None
    # ... and a finished stage of another recipe sits there: the run gets past the lock, then refuses to reuse it
    stage = out / "stages" / "01-head"
    stage.mkdir(parents=True)
    (stage / "metrics.json").write_text(json.dumps(OTHER))
    before = tree_digest(out)
    assert_one_line_error(slimtune("run", recipe, "--out", out), f"{stage} was made by a different recipe or data")
    before.pop(LOCK)  # the refused run held the lock, and removed its file when it ended
    assert tree_digest(out) == before


def test_one_owner_at_a_time_in_process_and_a_rejected_run_leaves_no_trace(tiny_clf_dir, tiny_csv, tmp_path):
    recipe = load(write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_clf_dir))
    out = tmp_path / "new" / "out"
    with RunFolder(out).owned(recipe) as rf:
        assert (out / LOCK).read_text() == f"{os.getpid()}\n" and (out / MARKER).is_file()
        with pytest.raises(SlimtuneError, match=rf"is in use by another slimtune run \(pid {os.getpid()}\)"):
            with RunFolder(out).owned(recipe):
                pass
    assert not (tmp_path / "new").exists()  # never opened: the folders it made are gone again
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError):
        with RunFolder(empty).owned(recipe):
            raise RuntimeError("bad data")
    assert list(empty.iterdir()) == []
    with RunFolder(empty).owned(recipe) as rf:
        rf.open(recipe)
    assert sorted(p.name for p in empty.iterdir()) == [MARKER, "exports", "recipe.yaml", "stages"]


def test_a_finished_stage_of_another_recipe_that_appears_meanwhile_is_kept(tmp_path):
    rf = RunFolder(tmp_path)
    stage = tmp_path / "stages" / "01-head"
    with pytest.raises(SlimtuneError, match="was finished meanwhile by a run of another recipe or data; it is kept"):
        with rf.atomic(stage, {"stages": ["mine"]}) as tmp:
            (tmp / "metrics.json").write_text(json.dumps({"fingerprint": {"stages": ["mine"]}}))
            stage.mkdir(parents=True)  # another run renamed its stage into place while this one worked
            (stage / "metrics.json").write_text(json.dumps(OTHER))
    assert json.loads((stage / "metrics.json").read_text()) == OTHER
    assert sorted(p.name for p in stage.parent.iterdir()) == ["01-head"]  # no temp folder left
    with rf.atomic(stage, OTHER["fingerprint"]) as tmp:  # the same recipe's result may replace it
        (tmp / "metrics.json").write_text(json.dumps(OTHER | {"metrics": {"accuracy": 0.75}}))
    assert json.loads((stage / "metrics.json").read_text())["metrics"]["accuracy"] == 0.75
