"""Serving benchmark: `slimtune serve` under bounded load on loopback, ratios measured in one run.

    python benchmarks/serve.py [--artifact runs/default/stages/05-compact] [--fp32 FOLDER_OR_ONNX]

Every request goes to 127.0.0.1 (the server is started here, on a free port); every load phase
is bounded in request count and in seconds. The load generator is httpx's async client.

Targets (issue 13): 64 clients x 10,000 requests with 0 errors and 0 lost responses, p99
reported; served throughput at 32 clients (one text per request) >= 70% of the artifact's own
`slimtune bench` batch throughput, and micro-batching never slower than --max-batch 1; 2,000 test
texts alone and inside random batches of mixed lengths: 100% identical labels; start to ready
<= 5 s. Also measured: where batching pays at all on this machine (batch 1 vs 32, short and long
texts, int8 and fp32, 1 and 2 threads), in-process, without HTTP.

The load generator shares the machine's cores with the server: on 2 cores it takes a real share
of them, so served throughput here is a lower bound of what the server does with cores of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only


class Server:
    """`slimtune serve` in a child process on a free loopback port; start-to-ready is timed."""

    def __init__(self, artifact: Path, *options: str, log: Path):
        exe = shutil.which("slimtune", path=str(Path(sys.executable).parent))
        self.log = log.open("w")
        start = time.perf_counter()
        self.proc = subprocess.Popen([exe, "serve", str(artifact), "--host", HOST, "--port", "0", *options],
                                     stderr=subprocess.PIPE, stdout=self.log, text=True)
        line, deadline = "", time.monotonic() + 180
        while "ready on" not in line and time.monotonic() < deadline and self.proc.poll() is None:
            line = self.proc.stderr.readline()
            self.log.write(line)
        if "ready on" not in line:
            raise RuntimeError(f"server did not start: {line}{self.proc.stderr.read()[-2000:]}")
        self.url = line.split("ready on ")[1].split()[0]
        threading.Thread(target=self._drain, daemon=True).start()  # a full stderr pipe would stall the server
        assert self.url.startswith(f"http://{HOST}:"), self.url
        import httpx

        while httpx.get(self.url + "/ready", timeout=10).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        self.ready_seconds = time.perf_counter() - start
        self.options = options

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.log.write(line)

    def metrics(self) -> dict[str, float]:
        import httpx

        out = {}
        for line in httpx.get(self.url + "/metrics", timeout=10).text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        time.sleep(0.2)  # the drain thread writes the last lines
        self.log.close()
        return code


async def load(url: str, bodies: list[dict], clients: int, max_seconds: float) -> dict:
    """Send `bodies` (each once) from `clients` concurrent connections, for at most `max_seconds`."""
    import httpx

    answers: list[dict | None] = [None] * len(bodies)
    latencies, statuses, failures = [], Counter(), Counter()
    jobs = iter(enumerate(bodies))
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker():
            for i, body in jobs:  # one shared iterator: every body is sent exactly once
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    r = await client.post("/predict", json=body)
                except httpx.HTTPError as e:
                    failures[type(e).__name__] += 1
                    continue
                latencies.append(time.perf_counter() - start)
                statuses[r.status_code] += 1
                if r.status_code == 200:
                    answers[i] = r.json()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - start
    answered = sum(statuses.values())
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    texts = sum(len(b.get("texts", [None])) for b, a in zip(bodies, answers) if a is not None)
    # errors: answers other than 200; lost: requests that got no HTTP answer (transport failure, or cut by the deadline)
    return {"requests": len(bodies), "answered": answered, "ok": statuses[200], "errors": answered - statuses[200],
            "lost": len(bodies) - answered,
            "statuses": dict(statuses), "failures": dict(failures), "seconds": wall,
            "requests_per_s": statuses[200] / wall, "texts_per_s": texts / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "answers": answers}


def mean_batch(before: dict, after: dict) -> float:
    n = after["slimtune_batch_size_count"] - before.get("slimtune_batch_size_count", 0)
    return (after["slimtune_batch_size_sum"] - before.get("slimtune_batch_size_sum", 0)) / max(n, 1)


def served_throughput(server: Server, texts: list[str], clients: int, n: int) -> dict:
    bodies = [{"text": texts[i % len(texts)]} for i in range(n)]
    asyncio.run(load(server.url, bodies[: 4 * clients], clients, 60))  # warm-up: connections, caches
    before = server.metrics()
    result = asyncio.run(load(server.url, bodies, clients, 300))
    result["mean_batch"] = mean_batch(before, server.metrics())
    return result


def invariance(server: Server, texts: list[str], seed: int = 0) -> dict:
    """Each text alone (one client, one at a time), then inside random requests of 1-16 texts of
    mixed lengths sent by 16 clients at once: how many labels and probabilities are identical."""
    alone = asyncio.run(load(server.url, [{"text": t} for t in texts], 1, 600))
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    groups, i = [], 0
    while i < len(order):
        k = rng.randint(1, 16)
        groups.append(order[i : i + k])
        i += k
    before = server.metrics()
    crowd = asyncio.run(load(server.url, [{"texts": [texts[j] for j in g]} for g in groups], 16, 600))
    batch = mean_batch(before, server.metrics())
    single = {t: a["predictions"][0] for t, a in zip(texts, alone["answers"]) if a}
    mixed = {}
    for g, a in zip(groups, crowd["answers"]):
        if a:
            mixed |= {texts[j]: p for j, p in zip(g, a["predictions"])}
    both = [t for t in texts if t in single and t in mixed]
    same_label = sum(single[t]["label"] == mixed[t]["label"] for t in both)
    same_probs = sum(single[t]["probabilities"] == mixed[t]["probabilities"] for t in both)
    gap = max((abs(single[t]["probability"] - mixed[t]["probabilities"][single[t]["label"]]) for t in both), default=0.0)
    return {"texts": len(texts), "compared": len(both), "identical_labels": same_label, "identical_probabilities": same_probs,
            "max_probability_gap": gap, "crowd_mean_batch": batch, "crowd_requests": len(groups)}


def where_batching_pays(artifacts: dict[str, Path], texts: list[str], n: int = 256) -> list[dict]:
    """In-process, no HTTP: texts/s at batch 1 and at batch 32, short and long texts, 1 and 2 threads."""
    from slimtune.artifacts import load_predictor

    long_texts = [" ".join(texts[i : i + 5]) for i in range(0, 5 * n, 5)]  # ~5 snippets: >= 128 tokens
    rows = []
    for name, path in artifacts.items():
        for threads in (1, 2):
            pred = load_predictor(path, 128, threads=threads)
            for kind, pool in (("short (RT snippet)", texts[:n]), ("long (128 tokens)", long_texts[:n])):
                speeds = {}
                for bs in (1, 32):
                    pred.logits(pool[:bs])  # warm-up at this shape
                    start = time.perf_counter()
                    for i in range(0, len(pool), bs):
                        pred.logits(pool[i : i + bs])
                    speeds[bs] = len(pool) / (time.perf_counter() - start)
                rows.append({"model": name, "threads": threads, "texts": kind, "batch1_per_s": speeds[1],
                             "batch32_per_s": speeds[32], "gain": speeds[32] / speeds[1]})
                print(f"  {name:10s} threads {threads}  {kind:20s} batch 1 {speeds[1]:7.1f}/s  batch 32 "
                      f"{speeds[32]:7.1f}/s  x{speeds[32] / speeds[1]:.2f}", flush=True)
            del pred
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--artifact", default=str(REPO / "runs" / "default" / "stages" / "05-compact"))
    ap.add_argument("--fp32", help="the fp32 ONNX export of the same model (for where batching pays)")
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--throughput-requests", type=int, default=3000)
    ap.add_argument("--invariance-texts", type=int, default=2000)
    ap.add_argument("--json", default=str(REPO / "runs" / "bench-serve.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from slimtune.measure.bench import benchmark_in_subprocess, hardware
    from slimtune.data import DataConfig, load_splits
    from slimtune.model.folders import quiet_libraries

    quiet_libraries()
    artifact = Path(args.artifact)
    fp32 = Path(args.fp32) if args.fp32 else artifact.parent / "onnx"
    logs = Path(args.json).parent / "bench-serve-logs"
    logs.mkdir(parents=True, exist_ok=True)
    texts = load_splits(DataConfig(name="rotten_tomatoes")).test.texts
    load_start = os.getloadavg()
    out: dict = {"artifact": str(artifact), "hardware": hardware(), "loadavg_start": load_start}
    print(f"artifact {artifact}; load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}", flush=True)

    print("slimtune bench (in a fresh process, 200 RT test texts)", flush=True)
    bench = benchmark_in_subprocess(artifact, texts[:200], 128, 100, 10, 32)
    out["bench"] = bench
    print(f"  batch-32 throughput {bench['throughput_per_s']:.1f}/s, batch-1 p50 {bench['latency_ms_p50']:.2f} ms "
          f"({1000 / bench['latency_ms_p50']:.1f}/s)", flush=True)

    configs = {"default": [], "max-batch-1": ["--max-batch", "1"], "batched (per-row off)": ["--per-row", "off"],
               "workers-2": ["--workers", "2"]}
    out["servers"] = {}
    for name, options in configs.items():
        print(f"server {name}: {' '.join(options) or '(defaults)'}", flush=True)
        server = Server(artifact, *options, log=logs / f"{name.split()[0]}.log")
        row = {"ready_seconds": server.ready_seconds}
        print(f"  start to ready {server.ready_seconds:.2f} s", flush=True)
        if name == "default":
            bodies = [{"text": texts[i % len(texts)]} for i in range(args.requests)]
            soak = asyncio.run(load(server.url, bodies, args.clients, 900))
            soak.pop("answers")
            row["soak"] = soak
            print(f"  {args.clients} clients x {args.requests} requests: {soak['ok']} ok, {soak['errors']} errors, "
                  f"{soak['lost']} lost {soak['failures'] or ''}, p50 {soak['p50_ms']:.1f} ms p99 {soak['p99_ms']:.1f} ms "
                  f"max {soak['max_ms']:.0f} ms, {soak['requests_per_s']:.1f} req/s", flush=True)
        tp = served_throughput(server, texts, 32, args.throughput_requests)
        tp.pop("answers")
        row["throughput_32"] = tp
        print(f"  32 clients, one text each: {tp['texts_per_s']:.1f} texts/s, mean batch {tp['mean_batch']:.2f}, "
              f"p50 {tp['p50_ms']:.1f} ms p99 {tp['p99_ms']:.1f} ms, errors {tp['errors']}", flush=True)
        if name in ("default", "batched (per-row off)"):
            inv = invariance(server, texts[: args.invariance_texts])
            row["invariance"] = inv
            print(f"  invariance: {inv['identical_labels']}/{inv['compared']} labels, {inv['identical_probabilities']} "
                  f"probabilities identical (max gap {inv['max_probability_gap']:.2e}), mean crowd batch "
                  f"{inv['crowd_mean_batch']:.2f}", flush=True)
        row["exit_code"] = server.stop()
        print(f"  SIGTERM: exit code {row['exit_code']}", flush=True)
        out["servers"][name] = row

    has_fp32 = (fp32 / "model.onnx").is_file()
    if has_fp32:  # a batched (not per-row) model: what micro-batching does where it is used
        out["fp32_servers"] = {}
        for name, options in {"default": [], "max-batch-1": ["--max-batch", "1"]}.items():
            server = Server(fp32, *options, log=logs / f"fp32-{name}.log")
            tp = served_throughput(server, texts, 32, args.throughput_requests)
            tp.pop("answers")
            out["fp32_servers"][name] = {"ready_seconds": server.ready_seconds, "throughput_32": tp, "exit_code": server.stop()}
            print(f"fp32 server {name}: 32 clients, one text each: {tp['texts_per_s']:.1f} texts/s, mean batch "
                  f"{tp['mean_batch']:.2f}, p50 {tp['p50_ms']:.1f} ms p99 {tp['p99_ms']:.1f} ms, errors {tp['errors']}", flush=True)

    print("where batching pays (in-process, no HTTP, 256 texts per cell)", flush=True)
    models = {"int8": artifact} | ({"fp32": fp32} if has_fp32 else {})
    out["batching"] = where_batching_pays(models, texts)
    out["loadavg_end"] = os.getloadavg()

    s = out["servers"]
    default, one = s["default"], s["max-batch-1"]
    soak, inv = default["soak"], default["invariance"]
    checks = [
        (f"{args.clients}x{args.requests}: errors", soak["errors"], "0", soak["errors"] == 0),
        (f"{args.clients}x{args.requests}: lost responses", soak["lost"], "0", soak["lost"] == 0),
        (f"{args.clients}x{args.requests}: p99 latency (ms)", soak["p99_ms"], "(info)", True),
        ("served / bench batch throughput", default["throughput_32"]["texts_per_s"] / bench["throughput_per_s"], ">= 0.70",
         default["throughput_32"]["texts_per_s"] >= 0.7 * bench["throughput_per_s"]),
        ("micro-batching / --max-batch 1 throughput", default["throughput_32"]["texts_per_s"] / one["throughput_32"]["texts_per_s"],
         ">= 1.00 (noise: ~5%)", default["throughput_32"]["texts_per_s"] >= 0.95 * one["throughput_32"]["texts_per_s"]),
        ("batched (per-row off) / bench throughput", s["batched (per-row off)"]["throughput_32"]["texts_per_s"] / bench["throughput_per_s"],
         "(info)", True),
        ("invariance: identical labels (fraction)", inv["identical_labels"] / max(inv["compared"], 1), "1.000",
         inv["identical_labels"] == inv["compared"] == inv["texts"]),
        ("  per-row off: identical labels (fraction)", s["batched (per-row off)"]["invariance"]["identical_labels"]
         / max(s["batched (per-row off)"]["invariance"]["compared"], 1), "(info)", True),
        ("start to ready (s)", default["ready_seconds"], "<= 5", default["ready_seconds"] <= 5),
    ]
    if has_fp32:
        f = out["fp32_servers"]
        ratio = f["default"]["throughput_32"]["texts_per_s"] / f["max-batch-1"]["throughput_32"]["texts_per_s"]
        checks.append(("fp32 (batched): micro-batching / --max-batch 1", ratio, ">= 1.00 (noise: ~5%)", ratio >= 0.95))
    checks += [
        ("SIGTERM exit codes all 0", float(all(r["exit_code"] == 0 for r in s.values())), "1", all(r["exit_code"] == 0 for r in s.values())),
    ]
    out["checks"] = [{"name": n, "value": v, "target": t, "ok": ok} for n, v, t, ok in checks]
    Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    hw = out["hardware"]
    print(f"\nmachine: {hw['cpu']}, {hw['cores_logical']} cores, onnxruntime {hw['onnxruntime']}; load average "
          f"start {load_start[0]:.2f}, end {out['loadavg_end'][0]:.2f} (1 min); results: {args.json}")
    for name, value, target, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name:44s} {value:9.3f}  target {target}")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
