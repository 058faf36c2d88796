"""Rows without a text or label, and paths that are not what they claim (issue 25, items 6 and 9)."""

from __future__ import annotations

import json
import re

import pytest

from slimtune.data import COLUMNS_HINT, DROP_HINT, DataConfig, load_splits, read_table
from slimtune.errors import SlimtuneError, check_file
from test_cli import assert_one_line_error


def rows(n: int = 40) -> str:
    """n CSV data rows of two classes (enough for a stratified split)."""
    return "".join(f"text number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(n))


def load_error(path, **kw) -> str:
    with pytest.raises(SlimtuneError) as err:
        load_splits(DataConfig(path=str(path), **kw))
    assert "\n" not in str(err.value)
    return str(err.value)


# -- a missing label or text is an error naming its line -------------------------------------------

def test_nan_label_names_the_line_as_an_editor_numbers_it(tmp_path):
    # a quoted cell over two lines and a blank line: the bad row is row 42 of the frame but line 45 of the file
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",pos\n\n' + rows() + "a NaN label,NaN\n")
    assert load_error(path) == (
        f"{path} line 45: 'label' is NaN (a missing value); 1 row has no 'text' or 'label' (line 45); "
        f"fill it in, or drop it ({DROP_HINT})")


@pytest.mark.parametrize("cell, said", [("", "is empty"), ("   ", "is empty"), ("nan", "is nan (a missing value)"),
                                        ("NaN", "is NaN (a missing value)")])
def test_each_missing_spelling_of_a_label_is_an_error(tmp_path, cell, said):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + rows() + f"odd one,{cell}\n")
    assert load_error(path).startswith(f"{path} line 42: 'label' {said}; 1 row has no")


def test_every_bad_row_is_counted_and_the_first_five_listed(tmp_path):
    path = tmp_path / "d.tsv"
    bad = "".join(f"missing {i}\t\n" for i in range(6))
    path.write_text("review\tstars\n" + rows().replace(",", "\t") + "\tpos\n" + bad)
    msg = load_error(path, text_column="review", label_column="stars")
    assert msg.startswith(f"{path} line 42: 'review' is empty; 7 rows have no 'review' or 'stars' "
                          "(lines 42, 43, 44, 45, 46, ...); fill them in")


def test_empty_text_is_an_error_too(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": f"t {i}", "label": i % 2}) for i in range(40)]
    lines.insert(7, json.dumps({"text": " ", "label": 1}))
    lines.insert(9, json.dumps({"label": 0}))  # no text key at all
    path.write_text("\n".join(lines) + "\n")
    assert load_error(path).startswith(f"{path} line 8: 'text' is empty; 2 rows have no 'text' or 'label' (lines 8, 10)")


def test_a_separate_test_file_is_checked_the_same_way(tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\n" + rows())
    test.write_text("text,label\nfine,pos\nnot fine,\n")
    assert load_error(train, test_path=str(test)).startswith(f"{test} line 3: 'label' is empty")
    s = load_splits(DataConfig(path=str(train), test_path=str(test), drop_missing=True))
    assert s.stats["rows_dropped"] == 1 and s.test.texts == ["fine"]


# -- drop_missing drops and counts; class names that look like "missing" survive -----------------------

def test_drop_missing_drops_counts_and_logs(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + rows() + "x,NaN\ny,\n,pos\n")
    s = load_splits(DataConfig(path=str(path), drop_missing=True))
    assert s.stats["rows_read"] == 43 and s.stats["rows_dropped"] == 3 and s.stats["rows_unique"] == 40
    assert s.label_names == ["neg", "pos"]  # no class named nan
    assert f"data {path}: dropped 3 rows without a text or label (drop_missing)" in capsys.readouterr().err


def test_class_names_none_na_null_are_kept(tmp_path):
    path = tmp_path / "d.csv"
    names = ["None", "NA", "null", "N/A"]
    path.write_text("text,label\n" + "".join(f"text {i},{names[i % 4]}\n" for i in range(40)))
    s = load_splits(DataConfig(path=str(path)))
    assert s.label_names == sorted(names) and s.stats["rows_dropped"] == 0
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"t {i}", "label": names[i % 4]}) + "\n" for i in range(40)))
    assert load_splits(DataConfig(path=str(jsonl))).label_names == sorted(names)


def test_a_jsonl_text_holding_a_unicode_line_separator_is_one_row(tmp_path):
    """str.splitlines() cut JSON lines at U+2028 / U+0085, which json.dumps(ensure_ascii=False) leaves unescaped."""
    path = tmp_path / "d.jsonl"
    texts = [f"first\u2028second {i}" if i == 3 else f"caf\u00e9\u0085 {i}" for i in range(10)]
    path.write_text("".join(json.dumps({"text": t, "label": "a"}, ensure_ascii=False) + "\n" for t in texts))
    assert read_table(path, "text", "label")["text"].tolist() == texts


def test_recipes_take_drop_missing():
    from slimtune.recipe import parse

    r = parse({"data": {"path": "d.csv", "drop_missing": True}, "model": "minilm-l6", "stages": []}, "r.yaml")
    assert r.data.drop_missing is True
    g = parse({"task": "generate", "data": {"path": "qa.jsonl", "drop_missing": True}, "model": "smollm2-135m",
               "stages": []}, "g.yaml")
    assert g.data.drop_missing is True
    with pytest.raises(SlimtuneError, match=r"data.drop_missing: expected bool, got 'yes'"):
        parse({"data": {"path": "d.csv", "drop_missing": "yes"}, "model": "minilm-l6", "stages": []}, "r.yaml")


