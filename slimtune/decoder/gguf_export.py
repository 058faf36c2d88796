"""`gguf-*` exports: a Llama-family causal LM as one GGUF file for llama.cpp.

    gguf-f32     every tensor float32
    gguf-f16     2-D weights float16, norms float32 (what llama.cpp's converter writes)
    gguf-q8_0    8-bit blocks of 32: llama.cpp's quantizer with `slimtune[gguf]`, else gguf-py's own
    gguf-q4_k_m  llama.cpp's Q4_K_M mix (4/6-bit k-quants); needs `slimtune[gguf]` (llama-cpp-python)

The file is written here with gguf-py's GGUFWriter rather than by llama.cpp's
convert_hf_to_gguf.py: that script is not shipped in any package (it lives in llama.cpp's source
tree) and it needs the model's original tokenizer hash table to name the pre-tokenizer. The
metadata keys and tensor names are llama.cpp's `llama` architecture's; q and k rows are
reordered for llama.cpp's rope (`rope_interleave`). The tokenizer goes in as llama.cpp's `gpt2`
(byte-level BPE) model: tokens, types, merges, special ids and the chat template.

The k-quants are llama.cpp's own `llama_model_quantize`, run on an f32 file written first.
The export folder holds `model.gguf` and the HF tokenizer files (what slimtune tokenizes with:
the GGUF's own tokenizer gives the same ids, tests/test_gguf.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SlimtuneError

GGUF_FILE = "model.gguf"
GGUF_FORMATS = {
    "gguf-f32": "llama.cpp GGUF, float32",
    "gguf-f16": "llama.cpp GGUF, float16",
    "gguf-q8_0": "llama.cpp GGUF, 8-bit (Q8_0)",
    "gguf-q4_k_m": "llama.cpp GGUF, 4-bit k-quants (Q4_K_M; needs slimtune[gguf])",
}
LLAMA_CPP_FTYPE = {"gguf-q8_0": 7, "gguf-q4_k_m": 15}  # llama.h: LLAMA_FTYPE_MOSTLY_Q8_0, _Q4_K_M
INSTALL = "pip install 'slimtune[gguf]'"

# HF Llama parameter names -> llama.cpp's (per block: `blk.N.` + name)
BLOCK_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight"}


def has_llama_cpp() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def not_runnable(fmt: str) -> str:
    """Why a GGUF export has no measurements here (llama.cpp missing): one line naming the extra."""
    if fmt == "gguf-q4_k_m":
        return f"not written: llama.cpp's quantizer (llama-cpp-python) not installed — {INSTALL}"
    return f"not measured: llama-cpp-python not installed — {INSTALL}"


# the tensor types a format means for its 2-D weights; another type in the file is a fallback (norms stay F32)
INTENDED = {"gguf-f32": {"F32"}, "gguf-f16": {"F16"}, "gguf-q8_0": {"Q8_0"}, "gguf-q4_k_m": {"Q4_K", "Q6_K"}}


def tensor_types(folder: Path, fmt: str) -> dict:
    """What the written GGUF holds, read back with gguf-py: {"tensor_types": {type: count of 2-D
    weights}, "fallback": one line naming the weights stored in another type than `fmt` means, or
    None}. llama.cpp's k-quants pack rows in blocks of 256 values: a row of another width (SmolLM2's
    576) falls back to a type whose blocks fit (Q5_0, Q8_0); gguf-py's Q8_0 to F16 likewise."""
    from collections import Counter

    import gguf

    reader = gguf.GGUFReader(str(Path(folder) / GGUF_FILE))
    counts: Counter = Counter()
    fell: dict[str, Counter] = {}
    for t in reader.tensors:
        if len(t.shape) < 2:
            continue
        kind = t.tensor_type.name
        counts[kind] += 1
        if kind not in INTENDED[fmt]:
            role = ".".join(t.name.split(".")[2:]) if t.name.startswith("blk.") else t.name
            fell.setdefault(kind, Counter())[f"{role} ({int(t.shape[0])} wide)"] += 1
    line = "; ".join(f"{kind}: " + ", ".join(f"{role}" + (f" x{n}" if n > 1 else "") for role, n in sorted(roles.items()))
                     for kind, roles in sorted(fell.items()))
    return {"tensor_types": dict(sorted(counts.items())),
            "fallback": f"{sum(sum(r.values()) for r in fell.values())} of {sum(counts.values())} weights not "
                        f"{'/'.join(sorted(INTENDED[fmt]))}: {line}" if fell else None}


