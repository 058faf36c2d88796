"""Issue 25's check of the report's speed-up: the main job's printed (alternated) speed-up of its
final artifact against two re-timings of the same two artifacts: `slimtune bench --runs 200` in
fresh processes, baseline and artifact in turn, 3 rounds (how the issue re-timed it), and
`slimtune bench FINAL --against BASELINE` (alternated blocks, like the report).

    python benchmarks/retime_main_job.py OUT_FOLDER

The recipe is recipes/default.yaml with a short training (1,200 texts, one epoch, no extra texts):
the artifacts' architecture, hence their speed, is the full job's; their accuracy is not. ~5 min of
training plus ~3 min of timing on 2 cores. Not a test; run it on a quiet machine."""
import json, subprocess, sys, time, yaml, statistics
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
out = Path(sys.argv[1]); out.parent.mkdir(parents=True, exist_ok=True)
raw = yaml.safe_load((REPO / "recipes/default.yaml").read_text())
raw["data"]["max_train_samples"] = 1200
for st in raw["stages"]:
    if "epochs" in st:
        st["epochs"] = 1
    st.pop("extra_texts", None)
rp = out.parent / "short_default.yaml"; rp.write_text(yaml.safe_dump(raw, sort_keys=False))
exe = str(Path(sys.executable).parent / "slimtune")
t0 = time.time()
p = subprocess.run([exe, "run", str(rp), "--out", str(out), "--json", "-q"], capture_output=True, text=True)
print("run exit", p.returncode, f"{time.time()-t0:.0f}s", p.stderr[-2000:] if p.returncode else "")
rep = json.loads((out / "report.json").read_text())
rows = {r["name"]: r for r in rep["stages"]}
for name, r in rows.items():
    m = r["metrics"]; s = m.get("speedup") or {}
    print(name, "acc", round(m.get("accuracy", 0), 4), "p50", round(m.get("latency_ms_p50", 0), 3), "speedup", {k: s.get(k) for k in ("speedup", "ratio_min", "ratio_max", "rounds", "noisy")})
base = out / "stages/01-finetune"; final = out / rows[list(rows)[-1]]["artifact"]
ratios = []
for rnd in range(3):
    p50 = {}
    for name, folder in ((("base", base), ("final", final)) if rnd % 2 == 0 else (("final", final), ("base", base))):
        q = subprocess.run([exe, "bench", str(folder), "--runs", "200"], capture_output=True, text=True)
        p50[name] = json.loads(q.stdout)["latency_ms_p50"]
    ratios.append(p50["base"] / p50["final"]); print("round", rnd, p50, round(ratios[-1], 2))
printed = rows[list(rows)[-1]]["metrics"]["speedup"]["speedup"]
print("printed", round(printed, 2), "re-timed median", round(statistics.median(ratios), 2), "ratio", round(printed / statistics.median(ratios), 3))
q = subprocess.run([exe, "bench", str(final), "--runs", "200", "--against", str(base)], capture_output=True, text=True)
print("bench --against:", json.dumps(json.loads(q.stdout).get("speedup"), default=str)[:400] if q.returncode == 0 else q.stderr[-500:])
