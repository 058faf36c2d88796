"""Choosing: the constraints on validation accuracy, latency and size, the Pareto front, and the
report (`report.json`, `report.md`, `pareto.png`, `chosen.yaml`)."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import DataConfig
from ..errors import SlimtuneError
from .candidates import FLOOR
from .config import AutoConfig
from .study import _done
from .trials import Search, _plain


def violations(row: dict, ref: dict, cfg: AutoConfig) -> dict[str, float]:
    """How far `row` is outside each constraint (0 = met), each relative to its limit. Validation only."""
    floor_acc = ref["val_accuracy"] - cfg.max_drop
    v = {"accuracy": max(0.0, floor_acc - row["val_accuracy"]) / max(cfg.max_drop, 0.005)}
    if cfg.max_latency_ms is not None:
        v["latency"] = max(0.0, row["latency_ms_p50"] / cfg.max_latency_ms - 1)
    if cfg.max_size_mb is not None:
        v["size"] = max(0.0, row["size_mb"] / cfg.max_size_mb - 1)
    return v


def choose(rows: list[dict], ref: dict, cfg: AutoConfig) -> tuple[dict | None, dict | None]:
    """(chosen, closest): the fastest row meeting every constraint on *validation* accuracy,
    latency and size; else None and the row that misses them by the least."""
    ok = [r for r in rows if not any(violations(r, ref, cfg).values())]
    if ok:
        return min(ok, key=lambda r: (r["latency_ms_p50"], r["size_mb"], -r["val_accuracy"])), None
    closest = min(rows, key=lambda r: (sum(violations(r, ref, cfg).values()), r["latency_ms_p50"])) if rows else None
    return None, closest


def pareto(rows: list[dict]) -> list[dict]:
    """Rows no other row beats on validation accuracy, p50 latency and size at once."""
    def dominates(a, b):
        ge = a["val_accuracy"] >= b["val_accuracy"] and a["latency_ms_p50"] <= b["latency_ms_p50"] and a["size_mb"] <= b["size_mb"]
        gt = a["val_accuracy"] > b["val_accuracy"] or a["latency_ms_p50"] < b["latency_ms_p50"] or a["size_mb"] < b["size_mb"]
        return ge and gt

    return sorted((r for r in rows if not any(dominates(o, r) for o in rows if o is not r)), key=lambda r: r["latency_ms_p50"])


def _unmet(row: dict, ref: dict, cfg: AutoConfig) -> str:
    v = violations(row, ref, cfg)
    parts = []
    if v.get("accuracy"):
        parts.append(f"validation accuracy {row['val_accuracy']:.4f} vs {ref['val_accuracy'] - cfg.max_drop:.4f} needed")
    if v.get("latency"):
        parts.append(f"p50 {row['latency_ms_p50']:.2f} ms vs {cfg.max_latency_ms:g} ms asked")
    if v.get("size"):
        parts.append(f"{row['size_mb']:.1f} MiB vs {cfg.max_size_mb:g} MiB asked")
    return "; ".join(parts)


def finish(cfg: AutoConfig, out: Path, search: Search, study, ref: dict, seconds: float, log) -> dict:
    done = _done(study)
    done.setdefault(ref["candidate"], ref)  # the reference is a point of the front too
    rows = sorted(done.values(), key=lambda r: r["latency_ms_p50"])
    for r in rows:
        r["val_drop_points"] = 100 * (ref["val_accuracy"] - r["val_accuracy"])
        r["test_drop_points"] = 100 * (ref["test_accuracy"] - r["test_accuracy"])
        r["speedup_p50"] = ref["latency_ms_p50"] / r["latency_ms_p50"]
        r["size_ratio"] = ref["size_mb"] / r["size_mb"]
    chosen, closest = choose(rows, ref, cfg)
    message = None
    if chosen:
        chosen = dict(chosen)
        chosen["confirmed_on_test"] = chosen["test_drop_points"] <= 100 * cfg.max_drop + 1e-9
        chosen["recipe"] = str(out / "chosen.yaml")
        (out / "chosen.yaml").write_text(chosen_recipe(search, chosen))
    elif closest:
        message = (f"no candidate meets every constraint (max drop {100 * cfg.max_drop:g} points on validation"
                   + (f", p50 <= {cfg.max_latency_ms:g} ms" if cfg.max_latency_ms else "")
                   + (f", size <= {cfg.max_size_mb:g} MiB" if cfg.max_size_mb else "")
                   + f"); the closest is {closest['candidate']} ({_unmet(closest, ref, cfg)}; artifact {closest['artifact']})")
    front = pareto(rows)
    report = {
        "auto": {"model": cfg.model, "model_note": search.model_note, "data": search.report["data"]["source"] if search.report else None,
                 "max_drop": cfg.max_drop, "max_latency_ms": cfg.max_latency_ms, "max_size_mb": cfg.max_size_mb,
                 "minutes": cfg.minutes, "seconds": seconds, "storage": cfg.storage or f"sqlite:///{out / 'study.db'}",
                 "trials": sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)), "selection": "validation accuracy (test only confirms)"},
        "reference": ref,
        "candidates": rows,
        "pareto": front,
        "chosen": chosen,
        "closest": closest,
        "message": message,
        "floor": search.report.get("floor") if search.report else None,
        "profile": search.report.get("profile") if search.report else None,
        "hardware": search.report.get("hardware") if search.report else None,
        "search_report": str(search.folder / "report.md"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    (out / "report.md").write_text(markdown(report), encoding="utf-8")
    if rows:
        plot(report, out / "pareto.png")
    if chosen:
        log(f"auto: chosen {chosen['candidate']}: {chosen['speedup_p50']:.1f}x faster, {chosen['size_ratio']:.1f}x smaller, "
            f"validation drop {chosen['val_drop_points']:.2f} points (test {chosen['test_drop_points']:.2f}, "
            f"{'confirmed' if chosen['confirmed_on_test'] else 'NOT confirmed'} on test); recipe {out / 'chosen.yaml'}")
    if message:
        raise SlimtuneError(f"auto: {message}. Report: {out / 'report.md'}")
    return report


def chosen_recipe(search: Search, chosen: dict) -> str:
    """A recipe that reproduces the chosen candidate with `slimtune run` (its chain, in order)."""
    import yaml

    by_name = {s["name"]: s for s in search.stages}
    stages = [by_name["reference"]] + [by_name[n] for n in chosen["stages"]]
    stages = [{"name": s["name"], "method": s["method"]} | {k: v for k, v in s.items() if k not in ("name", "method", "from")}
              for s in stages]
    raw = search.recipe_dict(stages)
    raw["data"] = {k: v for k, v in raw["data"].items() if v is not None and v != getattr(DataConfig, k, object())}
    head = (f"# Found by `slimtune auto`: {chosen['candidate']}, validation accuracy {chosen['val_accuracy']:.4f}, "
            f"p50 {chosen['latency_ms_p50']:.2f} ms, {chosen['size_mb']:.1f} MiB.\n"
            "# Reproduce it: slimtune run chosen.yaml --out DIR\n")
    if chosen["candidate"] == FLOOR:
        head += "# The chosen model is the TF-IDF floor, which every run fits: its artifact is DIR/floor.\n"
        raw["stages"] = []
    return head + yaml.safe_dump(_plain(raw), sort_keys=False)


def markdown(report: dict) -> str:
    a, ref = report["auto"], report["reference"]
    lines = [f"# slimtune auto: {a['data']} with {a['model']}", "",
             f"Constraints: accuracy drop <= {100 * a['max_drop']:g} points on **validation** (test only confirms)"
             + (f", batch-1 p50 <= {a['max_latency_ms']:g} ms" if a["max_latency_ms"] else "")
             + (f", size <= {a['max_size_mb']:g} MiB" if a["max_size_mb"] else "")
             + f". {len(report['candidates'])} candidates measured in {a['seconds'] / 60:.1f} min ({a['trials']} trials; "
             f"study {a['storage']}).", ""]
    if a.get("model_note"):
        lines += [a["model_note"].removeprefix("auto: ").replace("warning: ", "**Warning:** ", 1) + ".", ""]
    c = report["chosen"]
    if c:
        lines += [f"**Chosen: {c['candidate']}**: {c['speedup_p50']:.2f}x faster and {c['size_ratio']:.2f}x smaller than the "
                  f"reference; validation drop {c['val_drop_points']:.2f} points, test drop {c['test_drop_points']:.2f} points "
                  f"({'confirmed' if c['confirmed_on_test'] else '**not confirmed**'} on test). Artifact `{c['artifact']}`; "
                  f"reproduce with `slimtune run {c['recipe']} --out DIR`.", ""]
    if report["message"]:
        lines += [f"**{report['message']}.**", ""]
    front = {r["candidate"] for r in report["pareto"]}
    lines += ["| candidate | val acc | test acc | p50 ms | speed-up | MiB | size ratio | Pareto |", "|---|---|---|---|---|---|---|---|"]
    for r in report["candidates"]:
        mark = " (chosen)" if c and r["candidate"] == c["candidate"] else (" (reference)" if r["candidate"] == ref["candidate"] else "")
        lines.append(f"| {r['candidate']}{mark} | {r['val_accuracy']:.4f} | {r['test_accuracy']:.4f} | {r['latency_ms_p50']:.2f} | "
                     f"{r['speedup_p50']:.2f}x | {r['size_mb']:.1f} | {r['size_ratio']:.2f}x | {'yes' if r['candidate'] in front else ''} |")
    floor = next((r for r in report["candidates"] if r["candidate"] == FLOOR), None)
    if floor:
        best = max((r for r in report["candidates"] if r["candidate"] != FLOOR), key=lambda r: r["val_accuracy"], default=None)
        if best and best["val_accuracy"] <= floor["val_accuracy"]:
            lines += ["", f"**No transformer candidate beats the TF-IDF floor on validation** ({best['val_accuracy']:.4f} vs "
                          f"{floor['val_accuracy']:.4f})."]
        elif best:
            lines += ["", f"The TF-IDF floor scores {floor['val_accuracy']:.4f} on validation ({floor['test_accuracy']:.4f} test); "
                          f"the best transformer candidate {best['val_accuracy']:.4f}."]
    lines += ["", "Candidate names: architecture / vocabulary / runtime. Every candidate was measured like any stage "
              f"(test split, batch-1 latency in a fresh process); all stages are in `{report['search_report']}`."]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    front = {r["candidate"] for r in report["pareto"]}
    for ax, key, label in ((axes[0], "latency_ms_p50", "batch-1 p50 (ms)"), (axes[1], "size_mb", "size on disk (MiB)")):
        for r in report["candidates"]:
            on = r["candidate"] in front
            ax.scatter(r[key], r["val_accuracy"], s=45 if on else 20, c="tab:red" if on else "tab:gray")
            if on:
                ax.annotate(r["candidate"], (r[key], r["val_accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle("slimtune auto: candidates (red: Pareto front)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
