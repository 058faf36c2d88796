"""The report.md of a generate run (one table, every artifact measured alike); report.py writes it."""

from __future__ import annotations

from .profile import markdown as profile_markdown

# the metric keys every generative artifact reports (issue 14), then the extras
COLUMNS = [
    ("size_bytes", "size MiB", None),
    ("perplexity", "perplexity", "{:.3f}"),
    ("token_f1", "token F1", "{:.4f}"),
    ("exact_match", "exact", "{:.4f}"),
    ("ttft_ms", "TTFT ms", "{:.1f}"),
    ("prefill_tokens_per_s", "prefill tok/s", "{:.0f}"),
    ("decode_tokens_per_s", "decode tok/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
]


def _cell(m: dict, key: str, fmt: str | None) -> str:
    v = m.get(key)
    if v is None:
        return ""
    return f"{v / 2**20:.1f}" if key == "size_bytes" else fmt.format(v)


def _speedup(m: dict, is_base: bool) -> str:
    """The decode speed-up over the baseline, as timed alternately (measure/alternate.py); none other is printed."""
    from ..measure.alternate import compact

    if is_base:
        return "1x (baseline)"
    s = m.get("decode_speedup")
    return compact(s) if s else ""


def _ratios(m: dict, b: dict | None, is_export: bool) -> tuple[str, str]:
    """(size ratio against the baseline, perplexity ratio: an export's against its source stage, a stage's against the baseline)."""
    size = f"{b['size_bytes'] / m['size_bytes']:.2f}x smaller" if b and m.get("size_bytes") and b.get("size_bytes") else ""
    if is_export:
        ppl = f"x{m['perplexity_vs_source']:.3f} (source)" if m.get("perplexity_vs_source") else ""
    else:
        ppl = f"x{m['perplexity'] / b['perplexity']:.3f}" if b and m.get("perplexity") and b.get("perplexity") else ""
    return size, ppl


def _notes(report: dict) -> list[str]:
    """One line per export with something to say: not measured (and why), tensors stored in another type."""
    lines = []
    for s in report["stages"]:
        m, g = s["metrics"], s["metrics"].get("gguf") or {}
        if m.get("not_measured"):
            lines.append(f"- {s['name']}: {m['not_measured']}")
        if g.get("fallback"):
            lines.append(f"- {s['name']} ({g.get('file_type', '')}; {', '.join(f'{k} {v}' for k, v in g.get('tensor_types', {}).items())}): "
                         f"{g['fallback']}")
    return lines


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
    head = ["artifact", "method", "runtime", "size MiB", "size ratio", "perplexity", "perplexity ratio"] + \
        [c[1] for c in COLUMNS[2:]] + ["decode speed-up (alternated)", "parity (same first N greedy tokens)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in report["stages"]:
        m = s["metrics"]
        is_base = s is base
        size, ppl = _ratios(m, None if is_base or base is None else base["metrics"], s["method"] == "export")
        cells = [s["name"] + (" (baseline)" if is_base else ""), s["method"], m.get("runtime", ""),
                 _cell(m, "size_bytes", None), size, _cell(m, "perplexity", "{:.3f}"), ppl]
        cells += [_cell(m, k, f) for k, _, f in COLUMNS[2:]] + [_speedup(m, is_base)]
        p = m.get("parity")
        cells.append(f"{p['greedy_identical']}/{p['greedy_prompts']} prompts (N={p['greedy_tokens']}; "
                     f"mean common prefix {p['greedy_common_prefix_mean']:.1f})" if p else "")
        if m.get("not_measured"):
            cells = cells[:5] + [m["not_measured"]] + [""] * (len(cells) - 6)
        lines.append("| " + " | ".join(cells) + " |")
    notes = _notes(report)
    if notes:
        lines += ["", "Export notes:", *notes]
    loads = [s["metrics"]["load_avg_1m"] for s in report["stages"] if "load_avg_1m" in s["metrics"]]
    threads = [s["metrics"]["threads"] for s in report["stages"] if "threads" in s["metrics"]]
    lines += ["",
              "Perplexity: exp of the mean negative log-likelihood of every response token of the test pairs, the prompt "
              "given in the chat template (prompt tokens are not scored). Token F1 / exact match: greedy answers "
              f"(at most {ev.get('max_new_tokens', 32)} tokens) to {ev.get('answer_prompts')} distinct test prompts against "
              "their best reference (lower case, no punctuation or articles). TTFT and decode tokens/s: batch 1, greedy, "
              f"median over {ev.get('speed_prompts')} test prompts x {ev.get('speed_new_tokens')} new tokens after one "
              "warm-up, each artifact in a fresh process on this machine, one after another (absolute figures, for "
              "information). Prefill tok/s: prompt tokens / TTFT. Decode speed-up: the artifact and the baseline "
              "loaded in that process and timed alternately, per-token decode times, median of the per-round ratios "
              "(rounds' min-max; marked noisy when they disagree). Size: weight files on disk; size ratio against the "
              "baseline. Perplexity ratio: a stage's against the baseline, an export's against the stage it was "
              "exported from. Peak RSS: the timing process before the baseline is loaded, Python and libraries "
              "included. Runtime: torch, genai (ONNX Runtime GenAI), llama.cpp."
              + (f" 1-minute load average while timing: {min(loads):.2f} to {max(loads):.2f}." if loads else "")
              + (f" Threads: {threads[0]} (torch, GenAI and llama.cpp alike)." if threads else "")]
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
