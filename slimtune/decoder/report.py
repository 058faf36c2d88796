"""The report.md of a generate run (one table, every artifact measured alike); report.py writes it."""

from __future__ import annotations

from .profile import markdown as profile_markdown

# the metric keys every generative artifact reports (issue 14), then the extras
COLUMNS = [
    ("perplexity", "perplexity", "{:.3f}"),
    ("token_f1", "token F1", "{:.4f}"),
    ("exact_match", "exact", "{:.4f}"),
    ("ttft_ms", "TTFT ms", "{:.1f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("size_bytes", "size MiB", None),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
]


def _cell(m: dict, key: str, fmt: str | None) -> str:
    v = m.get(key)
    if v is None:
        return ""
    return f"{v / 2**20:.1f}" if key == "size_bytes" else fmt.format(v)


def _md(text: str) -> str:
    return " ".join(str(text).split()).replace("|", r"\|")


def markdown(report: dict) -> str:
    base = next((s for s in report["stages"] if s["name"] == report.get("baseline")), None)
    hw, ev, data = report["hardware"], report["eval"], report["data"]
    lines = [
        f"# slimtune report (generate): {report.get('recipe', '')}", "",
        f"Data: {data['source']}; {data.get('prompts')} distinct prompts, split by prompt: train {data.get('train')}, "
        f"validation {data.get('val')}, test {data.get('test')} pairs.", *(profile_markdown(report["profile"]) if report.get("profile") else []), "",
        f"Hardware: {hw['cpu']} ({hw['machine']}), {hw['cores_logical']} logical cores, torch threads {hw['torch_threads']}; "
        f"torch {hw['torch']}, onnxruntime {hw['onnxruntime']}, transformers {hw['transformers']}.", "",
    ]
    head = ["artifact", "method"] + [c[1] for c in COLUMNS] + ["decode speed-up", "size ratio", "parity (same first N greedy tokens)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in report["stages"]:
        m = s["metrics"]
        cells = [s["name"] + (" (baseline)" if s is base else ""), s["method"]] + [_cell(m, k, f) for k, _, f in COLUMNS]
        if base is not None:
            b = base["metrics"]
            cells.append(f"{m['decode_tokens_per_s'] / b['decode_tokens_per_s']:.2f}x")
            cells.append(f"{b['size_bytes'] / m['size_bytes']:.2f}x smaller")
        else:
            cells += ["", ""]
        p = m.get("parity")
        cells.append(f"{p['greedy_identical']}/{p['greedy_prompts']} prompts (N={p['greedy_tokens']}; "
                     f"mean common prefix {p['greedy_common_prefix_mean']:.1f})" if p else "")
        lines.append("| " + " | ".join(cells) + " |")
    loads = [s["metrics"]["load_avg_1m"] for s in report["stages"] if "load_avg_1m" in s["metrics"]]
    threads = [s["metrics"]["threads"] for s in report["stages"] if "threads" in s["metrics"]]
    lines += ["",
              "Perplexity: exp of the mean negative log-likelihood of every response token of the test pairs, the prompt "
              "given in the chat template (prompt tokens are not scored). Token F1 / exact match: greedy answers "
              f"(at most {ev.get('max_new_tokens', 32)} tokens) to {ev.get('answer_prompts')} distinct test prompts against "
              "their best reference (lower case, no punctuation or articles). TTFT and decode tokens/s: batch 1, greedy, "
              f"median over {ev.get('speed_prompts')} test prompts x {ev.get('speed_new_tokens')} new tokens after one "
              "warm-up, each artifact in a fresh process on this machine, one after another; compare ratios within this "
              "report. Size: weight files on disk. Peak RSS: the timing process, Python and libraries included."
              + (f" 1-minute load average while timing: {min(loads):.2f} to {max(loads):.2f}." if loads else "")
              + (f" Threads: {threads[0]} (torch and GenAI alike)." if threads else "")]
    trained = [s for s in report["stages"] if "trainable_params" in s["metrics"]]
    if trained:
        lines += ["", "| stage | trainable params | share | train steps | train pairs | response tokens | train s | s/step | train loss |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in trained:
            m = s["metrics"]
            lines.append(f"| {s['name']} | {m['trainable_params']:,} of {m['total_params']:,} | "
                         f"{m['trainable_params'] / m['total_params']:.2%} | {m['train_steps']} | {m['train_examples']} | "
                         f"{m.get('train_response_tokens', '')} | {m['train_seconds']:.0f} | {m['seconds_per_step']:.2f} | "
                         f"{m['train_loss']:.4f} |")
    pruned = [s for s in report["stages"] if s["metrics"].get("pruning") == "depth"]
    for s in pruned:
        m = s["metrics"]
        lines += ["", f"{s['name']}: layers {m['layers_before']} → {m['layers_after']} (removed {m['dropped_layers']}, "
                      f"score: {m['score']}), {m['params_removed']:,} parameters removed"
                      + (", recovered with distillation from the unpruned model's top-k logits" if m.get("distilled") else "") + "."]
    for s in report["stages"]:
        shown = s["metrics"].get("samples") or []
        if shown:
            lines += ["", f"### Samples: {s['name']}", "", "| prompt | answer | reference |", "|---|---|---|"]
            lines += [f"| {_md(x['prompt'])} | {_md(x['answer'])} | {_md(x['reference'])} |" for x in shown]
    return "\n".join(lines) + "\n"