def check_available(fmt: str) -> None:
    """A format that needs llama.cpp's quantizer, asked for without it: one line naming the extra."""
    if fmt == "gguf-q4_k_m" and not has_llama_cpp():
        raise SlimtuneError(f"export format gguf-q4_k_m needs llama.cpp's quantizer: {INSTALL}")


def rope_interleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """q/k projection rows reordered per head from HF's rotate-half rope layout (pairs (i, i + d/2))
    to llama.cpp's (pairs (2i, 2i + 1)): the same attention scores once each runtime applies its rope."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def rope_uninterleave(w: np.ndarray, n_head: int) -> np.ndarray:
    """The inverse of `rope_interleave` (reading a GGUF's q/k back into HF's layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(source: Path, fmt: str, out: Path, log: Callable[[str], None] = print) -> dict:
    """Write the HF causal-LM folder `source` (`lm.plain_folder`: a weight-only stage is
    dequantized first) as `fmt` at `out` (atomically): `model.gguf` + the tokenizer files."""
    from ..artifacts.atomic import atomic_dir
    from .lm import load_causal_lm, plain_folder

    if fmt not in GGUF_FORMATS:
        raise SlimtuneError(f"export format {fmt!r} is not one of {', '.join(GGUF_FORMATS)}")
    check_available(fmt)
    quantizer = "llama.cpp" if fmt in LLAMA_CPP_FTYPE and has_llama_cpp() else None
    with plain_folder(Path(source)) as plain:
        model, tokenizer = load_causal_lm(plain)
        with atomic_dir(out) as tmp:
            if quantizer:
                staged = tmp / "_f32.gguf"
                facts = write_gguf(model, tokenizer, plain, staged, "gguf-f32")
                quantize(staged, tmp / GGUF_FILE, LLAMA_CPP_FTYPE[fmt])
                staged.unlink()
                facts["file_type"] = _ftype_name(LLAMA_CPP_FTYPE[fmt])
            else:
                facts = write_gguf(model, tokenizer, plain, tmp / GGUF_FILE, fmt)
                if fmt == "gguf-q8_0":
                    log(f"  gguf-q8_0 quantized by gguf-py (llama.cpp's quantizer is not installed: {INSTALL})")
            tokenizer.save_pretrained(tmp)
    return {"gguf": facts | {"quantizer": quantizer or ("gguf-py" if fmt == "gguf-q8_0" else None)}}


def _ftype_name(ftype: int) -> str:
    import gguf

    return gguf.LlamaFileType(ftype).name


def quantize(src: Path, dst: Path, ftype: int) -> None:
    """llama.cpp's `llama_model_quantize` (what the `llama-quantize` tool runs) from `src` to `dst`.

    llama.cpp writes a line per tensor (and one per fallback type, e.g. SmolLM2's 576-wide rows do
    not split into the k-quants' blocks of 256 and fall back to q5_0/q8_0) straight to the process's
    stderr; it goes to a scratch file here, and its last line into the error if quantizing fails."""
    import os
    import tempfile

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            code = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        lines = [ln for ln in log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    if code != 0 or not dst.is_file():
        raise SlimtuneError(f"llama.cpp could not quantize {src.name} to {_ftype_name(ftype)}: "
                            f"{lines[-1].strip() if lines else f'llama_model_quantize returned {code}'}")


def write_gguf(model, tokenizer, folder: Path, path: Path, fmt: str) -> dict:
    """One GGUF of arch `llama` from a loaded HF Llama (`folder`: where its tokenizer files are)."""
    import gguf

    cfg = model.config
    if cfg.model_type != "llama":
        raise SlimtuneError(f"{folder}: GGUF export writes Llama-family models (model_type llama); this one is {cfg.model_type}")
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise SlimtuneError(f"{folder}/config.json: rope scaling {rope.get('rope_type', rope.get('type'))!r} is not written to GGUF "
                            "(plain rope only)")
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    n_layer, n_head, n_kv = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_head
    ffn = sorted({state[f"model.layers.{i}.mlp.gate_proj.weight"].shape[0] for i in range(n_layer)})
    if len(ffn) > 1:  # llama.cpp reads a per-layer array but shapes arch llama's tensors by layer 0's size
        raise SlimtuneError(f"{folder}: layers have different FFN sizes ({', '.join(map(str, ffn))}); "
                            "llama.cpp's llama architecture needs one size for every layer")
    tied = bool(getattr(cfg, "tie_word_embeddings", False))

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(Path(str(getattr(cfg, "_name_or_path", "") or folder)).name or "model")
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(n_layer))
    w.add_feed_forward_length(int(ffn[0]))
    w.add_head_count(int(n_head))
    w.add_head_count_kv(int(n_kv))
    w.add_key_length(int(head_dim))  # width-pruned KV groups leave head_dim != hidden / heads
    w.add_value_length(int(head_dim))
    w.add_rope_dimension_count(int(head_dim))
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_vocab_size(int(cfg.vocab_size))
    ftype = {"gguf-f32": gguf.LlamaFileType.ALL_F32, "gguf-f16": gguf.LlamaFileType.MOSTLY_F16,
             "gguf-q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[fmt]
    w.add_file_type(int(ftype))
    if fmt == "gguf-q8_0":
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pre = add_tokenizer(w, tokenizer, folder, int(cfg.vocab_size))

    for name, data in state.items():
        target = _gguf_name(name, folder)
        if target == "output.weight" and tied:
            continue  # llama.cpp reuses token_embd when `output` is absent
        if target.endswith("attn_q.weight"):
            data = rope_interleave(data, n_head)
        elif target.endswith("attn_k.weight"):
            data = rope_interleave(data, n_kv)
        _add_tensor(w, target, data, fmt, gguf)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"file_type": ftype.name, "tokenizer_pre": pre, "blocks": n_layer, "tied_embeddings": tied}


def _gguf_name(name: str, folder: Path) -> str:
    if name in TOP_TENSORS:
        return TOP_TENSORS[name]
    parts = name.split(".")
    if name.startswith("model.layers.") and ".".join(parts[3:]) in BLOCK_TENSORS:
        return f"blk.{parts[2]}.{BLOCK_TENSORS['.'.join(parts[3:])]}"
    raise SlimtuneError(f"{folder}: weight {name} has no llama.cpp counterpart written here (biases and extra "
                        "tensors are not exported to GGUF)")


def _add_tensor(w, name: str, data: np.ndarray, fmt: str, gguf) -> None:
    """Norms (1-D) stay float32; 2-D weights as the format says (Q8_0 where rows split into blocks of 32)."""
    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 1 or fmt == "gguf-f32":
        w.add_tensor(name, data)
    elif fmt == "gguf-q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        w.add_tensor(name, data.astype(np.float16))


# what tokenizer.json's pre-tokenizer is, and the llama.cpp pre-tokenizer (tokenizer.ggml.pre, a name llama-vocab.cpp knows) that splits text the same way
def _pre_name(pre: dict | None) -> str | None:
    def byte_level(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and p.get("use_regex", True) and not p.get("add_prefix_space", False)

    if pre and byte_level(pre):
        return "gpt-2"  # GPT-2's split regex, which llama.cpp's gpt2 pre-tokenizer reproduces
    steps = (pre or {}).get("pretokenizers") or []
    if (pre or {}).get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Digits" \
            and steps[0].get("individual_digits") and byte_level(steps[1]):
        return "smollm"  # digits one by one, then GPT-2's regex (SmolLM2's original tokenizer)
    return None


def add_tokenizer(w, tokenizer, folder: Path, n_vocab: int) -> str:
    """The byte-level BPE tokenizer as llama.cpp's `gpt2` model; returns the pre-tokenizer name."""
    import gguf

    try:
        spec = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise SlimtuneError(f"{folder}: GGUF export needs the fast tokenizer's tokenizer.json (byte-level BPE)") from None
    model, pre = spec.get("model") or {}, _pre_name(spec.get("pre_tokenizer"))
    if model.get("type") != "BPE" or pre is None or spec.get("normalizer"):
        what = f"{model.get('type')} with pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')}"
        raise SlimtuneError(f"{folder}/tokenizer.json: {what} is not a byte-level BPE tokenizer llama.cpp reads the same way "
                            "(GGUF export supports GPT-2-style byte-level BPE, as SmolLM2's)")
    vocab = tokenizer.get_vocab()
    if max(vocab.values()) >= n_vocab:
        raise SlimtuneError(f"{folder}: the tokenizer has ids up to {max(vocab.values())} but config.json's vocab_size is {n_vocab}")
    added = {i: t for i, t in tokenizer.added_tokens_decoder.items()}
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]  # ids no token uses (a vocabulary padded to a round size)
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = gguf.TokenType.NORMAL if i not in added else \
            gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise SlimtuneError(f"{folder}/tokenizer.json: no BPE merges")
    probe = tokenizer("a")["input_ids"]  # what the HF tokenizer adds around a text, written out for llama.cpp
    special.add_special_token = {"bos": tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id],
                                 "eos": tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]}
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(w, quiet=True)
    return pre
