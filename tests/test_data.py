import json

import pytest

from slimtune.data import DataConfig, load_splits
from slimtune.errors import SlimtuneError
from tests.conftest import synthetic_rows


def write_csv(path, header, rows, sep=","):
    path.write_text(sep.join(header) + "\n" + "".join(sep.join(r) + "\n" for r in rows))
    return path


def test_csv_split_is_stratified_deduplicated_and_deterministic(tmp_path):
    rows = synthetic_rows(200)
    rows += rows[:20]  # exact duplicates must go before splitting
    path = write_csv(tmp_path / "d.csv", ["text", "label"], rows)
    a = load_splits(DataConfig(path=str(path)))
    b = load_splits(DataConfig(path=str(path)))
    assert a.stats == {"rows_read": 220, "rows_dropped": 0, "rows_duplicate": 20, "rows_conflicting": 0,
                       "rows_unique": 200, "train": 144, "val": 16, "test": 40}
    assert a.test.texts == b.test.texts  # seed 42 gives the same split every time
    assert not set(a.test.texts) & set(a.train.texts + a.val.texts)
    assert a.label_names == ["neg", "pos"]
    assert sum(a.test.labels) == 20  # stratified: 20 of 40 test examples are "pos"


def test_tsv_and_jsonl_with_custom_columns(tmp_path):
    rows = synthetic_rows(60)
    tsv = write_csv(tmp_path / "d.tsv", ["review", "stars"], rows, sep="\t")
    s = load_splits(DataConfig(path=str(tsv), text_column="review", label_column="stars"))
    assert len(s.train) + len(s.val) + len(s.test) == 60
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps({"sentence": t, "y": 1 if l == "pos" else 0}) + "\n" for t, l in rows))
    s = load_splits(DataConfig(path=str(jsonl), text_column="sentence", label_column="y"))
    assert s.label_names == ["0", "1"]


def test_numeric_labels_sort_numerically(tmp_path):
    rows = [(f"text {i}", str([2, 10, 1][i % 3])) for i in range(60)]
    s = load_splits(DataConfig(path=str(write_csv(tmp_path / "d.csv", ["text", "label"], rows))))
    assert s.label_names == ["1", "2", "10"]


def test_rotten_tomatoes_packaged():
    s = load_splits(DataConfig(name="rotten_tomatoes"))
    assert s.label_names == ["fresh", "rotten"]
    assert s.stats["rows_read"] == 12808  # fresh + rotten, "plot" rows dropped
    assert s.stats["rows_unique"] == 12752
    assert s.stats["test"] == 2551


def test_max_train_samples_subsamples_train_only(tmp_path):
    path = write_csv(tmp_path / "d.csv", ["text", "label"], synthetic_rows(200))
    s = load_splits(DataConfig(path=str(path), max_train_samples=50))
    assert len(s.train) == 50 and len(s.test) == 40 and set(s.train.labels) == {0, 1}


@pytest.mark.parametrize(
    "setup, match",
    [
        (lambda p: None, "data file not found"),
        (lambda p: p.write_text(""), "no rows|cannot parse"),
        (lambda p: p.write_text("text,label\n"), "no rows"),
        (lambda p: p.write_text("sentence,y\na,1\nb,0\n"), "missing column 'text'; columns present: sentence, y"),
        (lambda p: p.write_text("text,label\n" + "".join(f"t{i},good\n" for i in range(10))), "only one class"),
        (lambda p: p.write_bytes(b"text,label\ncaf\xe9,a\nb,b\n"), r"line 2 \(byte 14\) is not valid utf-8 text; set data.encoding in the recipe or --encoding"),
        (lambda p: p.write_text("text,label\n" + "".join(f"t{i},{'a' if i else 'b'}\n" for i in range(10))), "label 'b' has only 1 example"),
        (lambda p: p.write_text("text,label\nhello,\nworld,a\n"), "d.csv line 2: 'label' is empty; 1 row has no 'text' or 'label' \\(line 2\\)"),
    ],
    ids=["missing", "empty-file", "header-only", "wrong-columns", "single-class", "encoding", "rare-class", "empty-label"],
)
def test_bad_input_gives_one_line_error(tmp_path, setup, match):
    path = tmp_path / "d.csv"
    setup(path)
    with pytest.raises(SlimtuneError, match=match) as err:
        load_splits(DataConfig(path=str(path)))
    assert "\n" not in str(err.value)


def test_unseen_test_label(tmp_path):
    train = write_csv(tmp_path / "train.csv", ["text", "label"], synthetic_rows(40))
    test = write_csv(tmp_path / "test.csv", ["text", "label"], [("new text", "neutral")])
    with pytest.raises(SlimtuneError, match="test.csv: label 'neutral' is not in the training data"):
        load_splits(DataConfig(path=str(train), test_path=str(test)))


def test_config_needs_exactly_one_source():
    with pytest.raises(SlimtuneError, match="exactly one"):
        DataConfig()
    with pytest.raises(SlimtuneError, match="unknown dataset 'imdb'"):
        DataConfig(name="imdb")


def test_missing_cells_dropped_or_reported(tmp_path):
    rows = synthetic_rows(40)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows) + json.dumps({"text": None, "label": "pos"}) + "\n")
    with pytest.raises(SlimtuneError, match="d.jsonl line 41: 'text' is missing"):
        load_splits(DataConfig(path=str(path)))
    assert load_splits(DataConfig(path=str(path), drop_missing=True)).stats["rows_unique"] == 40  # dropped when asked
    path.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in rows) + json.dumps({"text": "x", "label": None}) + "\n")
    with pytest.raises(SlimtuneError, match="d.jsonl line 41: 'label' is missing"):
        load_splits(DataConfig(path=str(path)))
