"""recipes/chinese.yaml's choices come from the data, not from chinese_reviews (issue 27).

A Chinese data set of another domain, as the issue says the recipe will meet: news items in four
topics, unbalanced 8:4:2:1, texts of ~400-800 characters (chinese_reviews' median is 46), saved in
GB18030 with a character GBK lacks (𠮷, four bytes), no spaces, full-width punctuation, a few
duplicate rows and one text under two labels. On it: the file loads with `--encoding gb18030`,
the profile suggests a max_length from these texts (longer than the 128 a run evaluates at by
default), `class_weight: auto` weighs the classes as `balanced`, the floor reads characters, and the
Chinese labels reach report.md / report.json as written. The slow test runs the recipe itself.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from slimtune.data import DataConfig, load_splits

SPORTS, ENT, TECH, FIN = "体育", "娱乐", "科技", "财经"
COUNTS = {SPORTS: 96, FIN: 48, TECH: 24, ENT: 12}  # 8:4:2:1
LABELS = [SPORTS, ENT, TECH, FIN]  # sorted as every dataset's labels (by code point)
CUES = {
    SPORTS: ["球队", "进球", "冠军", "教练", "联赛", "主场", "球员", "半决赛"],
    FIN: ["股市", "利率", "央行", "营收", "债券", "投资者", "汇率", "财报"],
    TECH: ["芯片", "算法", "手机", "人工智能", "软件", "处理器", "数据中心", "开源"],
    ENT: ["电影", "导演", "演唱会", "票房", "综艺", "歌手", "剧集", "首映"],
}
FILLER = ["据记者了解", "相关负责人介绍说", "业内人士认为", "与去年同期相比", "值得注意的是", "截至目前",
          "在接受采访时", "消息传出后", "多位专家表示", "从现场情况看", "在𠮷野家门口", "本周三上午"]
DUPLICATES, CONFLICTING = 6, 3  # rows added to the unique ones


def news_rows(seed: int = 0) -> list[tuple[str, str]]:
    """Unique texts of 30-60 clauses; a clause glues a filler phrase to a topic cue or another filler,
    so a space-less "word" (a whole clause) rarely repeats: only characters carry the topic."""
    rng = random.Random(seed)
    rows = []
    for label, n in COUNTS.items():
        for i in range(n):
            clauses = []
            for _ in range(rng.randint(30, 60)):
                a, b = rng.choice(FILLER), rng.choice(CUES[label] + FILLER)
                clauses.append(a + ("，" if rng.random() < 0.3 else "") + b + rng.choice(["的情况", "方面", "一事", ""]))
            rows.append(("，".join(clauses) + f"。（第{len(rows)}号）", label))
    rng.shuffle(rows)
    return rows


def news_file(path, rows) -> None:
    extra = [rows[i] for i in range(DUPLICATES)] + [("双方在𠮷野家门口发生争执。", SPORTS), ("双方在𠮷野家门口发生争执。", ENT),
                                                     ("双方在𠮷野家门口发生争执。", SPORTS)]
    body = "新闻,类别\n" + "".join(f"{t},{label}\n" for t, label in rows + extra)
    path.write_bytes(body.encode("gb18030"))


def data_config(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), text_column="新闻", label_column="类别", encoding="gb18030", **kw)


@pytest.fixture(scope="module")
def news(tmp_path_factory):
    """(CSV in GB18030, its unique rows, a tiny 2-layer BERT folder over a Unigram tokenizer trained
    on the texts, with room for 512 positions)."""
    import torch
    from test_vocab_unigram import build_tokenizer
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("news")
    rows = news_rows()
    news_file(root / "新闻.csv", rows)
    build_tokenizer(root / "model", [t for t, _ in rows])
    cfg = root / "model" / "tokenizer_config.json"  # the builder says 128; these texts need more
    cfg.write_text(json.dumps(json.loads(cfg.read_text()) | {"model_max_length": 512}))
    tok = AutoTokenizer.from_pretrained(root / "model")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=512, pad_token_id=tok.pad_token_id)).save_pretrained(root / "model")
    return root / "新闻.csv", rows, root / "model"


def test_gb18030_file_loads_with_its_encoding_and_counts_what_it_removed(news):
    from slimtune.errors import SlimtuneError

    path, rows, _ = news
    splits = load_splits(data_config(path))
    assert splits.label_names == LABELS
    got = dict(zip(splits.train.texts + splits.val.texts + splits.test.texts,
                   splits.train.labels + splits.val.labels + splits.test.labels))
    assert {t: LABELS[y] for t, y in got.items()} == dict(rows)  # every text back as written, 𠮷 included
    assert sum("𠮷" in t for t in got) > 100
    s = splits.stats
    assert (s["rows_read"], s["rows_duplicate"], s["rows_conflicting"], s["rows_unique"]) == (189, 6, 3, 180)
    assert (s["train"], s["val"], s["test"]) == (129, 15, 36)
    with pytest.raises(SlimtuneError, match=r"or --encoding on the command line \(e.g. latin-1, or gb18030 for Chinese"):
        load_splits(DataConfig(path=str(path), text_column="新闻", label_column="类别"))


def test_profile_suggests_a_longer_max_length_from_the_data(news):
    from slimtune.profile import profile_data
    from slimtune.recipe import load
    from slimtune.tasks import get
    from slimtune.tasks.names import CLASSIFY, DEFAULT_LENGTH
    from slimtune.text import eval_length, fill_max_length

    path, _, model = news
    splits = load_splits(data_config(path))
    logs = []
    p = profile_data(splits, str(model), logs.append)
    train = p["splits"]["train"]
    chars = np.array([len(t) for t in splits.train.texts])
    assert train["chars"]["p95"] == int(np.ceil(np.percentile(chars, 95))) and train["chars"]["p50"] > 150
    # from the data: longer than a run's default 128 and than chinese_reviews' 136, under the model's 512
    assert p["suggested_max_length"] == train["tokens"]["p95"] > 136 > DEFAULT_LENGTH[CLASSIFY]
    assert p["unk_share"] == 0.0 and "6 duplicates of a kept text, 3 rows whose text is under two labels" in logs[0]
    recipe = load("recipes/chinese.yaml")
    stages = [fill_max_length(s, p, logs.append) for s in recipe.stages]
    lengths = [s.config.max_length for s in stages if hasattr(s.config, "max_length")]
    assert lengths == [p["suggested_max_length"]] * 3  # finetune, student, slim
    assert eval_length(get(CLASSIFY), str(model), recipe.eval.max_length, stages) == p["suggested_max_length"]  # evaluated as trained


def test_class_weight_auto_is_balanced_on_unbalanced_labels(news):
    from slimtune.recipe import load
    from slimtune.train.config import class_weights

    splits = load_splits(data_config(news[0]))
    counts = np.bincount(splits.train.labels, minlength=4).tolist()
    assert counts == [69, 9, 17, 34]  # 体育, 娱乐, 科技, 财经: stratified 129 of 8:4:2:1
    want = [129 / (4 * c) for c in counts]
    modes = {s.config.class_weight for s in load("recipes/chinese.yaml").stages if hasattr(s.config, "class_weight")}
    assert modes == {"auto"}
    assert class_weights("auto", splits.train.labels, 4) == pytest.approx(want) == class_weights("balanced", splits.train.labels, 4)
    assert class_weights("auto", [0] * 9031 + [1] * 8332, 2) is None  # chinese_reviews' 1.08x: unweighted


def test_floor_reads_characters(news):
    from slimtune.measure.floor import fit_floor

    splits = load_splits(data_config(news[0]))
    _, _, info = fit_floor(splits)
    assert info["analyzer"] == "char"
    assert info["why"].startswith("character 1-3-grams: validation accuracy")


@pytest.fixture(scope="module")
def news_run(news, tmp_path_factory):
    from slimtune import runner
    from slimtune.recipe import parse

    path, _, model = news
    raw = {"data": {"path": str(path), "text_column": "新闻", "label_column": "类别", "encoding": "gb18030"},
           "model": str(model), "eval": {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "isolate": False},
           "stages": [{"name": "ft", "method": "full", "max_steps": 1, "class_weight": "auto"}]}
    out = tmp_path_factory.mktemp("run")
    logs = []
    report = runner.run(parse(raw), out, log=logs.append)
    return out, report, logs


def test_chinese_labels_reach_the_report_as_written(news_run):
    out, report, logs = news_run
    on_disk = (out / "report.json").read_text(encoding="utf-8")
    assert "\\u" not in on_disk and json.loads(on_disk)["data"]["labels"] == LABELS
    assert '"labels": [\n      "体育",\n      "娱乐",\n      "科技",\n      "财经"\n    ]' in on_disk
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Labels: 体育, 娱乐, 科技, 财经." in md
    assert "| train | 129 |" in md and "体育 69, 娱乐 9, 科技 17, 财经 34 |" in md
    weights = [line for line in logs if line.startswith("class weights (auto): ")]
    assert weights == ["class weights (auto): 体育 0.467, 娱乐 3.583, 科技 1.897, 财经 0.949"]


def test_the_run_says_where_its_time_went(news_run):
    out, report, logs = news_run
    m = report["stages"][0]["metrics"]
    assert m["eval_seconds"] > 0 and m["export_seconds"] > 0 and "teacher_seconds" not in m  # no teacher here
    assert report["floor"]["metrics"]["eval_seconds"] > 0
    estimate = [i for i, line in enumerate(logs) if line.startswith("time not bounded by max_minutes (an estimate): ~")]
    assert len(estimate) == 1 and estimate[0] < logs.index("stage ft (full)")  # before training
    assert "129 training and 36 test texts" in logs[estimate[0]]
    assert logs[estimate[0]].endswith("stages ft have no max_minutes: their training is not counted")
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| row | train | teacher | eval | export | other | total |" in md
    assert "| ft | " in md.split("Time in seconds")[1] and "| tfidf-floor | – | – | " in md


@pytest.mark.slow
def test_chinese_recipe_on_another_domain(news, tmp_path):
    """recipes/chinese.yaml as shipped, but the data (this file, GB18030), a tiny 12-layer model over a
    Unigram tokenizer, and steps cut to two: every length, weight and analyzer comes from the data."""
    import torch
    import yaml
    from transformers import AutoTokenizer, BertConfig, BertModel

    from slimtune import runner
    from slimtune.recipe import parse

    path, _, small = news
    model = tmp_path / "model12"
    tok = AutoTokenizer.from_pretrained(small)
    tok.save_pretrained(model)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=512, pad_token_id=tok.pad_token_id)).save_pretrained(model)
    raw = yaml.safe_load(open("recipes/chinese.yaml", encoding="utf-8"))
    raw["model"] = str(model)
    raw["data"] = {"path": str(path), "text_column": "新闻", "label_column": "类别", "encoding": "gb18030"}
    for st in raw["stages"]:
        if "max_minutes" in st:
            st |= {"max_steps": 2, "epochs": 1}
    raw["eval"] |= {"latency_runs": 3, "warmup": 1, "bench_texts": 4, "isolate": False}
    logs = []
    report = runner.run(parse(raw, "chinese.yaml"), tmp_path / "run", log=logs.append)
    rows = {s["name"]: s["metrics"] for s in report["stages"]}
    assert list(rows) == ["trim", "finetune", "student", "slim", "compact"]
    n = report["profile"]["suggested_max_length"]
    assert n > 136
    assert sum(line.startswith(f"stage {s}: max_length not set; using {n} ") for line in logs for s in ("finetune", "student", "slim")) == 3
    want = [129 / (4 * c) for c in (69, 9, 17, 34)]
    assert rows["finetune"]["class_weights"] == rows["student"]["class_weights"] == pytest.approx(want)
    assert report["floor"]["metrics"]["analyzer"] == "char"
    assert rows["student"]["teacher_seconds"] > 0 and rows["slim"]["teacher_seconds"] > 0  # distillation, recovery
    md = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "Labels: 体育, 娱乐, 科技, 财经." in md and "\\u" not in (tmp_path / "run" / "report.json").read_text(encoding="utf-8")
    assert "| student | " in md.split("Time in seconds")[1]
    assert any(line.startswith("time not bounded by max_minutes (an estimate): ~") for line in logs)
