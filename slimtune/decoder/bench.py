"""Time one generative artifact in a fresh process (`python -m slimtune.decoder.bench`), as
`measure/bench.py` does for classifiers: its own peak RSS, clean caches; prints one JSON line.

Apart from measure.py because it loads the artifact (lm.py), and lm.py uses measure.py's decoders.
"""

from __future__ import annotations

from pathlib import Path

from .measure import decode_block


def speed_in_subprocess(artifact: Path, prompts: list[str], system: str | None, new_tokens: int,
                        against: Path | None = None) -> dict:
    """`generation_speed` of `artifact` in a fresh Python process: its own peak RSS, clean caches.
    With `against` (the baseline's folder), that one is loaded once peak RSS is read and the two
    decode alternately (`decode_speedup`)."""
    from ..measure.bench import run_module_json

    extra = ["--against", str(against)] if against is not None else []
    return run_module_json("slimtune.decoder.bench", artifact, {"prompts": prompts, "system": system}, "--prompts",
                           ["--new-tokens", str(new_tokens), *extra], "generation benchmark")


def decode_speedup(base, other, prompts: list[str], system: str | None, new_tokens: int, rounds: int | None = None) -> dict:
    """The decode speed-up of `other` over `base` (two loaded Decoders), timed alternately
    (measure/alternate.py): each block is one prompt's per-token decode times, prompts taken in turn."""
    from ..measure.alternate import ROUNDS, alternate_until_quiet
    from .chat import prompt_ids

    ids = [prompt_ids(other.tokenizer, p, system) for p in prompts]
    base_ids = [prompt_ids(base.tokenizer, p, system) for p in prompts]
    for dec, first in ((base, base_ids[0]), (other, ids[0])):
        decode_block(dec, first, 2)  # warm-up
    return alternate_until_quiet(lambda r: decode_block(base, base_ids[r % len(prompts)], new_tokens),
                                 lambda r: decode_block(other, ids[r % len(prompts)], new_tokens), rounds or ROUNDS)


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
    ap.add_argument("--against", help="the baseline: decode speed-up timed alternately, loaded after peak RSS is read")
    a = ap.parse_args()
    spec = json.loads(Path(a.prompts).read_text())
    dec = load_decoder(a.artifact)
    result = generation_speed(dec, spec["prompts"], spec.get("system"), a.new_tokens) | {"peak_rss_mb": peak_rss_mb()}
    if a.against:
        result["decode_speedup"] = decode_speedup(load_decoder(a.against), dec, spec["prompts"], spec.get("system"),
                                                  a.new_tokens)
    print(json.dumps(result))


if __name__ == "__main__":
    _main()
