"""The generate task: prompt/response pairs -> a causal LM, measured by response perplexity, greedy
answers and generation speed; exported as ONNX Runtime GenAI folders and GGUF files (slimtune/decoder/).

    task:   generate
    data:   {name: chatterbot_qa} | {path: pairs.jsonl, prompt_column: prompt, response_column: response}
    model:  smollm2-135m | PATH/TO/HF_CAUSAL_LM
    stages: [{name: untuned, method: baseline}, {name: lora, method: lora, max_minutes: 20}, ...]
    export: [genai-int4, genai-fp32, gguf-q4_k_m, gguf-q8_0, gguf-f16]
    eval:   {answer_prompts: 32, max_new_tokens: 32, ...}
    int4:   {algo: k_quant, block_size: 32, accuracy_level: 4, int8: [], grid: keep}   # how genai-int4 quantizes

A stage folder holds the HF folder, metrics.json and `greedy.json` (the greedy token ids of each
answered prompt: what an export's parity compares). Every artifact is measured the same way on
the held-out test pairs (`measure`): response perplexity, greedy answers (token F1, exact match,
samples), time to first token, prefill and decode tokens/s at batch 1 in a fresh process, peak RSS,
size; the decode speed-up over the baseline timed alternately in that process. An export's parity is
its first `parity_tokens` greedy tokens against those of its source stage. Without llama.cpp
(`slimtune[gguf]`), a GGUF export is written where gguf-py can write it, and its row says it was
not measured (one line: the extra to install) rather than failing the run.
`device:` and `trainer:` are not taken yet (a generate run trains on the CPU, in one process).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..decoder import methods, prune  # noqa: F401  (register baseline, full, lora, weight_only; prune_layers, prune_width)
from ..decoder.data import GenDataConfig, PairSplits, load_pairs
from ..decoder.export import DECODER_FORMATS, RECIPE_KEYS
from ..decoder.int4 import Int4Config
from ..errors import SlimtuneError
from ..measure.bench import artifact_size
from .base import Task
from ..text import eval_length, length_for
from .names import DEFAULT_LENGTH, GENERATE

GREEDY_FILE = "greedy.json"  # the greedy token ids of each answered prompt (what an export's parity compares)


@dataclass
class GenEvalConfig:
    """How every generative artifact is measured (the same for all stages of a run)."""

    max_length: int | None = None  # prompt + response tokens scored for perplexity; unset: the task's default (256, cut to the model)
    answer_prompts: int = 32  # distinct test prompts answered greedily (token F1 / exact match, parity)
    max_new_tokens: int = 32  # tokens generated per answer, at most
    parity_tokens: int = 32  # an export's first N greedy tokens compared with its source's
    speed_prompts: int = 8  # test prompts timed at batch 1 (median TTFT and decode tokens/s)
    speed_new_tokens: int = 32  # tokens generated per timed prompt (all of them: end-of-sequence does not stop the timing)
    samples: int = 5  # prompt -> answer examples shown in report.md
    isolate: bool = True  # time each artifact in a fresh process (its own peak RSS)

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise SlimtuneError(f"max_length must be >= 1, not {self.max_length!r}")
        for name in ("answer_prompts", "max_new_tokens", "parity_tokens", "speed_prompts", "speed_new_tokens"):
            if getattr(self, name) < 1:
                raise SlimtuneError(f"{name} must be >= 1, not {getattr(self, name)!r}")
        if self.samples < 0:
            raise SlimtuneError("samples must be >= 0")


class Generate(Task):
    name = GENERATE
    data_config = GenDataConfig
    eval_config = GenEvalConfig
    length_keys = ("max_length", "max_new_tokens", "parity_tokens", "speed_new_tokens")
    extras = {"int4": Int4Config}  # how genai-int4 quantizes
    formats = tuple(DECODER_FORMATS)
    recipe_keys = RECIPE_KEYS
    models_word = "causal LMs"
    default_length = DEFAULT_LENGTH[GENERATE]
    service = "openai"
    data_kind = "pairs"

    def claims(self, model: str) -> bool:
        from ..decoder.lm import is_generative

        return is_generative(model)

    def check_predict(self, model: str) -> None:
        raise SlimtuneError(f"predict: {model} is a causal LM, which answers prompts rather than labelling texts; "
                            f"use `slimtune generate {model} PROMPT`")

    def model_help(self) -> str:
        from ..model.convert_smollm2 import PACKAGED_DECODERS

        return f"a packaged decoder ({', '.join(PACKAGED_DECODERS)}) or a folder path"

    def check_export(self, model: str, fmt: str, recipe: bool = False) -> None:
        from ..decoder.genai import check_buildable
        from ..decoder.gguf_export import check_available

        if not recipe:  # `slimtune export --format gguf-q4_k_m` without llama.cpp: before any work
            check_available(fmt)  # (in a recipe the run goes on: that export's row says why it is missing)
        check_buildable(model, fmt)  # a GenAI export of an architecture its builder does not take

    def extras_to_dict(self, extras: dict) -> dict:
        # always written out: a genai-int4 export's fingerprint holds the options it was built with
        return {"int4": extras["int4"].as_dict()}

    def load_splits(self, data) -> PairSplits:
        return load_pairs(data)

    def prepare(self, recipe, splits, log):
        from ..decoder.profile import profile_data

        # unset lengths: the task's default cut to the model (a stage trains as the run scores, not on the data's p95)
        stages = [s if getattr(s.config, "max_length", 0) is not None else dataclasses.replace(
            s, config=dataclasses.replace(s.config, max_length=length_for(self, recipe.model))) for s in recipe.stages]
        ev = dataclasses.replace(recipe.eval, max_length=eval_length(self, recipe.model, recipe.eval.max_length, stages))
        return profile_data(splits, recipe.model, ev.max_length, log), stages, ev

    def load_model(self, source, splits):
        from ..decoder.lm import load_causal_lm

        return load_causal_lm(source)

    def measure_stage(self, folder, splits, ev, log, device="cpu", against=None) -> dict:
        metrics, greedy = measure(folder, splits, ev, log, against=against)
        (folder / GREEDY_FILE).write_text(json.dumps(greedy))
        return metrics

    def export_reference(self, recipe, source, staged, splits, ev):
        if not staged:
            raise SlimtuneError(f"{recipe.source}: export needs a stage (e.g. `method: baseline`) whose greedy answers it is compared with")
        return json.loads((Path(source) / GREEDY_FILE).read_text())

    def export(self, source, reference, fmt, folder, splits, recipe, ev, rf, log, against=None) -> dict:
        from ..decoder.export import write as write_export
        from ..decoder.gguf_export import GGUF_FORMATS, has_llama_cpp, not_runnable, tensor_types

        if fmt in GGUF_FORMATS and not has_llama_cpp():  # written where gguf-py can; measured only by llama.cpp
            reason = not_runnable(fmt)
            log(f"  {fmt}: {reason}")
            if reason.startswith("not written"):
                Path(folder).mkdir(parents=True, exist_ok=True)  # the run's export folder: its metrics.json says why
                return {"not_measured": reason, "runtime": "llama.cpp"}
            facts = write_export(Path(source), fmt, folder, rf.cache / "genai", recipe.int4, log)
            facts["gguf"] |= tensor_types(folder, fmt)
            return {"not_measured": reason, "runtime": "llama.cpp", "size_bytes": artifact_size(folder)} | facts
        facts = write_export(Path(source), fmt, folder, rf.cache / "genai", recipe.int4, log)
        if fmt in GGUF_FORMATS:
            facts["gguf"] |= tensor_types(folder, fmt)
        metrics, _ = measure(folder, splits, ev, log, reference, against=against)
        source_ppl = _stage_metrics(source).get("perplexity")
        if source_ppl:
            metrics["perplexity_vs_source"] = metrics["perplexity"] / source_ppl
        return metrics | facts

    def report_fields(self, recipe, splits, ev, rf, log, baseline, rows, compute) -> dict:
        return {"task": GENERATE,
                "eval": recipe.to_dict()["eval"] | {"max_length": ev.max_length, "answer_prompts": ev.answer_prompts, "speed_prompts": ev.speed_prompts,
                                                     "speed_new_tokens": ev.speed_new_tokens}}

    def markdown(self, report: dict) -> str:
        from ..decoder.report import markdown

        return markdown(report)


def _stage_metrics(folder) -> dict:
    """The metrics a finished stage folder holds ({} when it has none: a model folder as the source)."""
    try:
        return json.loads((Path(folder) / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def evaluate(dec, splits: PairSplits, ev: GenEvalConfig) -> tuple[dict, dict]:
    """Response perplexity and greedy answers (token F1, exact match, samples) of a loaded decoder
    on the test pairs, and its greedy ids per prompt: the quality half of `measure`."""
    from ..decoder.measure import answer_quality, response_perplexity

    start = time.perf_counter()
    metrics = response_perplexity(dec, splits.test, splits.system, ev.max_length)
    quality = answer_quality(dec, splits.test, splits.system, ev.answer_prompts, ev.max_new_tokens, ev.samples)
    greedy = quality.pop("_greedy_ids")
    metrics |= quality | {"eval_seconds": time.perf_counter() - start, "runtime": dec.kind,
                          "n_examples": len(splits.test)}
    return metrics, greedy


def measure(artifact: Path, splits: PairSplits, ev: GenEvalConfig, log: Callable[[str], None],
            source_greedy: dict | None = None, against: tuple[str, Path] | None = None) -> tuple[dict, dict]:
    """Metrics of one generative artifact, and its greedy ids per prompt. `against` (the baseline's
    name and folder): its decode speed-up over the baseline, timed alternately in the same process
    (the baseline's own row has none: 1x by definition)."""
    from ..decoder.bench import decode_speedup, speed_in_subprocess
    from ..decoder.lm import load_decoder
    from ..decoder.measure import first_token_agreement, generation_speed

    dec = load_decoder(artifact)
    metrics, greedy = evaluate(dec, splits, ev)
    if source_greedy is not None:
        metrics["parity"] = first_token_agreement(source_greedy, greedy, ev.parity_tokens)
    if hasattr(dec, "num_params"):
        metrics["params"] = int(dec.num_params())
    log(f"  perplexity {metrics['perplexity']:.3f}  token F1 {metrics['token_f1']:.4f}  "
        f"exact {metrics['exact_match']:.4f}; timing {ev.speed_prompts} prompts x {ev.speed_new_tokens} tokens")
    prompts = list(dict.fromkeys(splits.test.prompts))[: ev.speed_prompts]
    base = against[1] if against and Path(against[1]).resolve() != Path(artifact).resolve() else None
    if ev.isolate:
        del dec
        metrics |= speed_in_subprocess(artifact, prompts, splits.system, ev.speed_new_tokens, base)
    else:
        from ..measure.bench import peak_rss_mb

        metrics |= generation_speed(dec, prompts, splits.system, ev.speed_new_tokens) | {
            "peak_rss_mb": peak_rss_mb(), "peak_rss_note": "in-process"}
        if base is not None:
            metrics["decode_speedup"] = decode_speedup(load_decoder(base), dec, prompts, splits.system, ev.speed_new_tokens)
    if "decode_speedup" in metrics:
        metrics["decode_speedup"]["against"] = against[0]
    metrics["size_bytes"] = artifact_size(artifact)
    log(f"  TTFT {metrics['ttft_ms']:.1f} ms  prefill {metrics['prefill_tokens_per_s']:.0f} tokens/s  decode "
        f"{metrics['decode_tokens_per_s']:.1f} tokens/s  size {metrics['size_bytes'] / 2**20:.1f} MiB")
    return metrics, greedy
