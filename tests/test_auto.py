"""`slimtune auto` on a tiny model: a 3-candidate search, its resume, selection on validation only,
impossible budgets, and two workers sharing one study (slow)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml

from conftest import synthetic_rows
from slimtune.auto import FLOOR, AutoConfig, auto, choose, pareto
from slimtune.data import DataConfig
from slimtune.errors import SlimtuneError

TRAIN = {"max_steps": 2, "max_length": 32, "batch_size": 8}
EVAL = {"latency_runs": 5, "warmup": 1, "bench_texts": 8, "isolate": False}


def config(csv_path, model, **kw):
    return AutoConfig(DataConfig(path=str(csv_path)), str(model), **({"max_drop": 0.5, "minutes": 10, "train": TRAIN,
                                                                      "eval": EVAL} | kw))


@pytest.fixture(scope="module")
def searched(tiny_base_dir, tiny_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto")
    logs = []
    report = auto(config(tiny_csv, tiny_base_dir, max_trials=3), out, log=logs.append)
    return out, report, logs


def test_three_candidate_search(searched, tmp_path):
    from slimtune import runner
    from slimtune.recipe import load

    out, report, logs = searched
    names = [c["candidate"] for c in report["candidates"]]
    assert FLOOR in names and "reference/full/torch" in names and len(names) == 4  # 3 searched + the reference
    assert report["pareto"] and all(p["candidate"] in names for p in report["pareto"])
    chosen = report["chosen"]
    assert chosen["candidate"] == min(report["candidates"], key=lambda r: r["latency_ms_p50"])["candidate"]
    for key in ("val_accuracy", "test_accuracy", "latency_ms_p50", "size_mb", "artifact"):
        assert key in chosen
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["chosen"]["candidate"] == chosen["candidate"] and on_disk["pareto"]
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG" and (out / "study.db").is_file()
    assert "**Chosen:" in (out / "report.md").read_text()
    # chosen.yaml reproduces the chosen model with `slimtune run`
    recipe = load(out / "chosen.yaml")
    assert recipe.stages[0].name == "reference"
    again = runner.run(recipe, tmp_path, log=lambda m: None)
    if chosen["candidate"] != FLOOR:
        assert [s["name"] for s in again["stages"]] == ["reference", *chosen["stages"]]


def test_resume_never_retrains_a_finished_candidate(searched, tiny_base_dir, tiny_csv, monkeypatch):
    from slimtune import runner

    out, report, _ = searched
    ref = out / "search/stages/01-reference/model.safetensors"
    mtime = ref.stat().st_mtime_ns
    before = {c["candidate"] for c in report["candidates"]}
    real = runner._run_stage
    started = []

    def interrupted(stage, *a, **kw):  # Ctrl-C inside the next candidate's first new stage
        started.append(stage.name)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        auto(config(tiny_csv, tiny_base_dir, max_trials=1), out, log=lambda m: None)
    assert started and "reference" not in started
    monkeypatch.setattr(runner, "_run_stage", lambda stage, *a, **kw: started.append(stage.name) or real(stage, *a, **kw))
    logs = []
    resumed = auto(config(tiny_csv, tiny_base_dir, max_trials=1), out, log=logs.append)
    assert any("was interrupted; it continues" in m for m in logs)
    assert ref.stat().st_mtime_ns == mtime  # the reference was never trained again
    assert "stage reference: finished earlier, skipped" in logs
    new = {c["candidate"] for c in resumed["candidates"]} - before
    assert len(new) == 1  # the interrupted candidate, finished now; nothing measured before ran again
    trained_again = [n for n in started[1:] if n in {s for c in report["candidates"] for s in c["stages"]}]
    assert not trained_again


def test_impossible_budget_names_the_closest_candidate(searched, tiny_base_dir, tiny_csv):
    out, _, _ = searched
    with pytest.raises(SlimtuneError, match=r"no candidate meets every constraint .*p50 <= 1e-06 ms.*the closest is \S+"):
        auto(config(tiny_csv, tiny_base_dir, max_trials=0, max_latency_ms=1e-6), out, log=lambda m: None)
    report = json.loads((out / "report.json").read_text())
    assert report["chosen"] is None and report["closest"]["candidate"] in report["message"]


@pytest.mark.parametrize("kw, message", [({"max_drop": -1}, "--max-drop -1: must be a fraction in"),
                                         ({"max_latency_ms": 0}, "--max-latency-ms 0: must be > 0")])
def test_contradictory_budget_is_one_line(kw, message, tiny_csv):
    with pytest.raises(SlimtuneError, match=message):
        AutoConfig(DataConfig(path=str(tiny_csv)), **kw)


def test_cli_rejects_negative_drop(tiny_csv, tmp_path, monkeypatch, capsys):
    from slimtune import cli

    monkeypatch.setattr("sys.argv", ["slimtune", "auto", "--data", str(tiny_csv), "--max-drop", "-1", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().startswith("slimtune: error: --max-drop -1.0: must be a fraction")


def test_cli_opens_the_storage_before_converting_the_model(tiny_csv, tmp_path, monkeypatch, capsys):
    from slimtune import cli

    def converts(name):  # a packaged model's first use converts it for minutes: must not happen first
        raise AssertionError(f"resolved {name} before opening the storage")

    monkeypatch.setattr("slimtune.model.folders.resolve", converts)
    monkeypatch.setattr("sys.argv", ["slimtune", "auto", "--data", str(tiny_csv), "--model", "multilingual-e5-small",
                                     "--storage", "nosuchdb://nowhere/study", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slimtune: error: --storage nosuchdb://nowhere/study: cannot open the study database: ")
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()


def test_choice_reads_validation_never_test():
    ref = {"candidate": "ref", "val_accuracy": 0.80, "test_accuracy": 0.80, "latency_ms_p50": 10.0, "size_mb": 80.0}
    a = {"candidate": "a", "val_accuracy": 0.80, "test_accuracy": 0.70, "latency_ms_p50": 1.0, "size_mb": 10.0}  # good on val only
    b = {"candidate": "b", "val_accuracy": 0.75, "test_accuracy": 0.80, "latency_ms_p50": 0.5, "size_mb": 10.0}  # good on test only
    chosen, _ = choose([ref, a, b], ref, AutoConfig(DataConfig(name="rotten_tomatoes"), max_drop=0.01))
    assert chosen is a
    assert [r["candidate"] for r in pareto([ref, a, b])] == ["b", "a"]  # a dominates the reference


def test_selection_on_validation_when_test_disagrees(tiny_base_dir, tmp_path):
    """Test labels flipped: the floor is perfect on validation and wrong on test. It is chosen
    (validation decides) and the report says test does not confirm it."""
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    flip = {"pos": "neg", "neg": "pos"}
    for path, rows in ((train, synthetic_rows(200)), (test, [(f"test {t}", flip[l]) for t, l in synthetic_rows(40, seed=1)])):
        with path.open("w", newline="") as f:
            csv.writer(f).writerows([("text", "label"), *rows])
    cfg = AutoConfig(DataConfig(path=str(train), test_path=str(test)), str(tiny_base_dir), max_drop=0.0, max_size_mb=0.5,
                     minutes=10, max_trials=1, train=TRAIN, eval=EVAL)
    report = auto(cfg, tmp_path / "out", log=lambda m: None)
    chosen = report["chosen"]
    assert chosen["candidate"] == FLOOR
    assert chosen["val_accuracy"] > 0.95 and chosen["test_accuracy"] < 0.2
    assert chosen["confirmed_on_test"] is False
    assert "**not confirmed** on test" in (tmp_path / "out/report.md").read_text()
    assert "stages: []" in (tmp_path / "out/chosen.yaml").read_text()


@pytest.mark.slow
def test_two_workers_share_one_study(tiny_base_dir, tiny_csv, tmp_path):
    """Two processes, each with its own OUT, on one SQLite study: both contribute, no candidate twice."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    code = ("import sys; from slimtune.auto import AutoConfig, auto; from slimtune.data import DataConfig; "
            f"auto(AutoConfig(DataConfig(path={str(tiny_csv)!r}), {str(tiny_base_dir)!r}, max_drop=0.5, minutes=10, "
            f"max_trials=2, storage={storage!r}, train={TRAIN!r}, eval={EVAL!r}), sys.argv[1], log=lambda m: None)")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"w{i}")], stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stderr.read()[-2000:]
    import optuna

    study = optuna.load_study(study_name="slimtune-auto", storage=storage)
    rows = [t.user_attrs["row"] for t in study.trials if "row" in t.user_attrs]
    workers = {r["worker"].rsplit("/", 1)[-1] for r in rows}
    assert workers == {"w0", "w1"}
    assert len(rows) == 4 and len({r["candidate"] for r in rows}) == 4
    for i in range(2):
        assert json.loads((tmp_path / f"w{i}/report.json").read_text())["chosen"]


