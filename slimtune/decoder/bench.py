"""Time one generative artifact in a fresh process (`python -m slimtune.decoder.bench`), as
`measure/bench.py` does for classifiers: its own peak RSS, clean caches; prints one JSON line.

Apart from measure.py because it loads the artifact (lm.py), and lm.py uses measure.py's decoders.
"""

from __future__ import annotations

from pathlib import Path


def speed_in_subprocess(artifact: Path, prompts: list[str], system: str | None, new_tokens: int) -> dict:
    """`generation_speed` of `artifact` in a fresh Python process: its own peak RSS, clean caches."""
    from ..measure.bench import run_module_json

    return run_module_json("slimtune.decoder.bench", artifact, {"prompts": prompts, "system": system}, "--prompts",
                           ["--new-tokens", str(new_tokens)], "generation benchmark")


def _main() -> None:
    import argparse
    import json

    from ..measure.bench import peak_rss_mb
    from ..model.folders import quiet_libraries
    from .lm import load_decoder
    from .measure import generation_speed

    quiet_libraries()
    ap = argparse.ArgumentParser(description="time one generative artifact at batch 1; prints one JSON line")
    ap.add_argument("artifact")
    ap.add_argument("--prompts", required=True, help='JSON {"prompts": [...], "system": ...}')
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    spec = json.loads(Path(a.prompts).read_text())
    dec = load_decoder(a.artifact)
    result = generation_speed(dec, spec["prompts"], spec.get("system"), a.new_tokens)
    print(json.dumps(result | {"peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    _main()
