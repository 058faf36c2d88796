"""What every trimmed tokenizer shares: the special tokens' ids renumbered wherever the fast
tokenizer's backend JSON (`tokenizer.json`) holds them, and the edited JSON rebuilt by the
`tokenizers` library and wrapped back into the tokenizer's own transformers class.

Why the JSON is edited by hand: neither `tokenizers` nor transformers has an API to remove pieces
from a vocabulary. The JSON is the backend's complete, documented description; everything but the
vocabulary and the ids that point into it (normalizer, pre-tokenizer, decoder, the post-processor's
templates) is kept as it is, and `Tokenizer.from_str` rebuilds the model (its trie, its scores)
exactly as it would from a `tokenizer.json` on disk.
"""

from __future__ import annotations

import json
import tempfile

from ...errors import SlimtuneError

# what a from_pretrained records about where it was loaded from, or ids/vocabularies of the old
# tokenizer: never handed to the trimmed one
STALE_KWARGS = {"name_or_path", "is_local", "local_files_only", "added_tokens_decoder", "tokenizer_object",
                "vocab", "merges"}


def spec_of(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise SlimtuneError(f"trim_vocab: needs a fast tokenizer (tokenizer.json); {type(tokenizer).__name__} has none")
    return json.loads(backend.to_str())


def renumber_specials(spec: dict, new_id: dict[int, int]) -> None:
    """Point the added tokens, the post-processor's special tokens and the padding at new ids."""
    for added in spec.get("added_tokens") or []:
        added["id"] = new_id[added["id"]]
    renumber_post_processor(spec.get("post_processor"), new_id)
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]


def renumber_post_processor(post: dict | None, new_id: dict[int, int]) -> None:
    """XLM-R's TemplateProcessing (or RobertaProcessing) holds <s> and </s> by id, BERT's [CLS]/[SEP]:
    left alone, every encoding would start and end with whatever pieces took those ids."""
    kind = (post or {}).get("type")
    if kind is None or kind == "ByteLevel":  # no post-processor, or one without ids
        return
    if kind == "TemplateProcessing":
        for special in post["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        post["sep"][1], post["cls"][1] = new_id[post["sep"][1]], new_id[post["cls"][1]]
    elif kind == "Sequence":
        for inner in post["processors"]:
            renumber_post_processor(inner, new_id)
    else:
        raise SlimtuneError(f"trim_vocab: unsupported tokenizer post-processor {kind!r}")


def rebuild(tokenizer, spec: dict):
    """The tokenizer `spec` describes, in `tokenizer`'s transformers class with its settings (special
    tokens, model_max_length, padding side), as saved and loaded back: what the trimmed stage
    returns is exactly what every export's folder will load (AutoTokenizer, trust_remote_code=False)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from ...model.folders import from_pretrained

    backend = Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in STALE_KWARGS and not k.endswith("_file")}
    wrapped = type(tokenizer)(tokenizer_object=backend, **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        wrapped.save_pretrained(tmp)
        return from_pretrained(AutoTokenizer, tmp)
