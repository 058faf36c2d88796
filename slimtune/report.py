"""The run report: report.json, report.md (classify: a table with ratios to the baseline) and two plots;
`write_report` writes any task's report (its Markdown from the task: tasks/)."""

from __future__ import annotations

from pathlib import Path

from .measure import alternate, passes
from .artifacts.atomic import atomic_file
from .measure.floor import verdict as floor_verdict
from .profile import markdown as profile_markdown

COLUMNS = [
    ("accuracy", "acc", "{:.4f}"),
    ("f1_macro", "macro F1", "{:.4f}"),
    ("params", "params", "{:,}"),
    ("size_bytes", "size MiB", None),
    ("latency_ms_p50", "p50 ms", "{:.2f}"),
    ("latency_ms_p95", "p95 ms", "{:.2f}"),
    ("throughput_per_s", "texts/s", "{:.1f}"),
    ("peak_rss_mb", "peak RSS MiB", "{:.0f}"),
]


SIZE_ONLY_BELOW = 1.10  # an unstructured-sparse model measured less than 10% faster is "size-only"


def _baseline(report: dict) -> dict | None:
    return next((s for s in report["stages"] if s["name"] == report.get("baseline")), None)


def speedup(m: dict, base: dict, baseline: str | None) -> tuple[float, str, dict | None]:
    """A row's speed-up over the baseline, its cell, and the alternated measurement it comes from
    when the row has one against this baseline (alternate.py); else (None) the ratio of two p50s
    timed apart (a stage measured before its baseline existed), said so in the cell."""
    s = m.get("speedup")
    if s and s.get("against") == baseline:
        if m is base["metrics"]:
            return 1.0, alternate.compact(s, itself=True), s
        return s["speedup"], alternate.compact(s), s
    x = base["metrics"]["latency_ms_p50"] / m["latency_ms_p50"]
    return x, f"{x:.2f}x (timed apart)", None


def _compute_lines(report: dict) -> list[str]:
    c, gpu = report.get("compute") or {}, report["hardware"].get("gpu")
    if not gpu and c.get("world_size", 1) == 1 and c.get("device", "cpu") == "cpu":
        return []
    batches = ", ".join(f"{k} {v}" for k, v in (c.get("effective_batch_size") or {}).items())
    on_gpu = f" ({gpu['name']})" if gpu else ""
    return [f"Training: {c.get('world_size', 1)} process(es) on {c.get('device', 'cpu')}{on_gpu}; "
            f"global batch per stage: {batches or 'n/a'}. "
            "Evaluation and benchmarks ran in one process.", ""]


