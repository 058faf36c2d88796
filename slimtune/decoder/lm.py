"""Load a causal LM (packaged `smollm2-135m` / `gemma3-270m` or an HF folder), a GenAI export or a GGUF (llama.cpp) as a `Decoder`."""

from __future__ import annotations

import contextlib
from pathlib import Path

from ..errors import SlimtuneError
from ..model.convert_smollm2 import PACKAGED_DECODERS

GENAI_CONFIG = "genai_config.json"  # what the ONNX Runtime GenAI builder writes beside model.onnx


def resolve(name_or_path: str | Path) -> Path:
    key = str(name_or_path)
    if key in PACKAGED_DECODERS:
        from ..model.folders import resolve as resolve_packaged

        return resolve_packaged(key)
    from ..model.folders import check_model_dir, check_no_custom_code

    path = Path(key)
    if is_gguf(path):
        return path
    if path.exists() and not path.is_dir():
        raise SlimtuneError(f"model {key} is a file, not a model folder (give the folder that holds config.json and the weights)")
    if not path.is_dir():
        raise SlimtuneError(f"model not found: {key} is not a folder (packaged decoders: {', '.join(PACKAGED_DECODERS)})")
    if (path / GENAI_CONFIG).is_file():
        check_no_custom_code(path)
    else:
        check_model_dir(path)
    return path


def is_generative(name_or_path: str | Path) -> bool:
    """A packaged decoder, a GenAI export, or a folder whose config names a causal LM: read as
    JSON, so `slimtune eval` / `bench` pick their path without importing torch."""
    import json

    if str(name_or_path) in PACKAGED_DECODERS:
        return True
    path = Path(name_or_path)
    if is_genai(path) or is_gguf(path):
        return True
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or [])


def is_genai(path: Path) -> bool:
    return (Path(path) / GENAI_CONFIG).is_file()


def is_gguf(path: Path) -> bool:
    """A `.gguf` file or a folder holding one (a `gguf-*` export): run by llama.cpp."""
    return find_gguf(path) is not None


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file `path` is or holds (a folder with exactly one `.gguf` and no config.json), else None."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == ".gguf" else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise SlimtuneError(f"{path}: holds {len(found)} GGUF files ({', '.join(f.name for f in found)}); give one of them")
    return found[0] if found else None


def load_causal_lm(name_or_path: str | Path):
    """(model, tokenizer) in float32, eval mode; the tokenizer gets a pad token (its eos) if it has none."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..model.folders import first_line as _first_line
    from ..model.folders import from_pretrained, load_config

    path = resolve(name_or_path)
    if is_genai(path):
        raise SlimtuneError(f"{path}: an ONNX Runtime GenAI export cannot be trained further; start from an HF folder")
    if is_gguf(path):
        raise SlimtuneError(f"{path}: a GGUF export cannot be trained or exported further; start from an HF folder")
    config = load_config(path)
    if not any(a.endswith("ForCausalLM") for a in (config.architectures or [])) and getattr(config, "is_decoder", None) is False:
        raise SlimtuneError(f"{path}: {config.model_type} is not a causal LM (generate needs a GPT-family decoder)")
    from ..artifacts import compact

    if compact.detect(path):  # weight-only int8 / int4 storage, dequantized to fp32 here
        return compact.load(path, config).float().eval(), _tokenizer(path, config)
    try:
        model = from_pretrained(AutoModelForCausalLM, path, dtype=torch.float32)
    except ValueError as e:  # an encoder config: transformers names the missing mapping
        raise SlimtuneError(f"{path}: not a causal LM ({_first_line(e)})") from None
    except Exception as e:  # safetensors, torch and transformers each raise their own kinds
        raise SlimtuneError(f"{path}: cannot load weights: {_first_line(e)}") from None
    return model.eval(), _tokenizer(path, config)


def _tokenizer(path: Path, config):
    """The folder's tokenizer, with a pad token (its eos) if it has none."""
    from ..model.folders import load_tokenizer

    tokenizer = load_tokenizer(path, getattr(config, "vocab_size", None))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def plain_folder(source: Path):
    """`source` as a folder the GenAI builder reads (save_pretrained weights): as it is, or, for a
    weight-only (compact) stage, written out dequantized to a temporary folder for the block. Its
    int4 export then re-quantizes those already-rounded weights."""
    import shutil
    import tempfile

    from ..artifacts import compact

    if not compact.detect(Path(source)):
        yield Path(source)
        return
    scratch = Path(tempfile.mkdtemp(prefix="slimtune-dequantized-"))
    try:
        model, tokenizer = load_causal_lm(source)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        del model
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_decoder(path: str | Path):
    """A `Decoder` for a causal-LM folder (torch), a GenAI export folder or a GGUF (llama.cpp)."""
    path = resolve(path)
    if is_gguf(path):
        from .llamacpp import LlamaCppDecoder

        return LlamaCppDecoder(find_gguf(path))
    if is_genai(path):
        from .genai import GenAIDecoder

        return GenAIDecoder(path)
    from .measure import TorchDecoder

    return TorchDecoder(*load_causal_lm(path))


def stream_answer(path: str | Path, prompt: str, system: str | None = None, max_new_tokens: int = 128):
    """Yield the greedy answer to `prompt` piece by piece as it is generated (torch, GenAI or GGUF):
    each piece is the new text since the last one, characters kept whole (pieces.text_pieces)."""
    from .chat import prompt_ids
    from .pieces import text_pieces

    if not prompt.strip():
        raise SlimtuneError("generate: the prompt is empty")
    if max_new_tokens < 1:
        raise SlimtuneError("generate: --max-new-tokens must be >= 1")
    dec = load_decoder(path)
    yield from text_pieces(dec.tokenizer, dec.stream(prompt_ids(dec.tokenizer, prompt, system), max_new_tokens))
