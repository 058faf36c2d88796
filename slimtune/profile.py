"""What the data looks like to the model, before anything trains.

`profile_splits` tokenizes every split with the model's own tokenizer and records:

- lengths per split in characters and in tokens (special tokens included: what the model sees):
  p50 / p90 / p95 / p99 / max, and the share of texts a given `max_length` would cut;
- the share of unknown tokens (the tokenizer's unk id): above `UNK_WARN` the vocabulary does not
  cover the data's language (Chinese reviews on MiniLM's English vocabulary are 62% `[UNK]` and
  train to chance accuracy). The warning names a packaged model that reads the text
  (`multilingual-e5-small`, its own unknown share measured on a sample of the data with its
  tokenizer alone, which loads in about a second: the model is never converted here), and it is
  the first line a profile, a run or `auto` writes, before anything trains;
- class balance per split, and the rows removed before splitting, each for its reason (`removed_line`):
  lacking a text or label (`data.drop_missing`), a text found under two labels (every copy), a
  duplicate of a kept text.

A stage that leaves `max_length` unset gets `suggested_max_length`: the training texts' 95th
percentile, capped at the model's limit (text.py: `suggested_length`, `fill_max_length`, and the
rest of tokenization and lengths).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import SlimtuneError
from .text import load_tokenizer, suggested_length, token_lengths, token_limit

UNK_WARN = 0.05  # unknown-token share above which the report warns in plain words
READER = "multilingual-e5-small"  # the packaged model whose vocabulary covers ~100 languages
READER_SAMPLE = 500  # texts on which the reader's own unknown share is measured
PERCENTILES = (50, 90, 95, 99)


def length_percentiles(lengths) -> dict:
    """{p50, p90, p95, p99 (rounded up), max} of token lengths: every profile's length columns."""
    a = np.asarray(lengths)
    return {f"p{p}": int(math.ceil(np.percentile(a, p))) for p in PERCENTILES} | {"max": int(a.max())}


def unknown_share(tokenizer, texts: list[str]) -> float:
    """The share of `texts`' tokens (special tokens left out) that `tokenizer` cannot read: its unk id."""
    unk_id = tokenizer.unk_token_id
    if unk_id is None or not texts:
        return 0.0
    rows = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    total = sum(len(r) for r in rows)
    return sum(r.count(unk_id) for r in rows) / total if total else 0.0


def reader_share(texts: list[str]) -> float | None:
    """`READER`'s unknown share on `texts`, from its tokenizer alone (the converted folder when it
    is cached, else the packaged tokenizer.json: nothing is converted); None when it is not installed."""
    from tokenizers import Tokenizer

    from .model.assets import locate
    from .model.convert_e5 import E5_TOKENIZER
    from .model.folders import cache_dir

    cached = cache_dir() / READER / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(cached if cached.is_file() else locate(E5_TOKENIZER)))
    except (SlimtuneError, OSError, ValueError):
        return None
    unk_id = tok.token_to_id("<unk>")
    rows = [e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]
    total = sum(len(r) for r in rows)
    return sum(r.count(unk_id) for r in rows) / total if total else 0.0