def test_the_dropped_count_is_in_the_profile_and_report_text():
    from slimtune.profile import markdown, summary

    p = {"splits": {"train": {"n": 4, "tokens": dict(p50=3, p90=4, p95=4, p99=4, max=5), "classes": {"a": 2, "b": 2}}},
         "unk_share": 0.0, "unk_tokens": 0, "tokens": 12, "model_max_length": 512, "suggested_max_length": 8,
         "rows_read": 10, "rows_unique": 4, "rows_removed": 6, "rows_dropped": 2, "rows_duplicate": 3,
         "rows_conflicting": 1, "warnings": []}
    line = ("6 of 10 rows removed before splitting (2 without a text or label, 3 duplicates of a kept text, "
            "1 row whose text is under two labels), 4 unique texts")
    assert summary(p).endswith(f"; {line}")
    assert f"{line};" in "\n".join(markdown(p))


# -- prompt/response pairs -----------------------------------------------------------------------

def test_pairs_without_a_response_name_the_line_or_are_dropped(tmp_path):
    from slimtune.decoder.data import GenDataConfig, load_pairs

    path = tmp_path / "qa.csv"
    path.write_text("question,answer\n" + "".join(f"q {i},a {i}\n" for i in range(10)) + "q x,NaN\n")
    with pytest.raises(SlimtuneError) as err:
        load_pairs(GenDataConfig(path=str(path), prompt_column="question", response_column="answer"))
    assert str(err.value).startswith(f"{path} line 12: 'answer' is NaN (a missing value); 1 row has no 'question' or 'answer'")
    s = load_pairs(GenDataConfig(path=str(path), prompt_column="question", response_column="answer", drop_missing=True))
    assert s.stats["rows_dropped"] == 1 and s.stats["rows_unique"] == 10


def test_packaged_pairs_drop_their_empty_rows_and_say_how_many():
    from slimtune.decoder.data import GenDataConfig, load_pairs

    assert load_pairs(GenDataConfig(name="chatterbot_qa")).stats["rows_dropped"] == 32  # 16 empty prompts, 16 empty responses


def test_a_missing_pair_column_names_the_pair_options(tmp_path):
    from slimtune.decoder.data import GenDataConfig, load_pairs

    path = tmp_path / "qa.csv"
    path.write_text("q,a\nhi,hello\n")
    with pytest.raises(SlimtuneError, match="missing column 'prompt'.*--prompt-column / --response-column"):
        load_pairs(GenDataConfig(path=str(path)))


# -- every option a data message suggests exists on every command that reads data --------------------

def test_commands_reading_data_take_every_option_their_messages_name():
    import typer

    from slimtune.cli import app
    from slimtune.decoder.data import COLUMNS_HINT as PAIR_HINT

    named = set(re.findall(r"--[a-z-]+", DROP_HINT + COLUMNS_HINT)) | {"--encoding"}  # _read_text's advice
    assert named == {"--drop-missing", "--text-column", "--label-column", "--encoding"}
    commands = typer.main.get_command(app).commands
    readers = {name: {o for p in cmd.params for o in p.opts} for name, cmd in commands.items()
               if any(p.name == "data" for p in cmd.params)}
    assert set(readers) == {"eval", "bench", "export", "profile", "auto"}
    for name, opts in readers.items():
        assert named <= opts, (name, named - opts)
    for name in ("eval", "bench", "profile"):  # the ones that also read prompt/response pairs
        assert set(re.findall(r"--[a-z-]+", PAIR_HINT)) <= readers[name], name


# -- a folder or a device is not "not found" --------------------------------------------------------

def test_paths_that_are_the_wrong_kind_say_so(tmp_path):
    from slimtune.model.folders import resolve
    from slimtune.recipe import load

    with pytest.raises(SlimtuneError, match=f"^{re.escape(str(tmp_path))} is a directory, not a recipe$"):
        load(tmp_path)
    with pytest.raises(SlimtuneError, match="^/dev/null is not a regular file \\(a device, pipe or socket\\), not a data file$"):
        check_file("/dev/null", "data file")
    with pytest.raises(SlimtuneError, match="^data file not found: "):
        check_file(tmp_path / "nope.csv", "data file")
    a_file = tmp_path / "model.onnx"
    a_file.write_bytes(b"")
    with pytest.raises(SlimtuneError, match=f"^model {re.escape(str(a_file))} is a file, not a model folder"):
        resolve(a_file)
    pickled = tmp_path / "model.bin"  # a pickle-suffixed file says what is wrong with it first (issue 25, case 9)
    pickled.write_bytes(b"")
    with pytest.raises(SlimtuneError, match=f"^{re.escape(str(pickled))}: pickled weights"):
        resolve(pickled)


def test_cli_nan_label_and_wrong_kind_of_data_path(tmp_path, slimtune_in_process):
    slimtune = slimtune_in_process
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + rows() + "a NaN label,NaN\n")
    assert_one_line_error(slimtune("profile", "--data", path), f"{path} line 42: 'label' is NaN (a missing value)")
    assert_one_line_error(slimtune("profile", "--data", tmp_path), f"{tmp_path} is a directory, not a data file")
    assert_one_line_error(slimtune("profile", "--data", "/dev/null"), "/dev/null is not a regular file")


def test_cli_drop_missing_shows_the_count(tmp_path, slimtune_in_process):
    slimtune = slimtune_in_process
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + rows() + "a NaN label,NaN\n")
    proc = slimtune("profile", "--data", path, "--drop-missing", "--encoding", "utf-8")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dropped 1 row without a text or label" in proc.stderr
    assert "1 of 41 rows removed before splitting (1 without a text or label), 40 unique texts" in proc.stdout
