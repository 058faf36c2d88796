"""The `slimtune` command as a user runs it: exit codes, one-line errors, stdout. Most cases run
`slimtune.cli.main` in this process (conftest.run_cli_in_process); test_the_installed_command_*
runs the real entry point in a subprocess."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from slimtune.model import assets
from slimtune.errors import SlimtuneError


def slimtune(*args, cwd=None):
    """The installed `slimtune` in a subprocess; for tests where the process boundary is the point.
    The timeout only stops a hung child: a busy 2-core CI machine must never reach it."""
    exe = shutil.which("slimtune", path=str(__import__("pathlib").Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "slimtune.cli"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=1800)


def assert_one_line_error(proc, expected):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("slimtune: error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory, tiny_clf_dir):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "noweights").mkdir()
    shutil.copy(tiny_clf_dir / "config.json", root / "noweights")
    corrupt = root / "corrupt"
    shutil.copytree(tiny_clf_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00" * 64)
    recipe = root / "r.yaml"
    recipe.write_text("data: {name: rotten_tomatoes}\nmodel: minilm-l6\nstages:\n  - {name: a, method: sparsify}\n")
    return root


def test_the_installed_command_exits_2_with_one_line(bad_dirs):
    """The console script itself, not main in this process: its exit code and stderr (exit 0 and
    stdout through it: test_no_remote_code, test_hostile)."""
    assert_one_line_error(slimtune("predict", bad_dirs / "corrupt", "hi"), "cannot load weights")


def test_predict_prints_label_and_probability(tiny_clf_dir, slimtune_in_process):
    proc = slimtune_in_process("predict", tiny_clf_dir, "a wonderful film", "a dull film")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [l.split("\t") for l in proc.stdout.strip().splitlines()]
    assert [r[2] for r in rows] == ["a wonderful film", "a dull film"]
    assert all(r[0] in ("neg", "pos") and 0.5 <= float(r[1]) <= 1.0 for r in rows)


def test_eval_prints_metrics(tiny_clf_dir, tiny_csv, slimtune_in_process):
    proc = slimtune_in_process("eval", tiny_clf_dir, "--data", tiny_csv, "--split", "all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout)
    assert m["n_examples"] == 240 and 0 <= m["accuracy"] <= 1 and len(m["confusion_matrix"]) == 2


@pytest.mark.parametrize(
    "args, expected",
    [
        (["run", "{root}/missing.yaml", "--out", "{root}/out"], "recipe not found"),
        (["run", "{root}/r.yaml", "--out", "{root}/out"], "unknown method 'sparsify'; known: adapter, baseline, bitfit, cast, distill"),
        (["eval", "{clf}", "--data", "{root}/missing.csv"], "data file not found"),
        (["predict", "{root}/nowhere", "hi"], "model not found"),
        (["predict", "{root}/empty", "hi"], "not a model folder (no config.json)"),
        (["predict", "{root}/noweights", "hi"], "no weights"),
        (["predict", "{root}/corrupt", "hi"], "cannot load weights"),
        (["export", "{clf}", "--format", "coreml", "--out", "{root}/x"], "export format 'coreml' is not one for classifiers ({clf}); formats for classifiers: hf, onnx, onnx-int8, tflite, tflite-int8"),
    ],
    ids=["missing-recipe", "unknown-method", "missing-data", "missing-model", "no-config", "no-weights", "corrupt-weights", "bad-format"],
)
def test_bad_input_exits_2_with_one_line(args, expected, bad_dirs, tiny_clf_dir, slimtune_in_process):
    proc = slimtune_in_process(*[a.format(root=bad_dirs, clf=tiny_clf_dir) for a in args])
    assert_one_line_error(proc, expected.format(root=bad_dirs, clf=tiny_clf_dir))


def test_missing_asset_package_names_the_install():
    with pytest.raises(SlimtuneError, match=r"package no-such-pkg is not installed; run: pip install --no-deps no-such-pkg==1.0"):
        assets.locate(assets.Asset("no-such-pkg", "1.0", "model"))
    with pytest.raises(SlimtuneError, match=r"pip install --no-deps other-pkg==2.0"):
        assets.locate(assets.Asset("other-pkg", "2.0", "data/x.csv", module="no_such_module_xyz"))


def test_export_then_predict_onnx(tiny_clf_dir, tiny_csv, tmp_path, slimtune_in_process):
    proc = slimtune_in_process("export", tiny_clf_dir, "--format", "onnx-int8", "--out", tmp_path / "int8", "--data", tiny_csv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout)
    assert m["parity"]["argmax_agreement"] >= 0.95 and "accuracy" in m
    assert json.loads((tmp_path / "int8" / "metrics.json").read_text())["format"] == "onnx-int8"
    proc = slimtune_in_process("predict", tmp_path / "int8", "a wonderful film")
    assert proc.returncode == 0 and proc.stdout.split("\t")[0] in ("neg", "pos"), proc.stderr[-2000:]


def test_profile_command_prints_the_profile(tiny_csv, slimtune_in_process):
    """`slimtune profile` printed nothing but a NameError (its console helper was never imported)."""
    proc = slimtune_in_process("profile", "--data", tiny_csv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "token" in proc.stdout.lower() and "Traceback" not in proc.stderr


def test_export_help_shows_the_tflite_extra():
    """Rich markup read `[tflite]` as a style tag and printed `pip install 'slimtune'`."""
    from typer.testing import CliRunner

    from slimtune.cli import app

    wide = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}  # one line per option: nothing wraps mid-command
    out = CliRunner().invoke(app, ["export", "--help"], env=wide).output
    assert "pip install 'slimtune[tflite]'" in out, out
