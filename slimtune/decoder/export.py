"""The export formats of a causal LM, for a generate recipe's `export:` and for `slimtune export`.

    hf          a plain Hugging Face causal-LM folder (safetensors): a LoRA stage as its merged
                weights, a weight-only stage dequantized to fp32
    genai-fp32  ONNX Runtime GenAI, fp32 weights (genai.py)
    genai-int4  ONNX Runtime GenAI, 4-bit MatMulNBits weights; layer weights already on a 4-bit
                grid keep it exactly (grid.py), the rest as `Int4Config` says
    gguf-f32, gguf-f16, gguf-q8_0, gguf-q4_k_m
                one GGUF file for llama.cpp (gguf_export.py; q4_k_m needs slimtune[gguf])

`write` builds one (atomically: a finished folder or none). `export_checked` is `slimtune export`
for a decoder: write, then check the export against its source on held-out pairs the way a
generate recipe's exports are checked: the first N greedy tokens on the same prompts, and the
response perplexity of both.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import SlimtuneError
from .genai import GENAI_FORMATS, export_genai
from . import gguf_export
from .gguf_export import GGUF_FORMATS, export_gguf, not_runnable, tensor_types

DECODER_FORMATS = {
    "hf": "a Hugging Face causal-LM folder (safetensors; LoRA merged, weight-only dequantized)",
    "genai-fp32": "ONNX Runtime GenAI, fp32",
    "genai-int4": "ONNX Runtime GenAI, int4 weights (MatMulNBits)",
    **GGUF_FORMATS,
}
RECIPE_KEYS = {"genai-int4": ("int4",)}  # format -> the recipe blocks its export is built with (its fingerprint holds them)


def write(source: Path, fmt: str, out: Path, cache: Path, int4=None, log: Callable[[str], None] = print) -> dict:
    """Write the causal LM at `source` as `fmt` at `out`; returns facts for the report (the int4
    options used and whether the grid was kept). `int4`: an `Int4Config` (default: its defaults)."""
    from ..artifacts.atomic import atomic_dir
    from . import grid
    from .lm import load_causal_lm, plain_folder
    from .int4 import Int4Config

    if fmt not in DECODER_FORMATS:
        raise SlimtuneError(f"export format {fmt!r} is not one for causal LMs: {', '.join(DECODER_FORMATS)}")
    source = Path(source)
    if fmt == "hf":
        model, tokenizer = load_causal_lm(source)
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        return {}
    if fmt in GGUF_FORMATS:
        return export_gguf(source, fmt, out, log)
    int4 = int4 or Int4Config()
    options = int4.builder_options() if fmt == "genai-int4" else None
    facts: dict = {}
    with plain_folder(source) as plain:
        kept = grid.plan(plain) if options and int4.grid == "keep" else None
        if kept is not None:  # layer weights already on a 4-bit grid (the packaged GGUF's, or a LoRA's base's)
            log(f"  genai-int4 keeps the 4-bit grid of {kept.source}" + (" (LoRA adapter unmerged)" if kept.adapter else ""))
            facts = grid.export_int4(kept, out, cache, options)
        else:
            export_genai(plain, fmt, out, cache, options)
            facts = {"grid": "requantized"} if options else {}
    return ({"int4": options | facts} if options else {})


def export_checked(model: str | Path, fmt: str, out: Path, data=None, parity_tokens: int = 32, prompts: int = 8,
                   pairs: int = 64, log: Callable[[str], None] = print) -> dict:
    """`slimtune export` of a causal LM: write `fmt` at `out`, then compare it with its source on
    the test split of `data` (a GenDataConfig; default: the packaged chatterbot_qa): how many of
    `prompts` greedy answers agree on their first `parity_tokens` tokens, and the response
    perplexity of both on up to `pairs` held-out pairs. Writes `out/metrics.json`."""
    from .data import GenDataConfig, PairSet, load_pairs
    from .lm import load_decoder, resolve
    from .measure import answer, first_token_agreement, response_perplexity

    src = resolve(model)
    splits = load_pairs(data or GenDataConfig(name="chatterbot_qa"))
    system = splits.system
    test = PairSet(splits.test.prompts[:pairs], splits.test.responses[:pairs])
    asked = list(dict.fromkeys(test.prompts))[:prompts]
    with tempfile.TemporaryDirectory(prefix="slimtune-genai-cache-") as cache:
        facts = write(src, fmt, Path(out), Path(cache), log=log)
    if fmt in GGUF_FORMATS:
        facts["gguf"] |= tensor_types(Path(out), fmt)
    result: dict = {"format": fmt, "source": str(model), "artifact": str(out), "data": splits.source, **facts}
    if fmt in GGUF_FORMATS and not gguf_export.has_llama_cpp():  # written by gguf-py; only llama.cpp runs it
        result["not_measured"] = not_runnable(fmt)
        (Path(out) / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
        return result
    side = {}
    for name, path in (("source", src), ("export", Path(out))):
        dec = load_decoder(path)
        greedy = {p: answer(dec, p, system, parity_tokens)[1] for p in asked}
        side[name] = (greedy, response_perplexity(dec, test, system)["perplexity"])
        del dec
    result["parity"] = first_token_agreement(side["source"][0], side["export"][0], parity_tokens)
    result["perplexity"], result["source_perplexity"] = side["export"][1], side["source"][1]
    result["perplexity_ratio"] = side["export"][1] / side["source"][1]
    (Path(out) / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    return result

