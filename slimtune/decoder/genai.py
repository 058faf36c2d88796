"""`genai-int4` / `genai-fp32` exports: ONNX Runtime GenAI's model builder, run offline on an HF folder.

The builder (`python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p int4|fp32 -e cpu`)
writes `model.onnx` (+ `.data`) with fused GroupQueryAttention and, for int4, MatMulNBits
weights, plus `genai_config.json` and the tokenizer. It runs in a child process: it prints
hundreds of progress lines and, on a model it cannot convert, fails deep inside; the user gets one
line. (`-m` is not passed with `-i`, and `--help` crashes in 0.18.0.)

Gemma 3: the builder (0.18) reads a flat `rope_parameters` ({"rope_type", ...}) and
`rope_local_base_freq`; transformers 5 writes Gemma 3's rope settings nested by attention type
({"full_attention": {...}, "sliding_attention": {...}}) and drops `rope_local_base_freq`, so the
builder failed on `KeyError: 'rope_type'`. `builder_input` gives it a scratch folder of our own
(the weights and tokenizer linked, never a file written into the model's folder) whose config.json
carries both: the nested entries as they are (what transformers builds the model from) plus the flat
keys the builder reads (rope_type, rope_theta = the global layers', rope_local_base_freq = the
sliding layers'). Only plain rope on both kinds of layers is taken (Gemma 3 270M's). The sliding
layers get a full-length KV cache (`windowed_kv_cache=false`): with the windowed one, the plain
ONNX Runtime session that scores perplexity cannot start from an empty past.

Generation goes through `onnxruntime_genai` (the KV cache handled by its generator). Perplexity
needs the logits of every position, which the generator does not hand out for a whole sequence,
so it runs the same `model.onnx` in a plain ONNX Runtime session with an empty past.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import SlimtuneError
from .measure import Decoder, Sampling

GENAI_FORMATS = {"genai-int4": "int4", "genai-fp32": "fp32"}
# model types the builder lists but cannot build from a transformers 5 config: checked before any
# training (recipe.parse) and before the builder runs, so the user gets this line, not the builder's
UNBUILDABLE: dict[str, str] = {}
PACKAGED_TYPES = {"smollm2-135m": "llama", "gemma3-270m": "gemma3_text"}  # known before the GGUF is converted
NESTED_ROPE = "gemma3_text"  # rope_parameters nested by attention type (builder_input flattens a copy)


def check_buildable(model: str | Path, fmt: str) -> None:
    """A one-line error when `fmt` is a GenAI format that the builder cannot make from `model`
    (a packaged name or a folder; its config.json read as JSON, no torch)."""
    import json

    if fmt not in GENAI_FORMATS:
        return
    model_type = PACKAGED_TYPES.get(str(model))
    if model_type is None:
        try:
            model_type = json.loads((Path(model) / "config.json").read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return  # not a readable folder: loading it says why
    if model_type in UNBUILDABLE:
        raise SlimtuneError(f"{fmt} export of {model}: {UNBUILDABLE[model_type]}")


def export_genai(source: Path, fmt: str, out: Path, cache: Path, options: dict | None = None,
                 finish: Callable[[Path], None] | None = None) -> Path:
    """Build a GenAI folder from the HF causal-LM folder `source` (a save_pretrained folder: see
    `lm.plain_folder` for a weight-only one), atomically at `out`. `options`:
    the builder's `--extra_options` (e.g. {"accuracy_level": 1, "block_size": 32}); `finish` edits
    the built folder before it is moved into place (grid.rewrite)."""
    from ..artifacts.atomic import atomic_dir

    if fmt not in GENAI_FORMATS:
        raise SlimtuneError(f"export format {fmt!r} is not one of {', '.join(GENAI_FORMATS)}")
    check_buildable(source, fmt)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp, builder_input(Path(source)) as (given, extra):
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(given), "-o", str(tmp),
               "-p", GENAI_FORMATS[fmt], "-e", "cpu", "-c", str(cache)]
        options = (options or {}) | extra | {"hf_remote": False}  # the builder's trust_remote_code (False is its default too)
        cmd += ["--extra_options", *(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"HF_HUB_OFFLINE": "1"})
        if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            raise SlimtuneError(f"{fmt} export of {source} failed: {lines[-1] if lines else f'exit code {proc.returncode}'}")
        if finish is not None:
            finish(tmp)
    return out


@contextlib.contextmanager
def builder_input(source: Path):
    """(the folder the builder reads, builder options it needs): `source` itself, or for Gemma 3 a
    scratch folder with a config.json the builder reads (see the module's docstring); removed after."""
    import json
    import shutil
    import tempfile

    config = json.loads((source / "config.json").read_text(encoding="utf-8"))
    rope = config.get("rope_parameters") or {}
    if config.get("model_type") != NESTED_ROPE or "rope_type" in rope:
        yield source, {}
        return
    full, sliding = rope.get("full_attention") or {}, rope.get("sliding_attention") or {}
    kinds = {full.get("rope_type"), sliding.get("rope_type")}
    if kinds != {"default"}:
        raise SlimtuneError(f"{source}/config.json: Gemma 3 rope {sorted(map(str, kinds))} (full, sliding attention): "
                            "the GenAI export takes plain (default) rope on both")
    scratch = Path(tempfile.mkdtemp(prefix="slimtune-genai-input-"))
    try:
        for f in source.iterdir():
            if f.name != "config.json":
                (scratch / f.name).symlink_to(f.resolve())
        config["rope_parameters"] = rope | {"rope_type": "default", "rope_theta": full["rope_theta"],
                                            "rope_local_base_freq": sliding["rope_theta"]}
        (scratch / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        yield scratch, {"windowed_kv_cache": False}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class GenAIDecoder(Decoder):
    kind = "genai"

    def __init__(self, folder: Path):
        import json

        import onnxruntime_genai as og

        from ..model.folders import load_tokenizer

        self.folder = Path(folder)
        try:
            # as many intra-op threads as torch uses here, so torch and GenAI rows compare like with like
            import torch

            config = og.Config(str(self.folder))
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": torch.get_num_threads()}}}}))
            self.model = og.Model(config)
        except Exception as e:  # GenAI raises its own error type for a bad folder
            raise SlimtuneError(f"{self.folder}: cannot load GenAI model: {str(e).splitlines()[0]}") from None
        # the HF tokenizer the builder copied: the same ids as og.Tokenizer, and the chat template
        self.tokenizer = load_tokenizer(self.folder)
        decoder = json.loads((self.folder / "genai_config.json").read_text())["model"]
        self._stop = self.eos_ids() | set(np.atleast_1d(decoder.get("eos_token_id", [])).tolist())
        self.max_positions = int(decoder.get("context_length") or 1 << 30)
        self._session = None

    def stream(self, ids: list[int], max_new_tokens: int, stop: bool = True, sampling: Sampling | None = None) -> Iterator[int]:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        total = len(ids) + max_new_tokens
        # without `stop` (timing), min_length keeps the generator from ending at end-of-sequence
        params.set_search_options(do_sample=False, max_length=total, **({} if stop else {"min_length": total}))
        if sampling is not None and not sampling.greedy:
            # the builder writes top_k 50 into genai_config.json's search defaults: 0 turns it off, so
            # only temperature and top_p shape the draw, as in the torch decoder; random_seed -1 is random
            seed = -1 if sampling.seed is None else sampling.seed % (1 << 31)
            params.set_search_options(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                                      top_k=0, random_seed=seed)
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray([ids], dtype=np.int32))
        for _ in range(max_new_tokens):
            if gen.is_done():
                return
            gen.generate_next_token()
            nxt = int(gen.get_next_tokens()[0])
            yield nxt
            if stop and nxt in self._stop:
                return

    def logprobs(self, ids: list[int]) -> np.ndarray:
        sess = self._ort()
        feed = {"input_ids": np.asarray([ids], dtype=np.int64), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
        for inp in sess.get_inputs():
            if inp.name.startswith("past_key_values"):
                heads, dim = inp.shape[1], inp.shape[3]
                if not isinstance(dim, int):  # "kv_cache_dim": the head size
                    dim = self._head_size
                dtype = np.float16 if "float16" in inp.type else np.float32
                feed[inp.name] = np.zeros((1, heads, 0, dim), dtype=dtype)
            elif inp.name == "position_ids":
                feed[inp.name] = np.arange(len(ids), dtype=np.int64)[None]
        logits = sess.run(["logits"], feed)[0][0, :-1].astype(np.float64)  # (T-1, V)
        z = logits - logits.max(-1, keepdims=True)
        lse = np.log(np.exp(z).sum(-1))
        return z[np.arange(len(ids) - 1), ids[1:]] - lse

    def _ort(self):
        if self._session is None:
            import json

            import onnxruntime as ort

            cfg = json.loads((self.folder / "genai_config.json").read_text())["model"]["decoder"]
            self._head_size = int(cfg["head_size"])
            import torch

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            self._session = ort.InferenceSession(str(self.folder / cfg["filename"]), opts, providers=["CPUExecutionProvider"])
        return self._session
