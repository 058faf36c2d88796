"""Vocabulary trimming: keep only the tokens the task's texts use (plus specials), remap the
tokenizer and cut the embedding table to those rows.

MiniLM's 30,522 x 384 word-embedding table is half of its parameters, and a single task uses a
fraction of it (Rotten Tomatoes' train + validation texts: 13,639 tokens). The trimmed tokenizer is
the original one with a smaller WordPiece vocabulary, renumbered in the original order:

- text whose tokens were all kept tokenizes to the same tokens (WordPiece is greedy longest-match,
  and every piece it picked before is still there), so its predictions are unchanged;
- with `keep_characters`, every single character and `##` character piece is kept too, so an
  unseen word splits into smaller known pieces instead of becoming [UNK].
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlimtuneError
from ..stage import StageContext, StageResult, register

SPLITS = ("train", "val", "test")


@dataclass
class TrimVocabConfig:
    # which splits' *texts* (never labels) define the vocabulary; adding test is transductive:
    # say so when reporting it
    corpus: list[str] = field(default_factory=lambda: ["train", "val"])
    keep_characters: bool = True  # keep every 1-character piece: unseen words split, not [UNK]

    def __post_init__(self) -> None:
        bad = [s for s in self.corpus if s not in SPLITS]
        if bad or not self.corpus:
            raise SlimtuneError(f"trim_vocab: corpus must list splits from {', '.join(SPLITS)}, got {self.corpus}")


def kept_ids(tokenizer, texts: list[str], keep_characters: bool = True) -> list[int]:
    """Sorted ids of the tokens `texts` use, the special tokens and (optionally) characters."""
    ids = {i for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in row}
    ids |= set(tokenizer.all_special_ids)
    if keep_characters:
        ids |= {i for t, i in tokenizer.get_vocab().items() if len(t.removeprefix("##")) == 1}
    return sorted(ids)


def trim_tokenizer(tokenizer, kept: list[int]):
    """The same tokenizer over the vocabulary `kept` (old ids), renumbered 0..len(kept)-1."""
    from transformers import AutoTokenizer

    from ..model.folders import from_pretrained

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "WordPiece":
        raise SlimtuneError(f"trim_vocab: only WordPiece tokenizers (BERT family) are supported, not {spec['model']['type']}")
    new_id = {old: new for new, old in enumerate(kept)}
    token = {i: t for t, i in spec["model"]["vocab"].items()}
    spec["model"]["vocab"] = {token[old]: new for new, old in enumerate(kept)}
    for added in spec["added_tokens"]:
        added["id"] = new_id[added["id"]]
    post = spec.get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        for special in post["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif post.get("type") == "BertProcessing":
        post["sep"][1], post["cls"][1] = new_id[post["sep"][1]], new_id[post["cls"][1]]
    elif post:
        raise SlimtuneError(f"trim_vocab: unsupported tokenizer post-processor {post.get('type')!r}")
    if spec.get("padding"):
        spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        for extra in ("vocab.txt",):  # a slow-tokenizer vocabulary would disagree with the new one
            (Path(tmp) / extra).unlink(missing_ok=True)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
        return from_pretrained(AutoTokenizer, tmp)


def trim_embeddings(model, kept: list[int], pad_id: int | None) -> None:
    """Keep rows `kept` of the input embedding table, in place."""
    import torch

    old = model.get_input_embeddings()
    new = torch.nn.Embedding(len(kept), old.embedding_dim, padding_idx=pad_id)
    new.weight.data = old.weight.data[torch.tensor(kept)].clone()
    model.set_input_embeddings(new)
    model.config.vocab_size = len(kept)
    model.config.pad_token_id = pad_id


@register("trim_vocab", TrimVocabConfig)
def trim_vocab(model, tokenizer, cfg: TrimVocabConfig, ctx: StageContext):
    """Keep only the tokens the task's texts use (+ specials, characters); remap the tokenizer."""
    texts = [t for name in cfg.corpus for t in getattr(ctx.splits, name).texts]
    kept = kept_ids(tokenizer, texts, cfg.keep_characters)
    before = model.get_input_embeddings().num_embeddings
    if before != len(tokenizer):
        raise SlimtuneError(f"trim_vocab: the embedding table has {before} rows but the tokenizer {len(tokenizer)} tokens")
    new_tok = trim_tokenizer(tokenizer, kept)
    trim_embeddings(model, kept, new_tok.pad_token_id)
    ctx.log(f"  kept {len(kept):,} of {before:,} tokens ({', '.join(cfg.corpus)} texts"
            f"{' + characters' if cfg.keep_characters else ''})")
    return StageResult(model, new_tok, {"vocab_before": before, "vocab_after": len(kept), "vocab_corpus": "+".join(cfg.corpus)})