def suggest_reader(model: str, texts: list[str], unk_share: float) -> dict | None:
    """When `model` cannot read the data (unknown share > UNK_WARN) and `READER` can (its own share
    on a sample <= UNK_WARN): {"model": READER, "unk_share": its share}. Decided by the data's tokens,
    never by a language name."""
    if unk_share <= UNK_WARN or str(model) == READER:
        return None
    sample = list(texts)[:: max(1, len(texts) // READER_SAMPLE)][:READER_SAMPLE]
    share = reader_share(sample)
    if share is None or share > UNK_WARN:
        return None
    return {"model": READER, "unk_share": share}


def unknown_line(p: dict, model: str) -> str:
    """The one line a profile, a run or `auto` says first when the model cannot read the data."""
    line = (f"{p['unk_share']:.0%} of the tokens are unknown ([UNK]) to {model}: its vocabulary does not cover "
            "your data's language; expect poor accuracy")
    reader = p.get("reader")
    if reader:
        return line + (f"; {reader['model']} reads this text ({reader['unk_share']:.2%} unknown on a sample): "
                       f"use --model {reader['model']} (model: {reader['model']} in a recipe)")
    return line + " (use a model whose vocabulary fits the data)"


def profile_splits(splits, tokenizer, limit: int = 512, max_length: int | None = None) -> dict:
    """Lengths (characters and tokens), unknown-token share, class balance and removed rows of
    `splits` under `tokenizer`."""
    per_split, unk, total, train_lengths = {}, 0, 0, []
    unk_id = tokenizer.unk_token_id
    special = set(tokenizer.all_special_ids) - {unk_id}
    for name in ("train", "val", "test"):
        data = getattr(splits, name)
        if not len(data):
            continue
        enc = tokenizer(list(data.texts), truncation=False, verbose=False)["input_ids"]
        lengths = np.array([len(r) for r in enc])
        if name == "train":
            train_lengths = lengths
        if unk_id is not None:
            for row in enc:
                body = [i for i in row if i not in special]
                unk += sum(1 for i in body if i == unk_id)
                total += len(body)
        counts = np.bincount(np.array(data.labels), minlength=len(splits.label_names))
        per_split[name] = {
            "n": len(data),
            "chars": length_percentiles([len(t) for t in data.texts]),
            "tokens": length_percentiles(lengths),
            "classes": {label: int(c) for label, c in zip(splits.label_names, counts)},
        }
    suggested = suggested_length(train_lengths, limit) or max(limit, 8)  # no training texts: the model's limit
    stats = splits.stats
    out = {
        "splits": per_split,
        "unk_share": unk / total if total else 0.0,
        "unk_tokens": unk,
        "tokens": total,
        "model_max_length": limit,
        "suggested_max_length": int(suggested),
        "rows_read": stats.get("rows_read"),
        "rows_unique": stats.get("rows_unique"),
        "rows_removed": (stats["rows_read"] - stats["rows_unique"]) if "rows_read" in stats else None,
        "rows_dropped": stats.get("rows_dropped"),
        "rows_duplicate": stats.get("rows_duplicate"),
        "rows_conflicting": stats.get("rows_conflicting"),
    }
    if max_length is not None:
        out["cut_at"] = max_length
        out["cut_share"] = {name: float((np.array(token_lengths(tokenizer, getattr(splits, name).texts)) > max_length).mean())
                            for name in per_split}
    out["warnings"] = warnings(out)
    return out


def warnings(profile: dict) -> list[str]:
    """Plain-words warnings about the data (shown in the log and in report.md)."""
    out = []
    if profile["unk_share"] > UNK_WARN:
        out.append(unknown_line(profile, profile.get("model") or "this model"))
    train = profile["splits"].get("train")
    if train:
        counts = list(train["classes"].values())
        if min(counts) * 10 < max(counts):
            out.append(f"classes are imbalanced in train ({', '.join(f'{k} {v}' for k, v in train['classes'].items())}): "
                       "read macro F1, not only accuracy")
    return out


def profile_data(splits, model: str, log=print) -> dict:
    """Profile `splits` with `model`'s own tokenizer; logs a short summary and every warning."""
    tokenizer = load_tokenizer(model)
    p = profile_splits(splits, tokenizer, token_limit(model, tokenizer))
    p["model"] = str(model)
    if p["unk_share"] > UNK_WARN:
        p["reader"] = suggest_reader(model, splits.train.texts, p["unk_share"])
        p["warnings"] = warnings(p)
    for w in p["warnings"][:1] if p["unk_share"] > UNK_WARN else ():  # first: before anything else is said
        log(f"warning: {w}")
    log(summary(p))
    for w in p["warnings"][1:] if p["unk_share"] > UNK_WARN else p["warnings"]:
        log(f"warning: {w}")
    return p


def profile(data, model: str = "minilm-l6", log=print) -> dict:
    """`slimtune profile`: load and split `data` (a DataConfig) as a run would, then profile it."""
    from .data import load_splits

    splits = load_splits(data)
    return profile_data(splits, model, log) | {"source": splits.source, "labels": splits.label_names}


def summary(p: dict) -> str:
    parts = []
    for name, s in p["splits"].items():
        t = s["tokens"]
        c = s.get("chars")
        chars = f"characters p50 {c['p50']}, p95 {c['p95']}; " if c else ""
        parts.append(f"{name} {s['n']} ({chars}tokens p50 {t['p50']}, p95 {t['p95']}, max {t['max']})")
    removed = f"; {removed_line(p)}" if p.get("rows_removed") else ""
    return f"data profile: {'; '.join(parts)}; [UNK] {p['unk_share']:.2%}{removed}"


def removed_line(p: dict) -> str:
    """'17760 of 35123 rows removed before splitting (17535 duplicates of a kept text, 225 rows whose
    text is under two labels), 17363 unique texts': every removed row under its reason."""
    read, removed = p.get("rows_read"), p.get("rows_removed") or 0
    if read is None:
        return f"{removed} rows removed before splitting"
    dropped = p.get("rows_dropped") or 0
    dup, conf = p.get("rows_duplicate"), p.get("rows_conflicting")
    if dup is None:  # a profile written before the reasons were counted
        return f"{removed} of {read} rows removed before splitting ({dropped} without a text or label)"
    # rows_dropped also counts a separate test file's rows; the parts below are the main file's
    missing = removed - dup - (conf or 0)
    reasons = [f"{missing} without a text or label" if missing else "",
               f"{dup} duplicate{'s' * (dup != 1)} of a kept text" if dup else "",
               f"{conf} row{'s' * (conf != 1)} whose text is under two labels" if conf else ""]
    why = ", ".join(r for r in reasons if r)
    return (f"{removed} of {read} rows removed before splitting{f' ({why})' if why else ''}, "
            f"{p.get('rows_unique')} unique texts")


def markdown(p: dict | None) -> list[str]:
    """report.md lines for the data profile."""
    if not p:
        return []
    lines = ["", "Data profile (the model's own tokenizer; tokens include special tokens):", "",
             "| split | examples | characters p50 | p95 | max | tokens p50 | p90 | p95 | p99 | max | classes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in p["splits"].items():
        t, c = s["tokens"], s.get("chars") or {"p50": "", "p95": "", "max": ""}  # chars: profiles since issue 27
        classes = ", ".join(f"{k} {v}" for k, v in s["classes"].items())
        lines.append(f"| {name} | {s['n']} | {c['p50']} | {c['p95']} | {c['max']} | {t['p50']} | {t['p90']} | {t['p95']} | "
                     f"{t['p99']} | {t['max']} | {classes} |")
    lines += ["", f"unknown-token ([UNK]) share {p['unk_share']:.2%} ({p['unk_tokens']:,} of {p['tokens']:,} tokens); "
                  f"{removed_line(p)}; "
                  f"suggested max_length {p['suggested_max_length']} (train p95, model limit {p['model_max_length']})."]
    for w in p["warnings"]:
        lines.append(f"\n**Warning: {w}.**")
    return lines
