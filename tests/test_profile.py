"""The data profile (token lengths, [UNK] share, classes), max_length from the data, head+tail cuts."""

from __future__ import annotations

import pytest

from slimtune.data import Splits, TextSet
from slimtune.errors import SlimtuneError
from slimtune.profile import profile_splits
from slimtune.text import encode, encode_padded, head_tail_ids

CHINESE = ["这部电影很好看，演员都很棒", "这个产品质量太差了，非常失望", "故事情节感人，值得一看", "服务态度很差，不会再来"]


def splits_of(train, val=(), test=(), names=("neg", "pos")):
    def ts(rows):
        return TextSet([t for t, _ in rows], [l for _, l in rows])

    return Splits(ts(train), ts(val), ts(test), list(names), "test", {"rows_read": len(train) + 3, "rows_unique": len(train)})


def test_unk_share_warns_on_chinese_text(tokenizer):
    p = profile_splits(splits_of([(t, i % 2) for i, t in enumerate(CHINESE)]), tokenizer)
    assert p["unk_share"] > 0.5
    assert any("vocabulary does not cover your data's language" in w for w in p["warnings"])
    english = profile_splits(splits_of([("a gorgeous, witty movie", 1), ("a dull and tedious film", 0)]), tokenizer)
    assert english["unk_share"] == 0.0 and not english["warnings"]


def test_length_percentiles_classes_and_suggested_length(tokenizer):
    # texts of 1..100 words "a" (one token each) -> 3..102 tokens with [CLS] and [SEP]
    train = [(" ".join(["a"] * n), n % 2) for n in range(1, 101)]
    p = profile_splits(splits_of(train, test=[("a a", 0)]), tokenizer, limit=64)
    t = p["splits"]["train"]["tokens"]
    assert (t["p50"], t["p95"], t["max"]) == (53, 98, 102)
    assert p["splits"]["train"]["classes"] == {"neg": 50, "pos": 50}
    assert p["splits"]["test"]["n"] == 1 and p["rows_removed"] == 3
    assert p["suggested_max_length"] == 64  # p95 98 capped at the model's limit


def test_head_tail_keeps_start_and_end(tokenizer):
    text = "one two three four five six seven eight nine ten eleven twelve"
    enc = encode(tokenizer, [text, "short one"], 10, "head_tail")
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][0]) == [
        "[CLS]", "one", "two", "seven", "eight", "nine", "ten", "eleven", "twelve", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][1]) == ["[CLS]", "short", "one", "[SEP]"]
    head = encode(tokenizer, [text], 10, "head")
    assert tokenizer.convert_ids_to_tokens(head["input_ids"][0])[-2:] == ["eight", "[SEP]"]
    padded = encode_padded(tokenizer, [text, "short one"], 10, "head_tail")
    assert padded["input_ids"].shape == (2, 10) and padded["attention_mask"][1].tolist() == [1] * 4 + [0] * 6
    assert head_tail_ids([1, 2, 3], 10, 2) == [1, 2, 3]
    with pytest.raises(SlimtuneError, match="truncation must be one of head, head_tail"):
        encode(tokenizer, [text], 10, "tail")


def test_unset_max_length_comes_from_the_data_and_head_tail_reaches_the_predictor(tiny_base_dir, tiny_csv, tmp_path):
    from slimtune import runner
    from slimtune.artifacts import load_predictor
    from slimtune.recipe import parse

    raw = {"data": {"path": str(tiny_csv)}, "model": str(tiny_base_dir),
           "stages": [{"name": "ft", "method": "head_only", "max_steps": 1, "truncation": "head_tail"}],
           "eval": {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "isolate": False, "floor": False}}
    logs = []
    report = runner.run(parse(raw), tmp_path, log=logs.append)
    n = report["profile"]["suggested_max_length"]
    assert 9 <= n <= 14  # 7 words + a number + [CLS]/[SEP]
    assert f"stage ft: max_length not set; using {n} (95th percentile of training texts' tokens, capped at the model's 128)" in logs
    assert "floor" not in report
    pred = load_predictor(tmp_path / "stages/01-ft")
    assert pred.truncation == "head_tail"
    assert "Data profile" in (tmp_path / "report.md").read_text()


def test_removed_rows_are_counted_by_reason_on_a_hand_made_csv(tokenizer, tmp_path):
    from slimtune.data import DataConfig, load_splits
    from slimtune.profile import markdown, summary

    rows = [f"neg text {i},neg" for i in range(10)] + [f"pos text {i},pos" for i in range(10)]
    rows += ["neg text 0,neg"] * 3 + ["pos text 1,pos"]  # 4 duplicates of a kept text
    rows += ["same words,neg", "same words,neg", "same words,pos", "other words,pos", "other words,neg"]  # 5 conflicting
    rows += ["lonely,"]  # no label: dropped
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    splits = load_splits(DataConfig(path=str(path), drop_missing=True))
    p = profile_splits(splits, tokenizer)
    assert (p["rows_read"], p["rows_removed"], p["rows_dropped"], p["rows_duplicate"], p["rows_conflicting"],
            p["rows_unique"]) == (30, 10, 1, 4, 5, 20)
    line = ("10 of 30 rows removed before splitting (1 without a text or label, 4 duplicates of a kept text, "
            "5 rows whose text is under two labels), 20 unique texts")
    assert summary(p).endswith(line) and f"{line};" in "\n".join(markdown(p))
    texts = splits.train.texts + splits.val.texts + splits.test.texts
    assert "same words" not in texts and "other words" not in texts and len(texts) == 20
