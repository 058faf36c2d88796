"""Issue 10, case by case, through the `slimtune` command: the exit code, the one-line message, and
that no user file changed. Numbers in the test names follow the issue. Ctrl-C is sent to a
real subprocess; the other cases run the command in this process (conftest.run_cli_in_process,
which captures file descriptors 1 and 2 as a subprocess's pipes would)."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_cli import assert_one_line_error

FAST_EVAL = {"latency_runs": 3, "warmup": 1, "bench_texts": 8, "max_length": 32, "isolate": False}


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` (name -> sha256): equal digests mean nothing was touched."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def write_recipe(path: Path, data: Path, model: Path, stage: dict | None = None, **extra) -> Path:
    raw = {"data": {"path": str(data)}, "model": str(model),
           "stages": [stage or {"name": "head", "method": "head_only", "max_steps": 2, "max_length": 32}],
           "eval": FAST_EVAL} | extra
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def finished_cli_run(tmp_path_factory, tiny_clf_dir, tiny_csv, slimtune_in_process):
    """A run made through the CLI (with an int8 export, benchmarked in-process) to examine."""
    root = tmp_path_factory.mktemp("hostile")
    data = root / "reviews.csv"
    shutil.copy(tiny_csv, data)
    recipe = write_recipe(root / "r.yaml", data, tiny_clf_dir, export=["onnx-int8"])
    proc = slimtune_in_process("run", recipe, "--out", root / "out", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, recipe, data, proc


# -- data loss and silent wrong answers -------------------------------------------------------

def test_01_export_never_deletes_a_users_folder_or_the_source(tiny_clf_dir, tmp_path, slimtune_in_process):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my thesis")
    before, source = tree_digest(mine), tree_digest(tiny_clf_dir)
    assert_one_line_error(slimtune_in_process("export", tiny_clf_dir, "--format", "hf", "--out", mine),
                          "is not empty and is not a finished hf export")
    assert_one_line_error(slimtune_in_process("export", tiny_clf_dir, "--format", "hf", "--out", tiny_clf_dir),
                          "is the source model's folder")
    assert_one_line_error(slimtune_in_process("export", tiny_clf_dir, "--format", "onnx", "--out", tiny_clf_dir / "sub"),
                          "is the source model's folder")
    assert tree_digest(mine) == before and tree_digest(tiny_clf_dir) == source


def test_02_a_model_folder_without_its_tokenizer_is_an_error(tiny_clf_dir, tmp_path, slimtune_in_process):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_clf_dir / f, bare)
    assert_one_line_error(slimtune_in_process("predict", bare, "a wonderful film"), "no tokenizer files")


def test_03_08_edited_data_is_not_reused_and_a_rejected_run_writes_nothing(finished_cli_run, slimtune_in_process):
    root, recipe, data, _ = finished_cli_run
    out = root / "out"
    before, original = tree_digest(out), data.read_text()
    flipped = original.replace(",pos", ",tmp").replace(",neg", ",pos").replace(",tmp", ",neg")
    try:
        data.write_text(flipped)
        assert_one_line_error(slimtune_in_process("run", recipe, "--out", out), "was made by a different recipe or data")
        assert tree_digest(out) == before  # recipe.yaml and every stage untouched
    finally:
        data.write_text(original)


def test_04_ctrl_c_exits_130_and_names_the_resume_command(tiny_base_dir, tiny_csv, tmp_path):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_base_dir,
                          {"name": "long", "method": "full", "max_steps": 5000, "max_length": 32})
    out = tmp_path / "out"
    exe = shutil.which("slimtune", path=str(Path(sys.executable).parent))
    # SIGINT as at a terminal: a suite started in the background of a non-interactive shell (`... &`)
    # passes SIGINT down ignored, and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen([exe, "run", str(recipe), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600  # a bound for a busy machine; the loop ends when the stage starts
    while not list((out / "stages").glob(".tmp-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)  # wait until the stage is at work
    assert proc.poll() is None and list((out / "stages").glob(".tmp-*")), "the stage never started"
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130, err[-2000:]
    assert f"resume with: slimtune run {recipe} --out {out}" in err
    assert "Traceback" not in err
    assert not list((out / "stages").iterdir())  # no half-written stage


# -- tracebacks where one line belongs --------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["predict", "{clf}"], "Missing argument 'texts'"),
    (["bench", "{clf}", "--runs", "abc"], "Invalid value for '--runs'"),
    (["bench", "{clf}", "--runs", "0"], "Invalid value for '--runs'"),
    (["predict", "{clf}", "hi", "--max-length", "-1"], "Invalid value for '--max-length'"),
    (["nosuch"], "No such command 'nosuch'"),
], ids=["no-text", "runs-abc", "runs-0", "max-length-negative", "unknown-command"])
def test_05_07_usage_errors_are_one_line(args, expected, tiny_clf_dir, slimtune_in_process):
    assert_one_line_error(slimtune_in_process(*[a.format(clf=tiny_clf_dir) for a in args]), expected)


def test_05_bare_command_shows_help_and_exits_2(slimtune_in_process):
    proc = slimtune_in_process()
    assert proc.returncode == 2 and "Usage: slimtune" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_06_unwritable_out_is_refused_before_any_work(tiny_clf_dir, tiny_csv, tmp_path, slimtune_in_process):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    recipe = write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_clf_dir)
    for args, expected in [(["run", recipe, "--out", a_file], "is a file, not a folder"),
                           (["run", recipe, "--out", "/proc/slimtune-out"], "cannot write in /proc"),
                           (["export", tiny_clf_dir, "--out", a_file], "is a file, not a folder"),
                           (["export", tiny_clf_dir, "--out", "/proc/slimtune-out"], "cannot write in /proc")]:
        proc = slimtune_in_process(*args)
        assert_one_line_error(proc, expected)
        # found out before any training or export: nothing but the error was printed (a run logs
        # its data and stages on stderr as it goes); not a bound on time, which a busy machine stretches
        assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("change, expected", [
    ({"eval": FAST_EVAL | {"batch_size": 0}}, "eval: batch_size must be >= 1, not 0"),
    ({"eval": FAST_EVAL | {"latency_runs": 0}}, "eval: latency_runs must be >= 1, not 0"),
    ({"eval": FAST_EVAL | {"warmup": -3}}, "eval: warmup must be >= 0, not -3"),
    ({"stage": {"name": "s", "method": "full", "max_length": 0}}, "max_length must be >= 2"),
], ids=["eval-batch-0", "latency-runs-0", "warmup-negative", "stage-max-length-0"])
def test_07_08_bad_numbers_are_refused_when_the_recipe_is_read(change, expected, tiny_clf_dir, tiny_csv, tmp_path, slimtune_in_process):
    recipe = write_recipe(tmp_path / "r.yaml", tiny_csv, tiny_clf_dir, change.get("stage"),
                          **{k: v for k, v in change.items() if k != "stage"})
    assert_one_line_error(slimtune_in_process("run", recipe, "--out", tmp_path / "out"), expected)
    assert not (tmp_path / "out").exists()  # nothing written


def test_08_a_data_error_leaves_no_output_folder(tiny_clf_dir, tmp_path, slimtune_in_process):
    recipe = write_recipe(tmp_path / "r.yaml", tmp_path / "missing.csv", tiny_clf_dir)
    assert_one_line_error(slimtune_in_process("run", recipe, "--out", tmp_path / "out"), "data file not found")
    assert not (tmp_path / "out").exists()


# -- quiet data mistakes ----------------------------------------------------------------------

def test_09_numeric_labels_written_two_ways_are_one_class(tiny_clf_dir, tmp_path, slimtune_in_process):
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"text number {i},{['0', '1', '1.0', '0.0'][i % 4]}\n" for i in range(40)))
    # the tiny model knows neg/pos: the error lists the data's classes, which must be two, not four
    assert_one_line_error(slimtune_in_process("eval", tiny_clf_dir, "--data", data), "but the data has ['0', '1']")


def test_09_broken_jsonl_line_and_bad_bytes_are_located(tiny_clf_dir, tmp_path, slimtune_in_process):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n{"text": "c", "label": \n')
    assert_one_line_error(slimtune_in_process("eval", tiny_clf_dir, "--data", jsonl), "d.jsonl line 3: not valid JSON")
    latin = tmp_path / "d.csv"
    latin.write_bytes(b"text,label\n" + b"".join(f"t{i} caf\xe9,{'pos' if i % 2 else 'neg'}\n".encode("latin-1")
                                                 for i in range(20)))
    assert_one_line_error(slimtune_in_process("eval", tiny_clf_dir, "--data", latin), "line 2 (byte 17) is not valid utf-8")
    proc = slimtune_in_process("eval", tiny_clf_dir, "--data", latin, "--encoding", "latin-1", "--split", "all")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["n_examples"] == 20


def test_09_tsv_keeps_quotes_as_text(tmp_path):
    from slimtune.data import read_table

    tsv = tmp_path / "d.tsv"
    tsv.write_text('text\tlabel\n"wow" she said\tpos\nplain\tneg\n')
    assert read_table(tsv, "text", "label")["text"].tolist() == ['"wow" she said', "plain"]


# -- output a person can read -----------------------------------------------------------------

def test_11_stdout_holds_only_the_result(finished_cli_run, tiny_clf_dir, slimtune_in_process):
    _, _, _, proc = finished_cli_run
    report = json.loads(proc.stdout)  # the whole of stdout is the report: no log lines mixed in
    assert [s["name"] for s in report["stages"]] == ["head", "onnx-int8"]
    assert "{'loss'" not in proc.stdout + proc.stderr and "'loss':" not in proc.stdout
    pred = slimtune_in_process("predict", tiny_clf_dir, "a wonderful film", "--json")  # file descriptor 1 whole
    row = json.loads(pred.stdout)
    assert row["label"] in ("neg", "pos") and set(row["probabilities"]) == {"neg", "pos"}


def test_12_13_report_table_renders_and_names_where_it_was_benchmarked(finished_cli_run):
    from markdown_it import MarkdownIt

    root = finished_cli_run[0]
    md = (root / "out/report.md").read_text()
    tokens = MarkdownIt().enable("table").parse(md)
    tables, cells, rows = [], 0, []
    for t in tokens:
        if t.type == "table_open":
            tables.append(rows := [])
        elif t.type == "tr_open":
            cells = 0
        elif t.type in ("th_open", "td_open"):
            cells += 1
        elif t.type == "tr_close":
            rows.append(cells)
    # header + two artifacts + the TF-IDF floor row, all parsed as one table
    assert tables and len(tables[0]) == 4 and "| tfidf-floor |" in md
    for table in tables:
        assert len(set(table)) == 1, table  # every row has as many cells as the header
    assert "max \\|Δlogit\\|" in md
    assert "in the run's own process (eval.isolate: false)" in md and "fresh process" not in md


def test_15_batch1_agreement_is_recorded_for_every_artifact(finished_cli_run):
    report = json.loads(finished_cli_run[3].stdout)
    for s in report["stages"]:
        m = s["metrics"]
        assert 0.0 <= m["batch1_agreement"] <= 1.0 and m["batch1_agreement_texts"] == FAST_EVAL["bench_texts"]