def _open_storage_at(url: str, start: float, results) -> None:
    import time

    from slimtune.auto.study import _storage

    while time.time() < start:  # every worker opens the new database at the same moment
        pass
    try:
        _storage(AutoConfig(DataConfig(name="rotten_tomatoes"), storage=url), None)
        results.put("ok")
    except SlimtuneError as e:
        results.put(str(e))


def test_workers_opening_a_new_study_database_together(tmp_path):
    """Four workers opening one new SQLite study database at once race to create its tables; each
    must open it. Without the retry in auto.study._storage 8 of 10 such rounds failed ("table studies
    already exists", measured 2026-11-25)."""
    import multiprocessing
    import time

    import optuna  # noqa: F401  (imported before forking: the workers start at once)

    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'{round_}.db'}"
        results, start = ctx.Queue(), time.time() + 0.5
        workers = [ctx.Process(target=_open_storage_at, args=(url, start, results)) for _ in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(300)  # bounds for a busy machine, not waits: each ends when the worker does
        assert [results.get(timeout=60) for _ in workers] == ["ok"] * 4


def test_slim_student_grows_from_the_shared_student():
    """truncate-3-ffn50 (the main job's pipeline) reuses the truncate-3 student stage, then halves the FFN."""
    from slimtune.auto import architectures, chain, seeds

    assert architectures(6) == ["reference", "truncate-4", "truncate-3", "truncate-2", "truncate-3-ffn50", "prune-light", "prune"]
    slim = chain({"arch": "truncate-3-ffn50", "vocab": "trim", "runtime": "onnx-int8-int4emb"}, 6)
    plain = chain({"arch": "truncate-3", "vocab": "trim", "runtime": "onnx-int8-int4emb"}, 6)
    assert [s["name"] for s in slim] == ["truncate-3", "truncate-3-ffn50", "truncate-3-ffn50-trim",
                                         "truncate-3-ffn50-trim-onnx-int8-int4emb"]
    assert slim[0] == plain[0] and slim[0]["layers"] == [0, 2, 4]  # one student, trained once
    assert slim[1]["method"] == "prune_structured" and slim[1]["ffn"] == 0.5 and slim[1]["heads"] == 0.0
    assert slim[1]["from"] == "truncate-3" and slim[2]["from"] == "truncate-3-ffn50"
    assert {"arch": "truncate-3-ffn50", "vocab": "trim", "runtime": "onnx-int8-int4emb"} in seeds(6)
    assert architectures(2) == ["reference", "truncate-1", "truncate-1-ffn50"]  # no pruning of a 2-layer teacher
    # its last stage is the main job's compact stage, option for option
    from pathlib import Path

    default = Path(__file__).resolve().parents[1] / "recipes" / "default.yaml"
    shipped = {s["name"]: s for s in yaml.safe_load(default.read_text())["stages"]}
    assert {k: v for k, v in slim[3].items() if k not in ("name", "from")} == \
        {k: v for k, v in shipped["compact"].items() if k not in ("name", "from")}


def test_a_study_over_other_candidates_is_one_line(searched, tiny_base_dir, tiny_csv, tmp_path):
    """A study.db from a slimtune with another candidate list: one line naming the file, not optuna's error."""
    import shutil
    import sqlite3

    out = tmp_path / "old"
    shutil.copytree(searched[0], out)
    with sqlite3.connect(out / "study.db") as db:  # as another version wrote it: one more architecture
        rows = db.execute("SELECT param_id, distribution_json FROM trial_params WHERE param_name = 'arch'").fetchall()
        assert rows
        for pid, dist in rows:
            d = json.loads(dist)
            d["attributes"]["choices"].append("truncate-9")  # appended: the stored indices stay valid
            db.execute("UPDATE trial_params SET distribution_json = ? WHERE param_id = ?", (json.dumps(d), pid))
    with pytest.raises(SlimtuneError, match=rf"^{out / 'study.db'}: this study searched other candidates .*start a new --out$"):
        auto(config(tiny_csv, tiny_base_dir, max_trials=1), out, log=lambda m: None)
