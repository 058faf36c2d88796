"""Prompt/response pairs as a decoder sees them: `slimtune profile` on generate data, and the data
section of every generate report.

Tokens are counted the way training and perplexity count them (`chat.encode_pair`: the chat
template's prompt, then the response and its end-of-turn marker), so "longer than max_length" here
means exactly the pairs whose responses are cut when scored.
"""

from __future__ import annotations

from ..errors import SlimtuneError
from ..profile import UNK_WARN, length_percentiles as _pct
from ..tasks.names import GENERATE
from ..text import length_for, load_tokenizer, suggested_length, token_limit
from .chat import encode_pair
from .data import PairSplits

CUT_WARN = 0.05  # share of training pairs cut at max_length worth a warning


def profile_pairs(splits: PairSplits, tokenizer, max_length: int, limit: int | None = None) -> dict:
    """Token lengths of prompts, responses and whole pairs per split, the pairs longer than
    `max_length`, the [UNK] share, and a suggested max_length (train p95 of whole pairs, capped at `limit`)."""
    per, unk, total, base_lengths = {}, 0, 0, {}
    unk_id = getattr(tokenizer, "unk_token_id", None)
    for name in ("train", "val", "test"):
        data = getattr(splits, name)
        if not len(data):
            continue
        encs = [encode_pair(tokenizer, p, r, splits.system) for p, r in zip(data.prompts, data.responses)]
        whole = base_lengths[name] = [len(e.input_ids) for e in encs]
        response = [e.response_tokens for e in encs]
        per[name] = {
            "n": len(data), "prompts": len(set(data.prompts)),
            "prompt_tokens": _pct([w - r for w, r in zip(whole, response)]), "response_tokens": _pct(response),
            "tokens": _pct(whole), "longer_than_max_length": sum(w > max_length for w in whole),
        }
        total += sum(whole)
        if unk_id is not None:
            unk += sum(e.input_ids.count(unk_id) for e in encs)
    if not per:
        raise SlimtuneError(f"{splits.source}: no pairs to profile")
    first = next(iter(per))  # train, unless the data has none
    base = per[first]
    suggested = suggested_length(base_lengths[first], limit)
    stats = splits.stats
    out = {"splits": per, "max_length": max_length, "suggested_max_length": suggested, "model_max_length": limit,
           "unk_tokens": unk, "tokens": total, "unk_share": unk / total if total else 0.0,
           "rows_removed": stats.get("rows_read", 0) - stats.get("rows_unique", 0),
           "rows_dropped": stats.get("rows_dropped", 0), "warnings": []}
    cut = base["longer_than_max_length"] / base["n"]
    if cut > CUT_WARN:
        out["warnings"].append(f"{cut:.0%} of the training pairs are longer than max_length {max_length} tokens: their "
                               f"responses are cut when trained and scored (p95 is {base['tokens']['p95']}; raise max_length)")
    if out["unk_share"] > UNK_WARN:
        out["warnings"].append(f"{out['unk_share']:.0%} of the tokens are unknown to this tokenizer: its vocabulary does "
                               "not cover the data's language")
    return out


def markdown(p: dict) -> list[str]:
    """report.md lines for a pairs profile."""
    lines = ["", "Data profile (the model's tokenizer and chat template; prompt tokens include the template):", "",
             "| split | pairs | prompts | prompt tokens p50 / p95 | response tokens p50 / p95 | pair tokens p50 / p95 / max "
             f"| longer than {p['max_length']} |", "|---|---|---|---|---|---|---|"]
    for name, s in p["splits"].items():
        pr, rs, t = s["prompt_tokens"], s["response_tokens"], s["tokens"]
        lines.append(f"| {name} | {s['n']} | {s['prompts']} | {pr['p50']} / {pr['p95']} | {rs['p50']} / {rs['p95']} "
                     f"| {t['p50']} / {t['p95']} / {t['max']} | {s['longer_than_max_length']} |")
    dropped = f" ({d} of them without a prompt or response)" if (d := p.get("rows_dropped")) else ""
    lines += ["", f"[UNK] share {p['unk_share']:.2%}; {p['rows_removed']} empty or duplicate pairs removed before "
                  f"splitting{dropped}; suggested max_length {p['suggested_max_length']} (train p95 of whole pairs)."]
    lines += [f"\n**Warning: {w}.**" for w in p["warnings"]]
    return lines


def profile_data(splits: PairSplits, model: str, max_length: int, log=print) -> dict:
    """Profile `splits` with `model`'s own tokenizer; logs a short summary and every warning."""
    tokenizer = load_tokenizer(model)
    p = profile_pairs(splits, tokenizer, max_length, token_limit(model, tokenizer, unknown=None))
    t = p["splits"].get("train", next(iter(p["splits"].values())))["tokens"]
    log(f"data profile: pair tokens p50 {t['p50']}, p95 {t['p95']}, max {t['max']} (max_length {max_length})")
    for w in p["warnings"]:
        log(f"warning: {w}")
    return p


def profile(data, model: str, max_length: int | None = None, log=print) -> dict:
    """`slimtune profile` for prompt/response data (a GenDataConfig) with `model`'s tokenizer;
    `max_length` unset: the generate task's default for `model` (what a run would score with)."""
    from .data import load_pairs

    max_length = length_for(GENERATE, model, max_length)
    splits = load_pairs(data)
    return profile_data(splits, model, max_length, log) | {"source": splits.source, "task": GENERATE}