def markdown(report: dict) -> str:
    base = _baseline(report)
    hw = report["hardware"]
    isa = ", ".join(k for k, v in hw["isa"].items() if v) or "none of the listed"
    lines = [
        f"# slimtune report: {report.get('recipe', '')}",
        "",
        f"Data: {report['data']['source']}; train {report['data'].get('train')}, "
        f"validation {report['data'].get('val')}, test {report['data'].get('test')} examples"
        f"{f' ({d} rows without a text or label dropped)' if (d := report['data'].get('rows_dropped')) else ''}. "
        f"Labels: {', '.join(report['data'].get('labels', []))}.",
        "",
        f"Hardware: {hw['cpu']} ({hw['machine']}), {hw['cores_logical']} logical cores, "
        f"torch threads {hw['torch_threads']}; ISA: {isa}. torch {hw['torch']}, "
        f"onnxruntime {hw['onnxruntime']}, transformers {hw['transformers']}.",
        "",
        *_compute_lines(report),  # hook (compute.py / distributed.py): processes, device, GPU
    ]
    # a literal | inside a cell must be escaped, or the table gets extra columns and does not render
    head = ["stage", "method"] + [c[1] for c in COLUMNS] + ["speed-up (median of alternated rounds, min–max)", "size ratio", r"parity (max \|Δlogit\|, agree)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in report["stages"] + ([report["floor"]] if report.get("floor") else []):
        m = s["metrics"]
        cells = [s["name"] + (" (baseline)" if base is s else ""), s["method"]]
        for key, _, fmt in COLUMNS:
            v = m.get(key)
            cells.append("" if v is None else (f"{v / 2**20:.1f}" if key == "size_bytes" else fmt.format(v)))
            if key == "latency_ms_p50" and m.get("noisy"):
                cells[-1] += " (noisy)"
        if base is not None:
            bm = base["metrics"]
            x, cell, _ = speedup(m, base, report.get("baseline"))
            # zeros in dense matrices make nothing faster: say so unless a speed-up was measured
            size_only = m.get("speedup_kind") == "size-only" and x < SIZE_ONLY_BELOW
            cells.append(cell + (" (size-only)" if size_only else ""))
            cells.append(f"{bm['size_bytes'] / m['size_bytes']:.2f}x smaller")
        else:
            cells += ["", ""]
        p = m.get("parity")
        cells.append(f"{p['max_abs_logit_diff']:.2e}, {p['argmax_agreement']:.4f}" if p else "")
        lines.append("| " + " | ".join(cells) + " |")
    runs = next((s["metrics"].get("latency_runs") for s in report["stages"]), None)
    in_process = any(s["metrics"].get("peak_rss_note") == "in-process" for s in report["stages"])
    where = ("in the run's own process (eval.isolate: false), so peak RSS includes what ran before it"
             if in_process else "in a fresh process")
    loads = [s["metrics"]["load_avg_1m"] for s in report["stages"] if "load_avg_1m" in s["metrics"]]
    alt = next((s["metrics"]["speedup"] for s in report["stages"] if s["metrics"].get("speedup")), None)
    how = (f"Speed-up: each row's batch-1 calls are timed in {alt['rounds']} blocks of {alt['runs_per_block']}, alternating "
           f"with blocks of the baseline {report.get('baseline')} loaded in the same process (order swapped every round); "
           "each round gives one ratio, the column shows their median and min–max (the baseline's own row: itself "
           f"against itself, the noise floor). A figure whose rounds disagree (max/min > {alternate.NOISY_RATIO_SPREAD}) "
           f"or whose baseline blocks do (max/min > {alternate.NOISY_BLOCK_SPREAD}) is marked ≈ noisy, after up to "
           f"{alternate.MAX_ATTEMPTS} attempts. " if alt else "")
    lines += [
        "",
        f"Latency: batch 1 over real test sentences, {runs} timed runs after warm-up, tokenization included; "
        f"throughput at batch 32. Each artifact is benchmarked {where}, one after another on "
        "this machine; compare ratios within this report rather than absolute times across machines. " + how +
        "Size: bytes of the weight files on disk (tokenizer excluded). Peak RSS: the benchmarking "
        "process, Python and libraries included."
        + (f" 1-minute load average while timing: {min(loads):.2f} to {max(loads):.2f}." if loads else ""),
    ]
    noisy = [s["name"] for s in report["stages"] if s["metrics"].get("noisy")]
    if noisy:
        why = "; ".join(f"{s['name']}: {s['metrics']['speedup']['noisy_reason']}" for s in report["stages"]
                        if s["metrics"].get("noisy") and (s["metrics"].get("speedup") or {}).get("noisy_reason"))
        lines += ["", f"**noisy**: {', '.join(noisy)} were timed while the machine was busy (alternated rounds or "
                  "baseline blocks that disagree, or alone a load average or p95/p50 spread above the limits in "
                  "slimtune/measure/, still so after re-measuring); their latency and speed-up are not to be trusted"
                  + (f" ({why})" if why else "") + ". Re-run `slimtune bench A --against BASELINE` on an idle machine."]
    varying = [s for s in report["stages"] if s["metrics"].get("batch1_agreement", 1.0) < 1.0]
    if varying:
        lines += ["", "Batch-mates change predictions (dynamic int8 computes activation scales per batch, padding "
                  "included): share of texts that get the same label alone as in an evaluation batch of "
                  f"{report.get('eval_batch_size', 32)}: "
                  + ", ".join(f"{s['name']} {s['metrics']['batch1_agreement']:.4f}" for s in varying)
                  + ". Accuracy above is at that batch size; evaluate at the batch size you will serve at (eval.batch_size)."]
    if any(s["metrics"].get("speedup_kind") == "size-only" for s in report["stages"]):
        lines += ["", "size-only: unstructured sparsity stores fewer bytes (sparse format on disk) but runs on the "
                  "same dense kernels once loaded, so it is not faster; the speed-up shown is measured, not assumed."]
    lines += int8_speed_notes(report, base)
    verdict = floor_verdict(report)
    if verdict:
        m = report["floor"]["metrics"]
        how = (f"over {m['why']}" if m.get("why")  # floors fitted before the word/character choice: words
               else "over word 1-2-grams")
        lines += ["", f"tfidf-floor: TF-IDF {how}; + logistic regression (scikit-learn), fitted on the same "
                  "training split, analyzer and C chosen on validation; measured like every other row.", "", verdict]
    lines += profile_markdown(report.get("profile"))
    trained = [s for s in report["stages"] if "trainable_params" in s["metrics"]]
    if trained:
        lines += ["", "| stage | trainable params | train steps | train examples | train s | val accuracy |", "|---|---|---|---|---|---|"]
        for s in trained:
            m = s["metrics"]
            val = ", ".join(f"{v:.4f}" for v in m.get("val_accuracy", []))
            lines.append(f"| {s['name']} | {m['trainable_params']:,} of {m['total_params']:,} | {m['train_steps']} | "
                         f"{m['train_examples']} | {m['train_seconds']:.0f} | {val} |")
    pruned = [s for s in report["stages"] if "pruning" in s["metrics"]]
    if pruned:
        lines += ["", "| stage | pruning | what was removed |", "|---|---|---|"]
        for s in pruned:
            m = s["metrics"]
            if m["pruning"] == "unstructured":
                what = (f"{m['pruned_weights']:,} of {m['prunable_weights']:,} prunable weights "
                        f"(sparsity {m['sparsity']:.4f}; per-matrix figures in report.json), stored {m.get('storage', 'dense')}")
            else:
                what = (f"layers {m['layers_before']} → {m['layers_after']}, heads {m['heads_before']} → {sum(m['heads_after'])} "
                        f"(per layer {m['heads_after']}), FFN neurons {m['ffn_before']:,} → {sum(m['ffn_after']):,}, "
                        f"{m['params_removed']:,} parameters removed (score: {m['score']})")
            lines.append(f"| {s['name']} | {m['pruning']} | {what} |")
    return "\n".join(lines) + "\n"


def int8_speed_notes(report: dict, base: dict | None) -> list[str]:
    """Int8 is not faster everywhere (CPUs without VNNI): say plainly what it measured here."""
    rows = [s for s in report["stages"] if s["metrics"].get("int8_compute") or s["name"] == "onnx-int8"]
    if not rows or base is None:
        return []
    isa = report["hardware"]["isa"]
    vnni = [k for k in ("avx512_vnni", "avx_vnni", "amx_int8") if isa.get(k)]
    lines = ["", f"Int8 on this CPU ({'has ' + ', '.join(vnni) if vnni else 'no VNNI or AMX int8 instructions'}), "
                 f"batch-1 p50 against the baseline {base['name']}:"]
    b = base["metrics"]["latency_ms_p50"]
    for s in rows:
        p50 = s["metrics"]["latency_ms_p50"]
        x, cell, alternated = speedup(s["metrics"], base, report.get("baseline"))
        detail = f"{p50:.2f} ms vs {b:.2f} ms" + (f"; speed-up {cell}" if alternated else "")
        if x <= 1.0:
            lines.append(f"- **{s['name']}: int8 is NOT faster than fp32 on this machine** ({detail}); "
                         "keep fp32 here unless size matters more than speed.")
        else:
            noisy = "≈" if alternated and alternated["noisy"] else ""
            lines.append(f"- {s['name']}: {noisy}{x:.2f}x faster than fp32 ({detail}).")
    return lines


def plot(report: dict, x_key: str, x_label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for s in report["stages"] + ([report["floor"]] if report.get("floor") else []):
        m = s["metrics"]
        x = m[x_key] / 2**20 if x_key == "size_bytes" else m[x_key]
        ax.scatter(x, m["accuracy"], s=40)
        ax.annotate(s["name"], (x, m["accuracy"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel(x_label)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"accuracy vs {x_label.split(' (')[0]} ({report['hardware']['cpu']})", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_report(report: dict, rf, task) -> None:
    """report.json and the task's report.md (and its plots) into the run folder `rf` (a
    `RunFolder`), each atomically: the one report writer of every task."""
    md = task.markdown(report)
    times = passes.markdown(report)  # every task: where the time outside max_minutes went
    rf.write_report(report, md.rstrip("\n") + "\n" + "\n".join(times) + "\n" if times else md)
    task.plot(report, rf.root)
