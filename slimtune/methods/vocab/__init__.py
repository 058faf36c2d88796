"""Vocabulary trimming: keep only the pieces the task's texts use (plus specials), remap the
tokenizer and cut the embedding table to those rows.

MiniLM's 30,522 x 384 word-embedding table is half of its parameters, and a single task uses a
fraction of it (Rotten Tomatoes' train + validation texts: 13,639 tokens); multilingual-e5-small's
250,037 x 384 table is 96M of its 117.5M. The trimmed tokenizer is the original one with a smaller
vocabulary, renumbered in the original order; the tokenizer's model decides what "unchanged" means:

- WordPiece (BERT, MiniLM; `wordpiece.py`): greedy longest match, so text whose tokens were all
  kept tokenizes to the same tokens;
- Unigram (SentencePiece: XLM-R, multilingual-e5; `unigram.py`): pieces keep their original scores,
  so text whose best segmentation used only kept pieces segments exactly as before.

Either way its predictions are unchanged. `keep_characters` decides what unseen text falls back
to: `all` (or true) keeps every 1-character piece of the vocabulary, so an unseen word splits into
smaller kept pieces instead of becoming unknown; `corpus` keeps those of the characters the corpus
texts contain (plus `extra_characters`), smaller for large alphabets (XLM-R holds 13,828 such
pieces) but an unseen character becomes unknown; `none` (or false) keeps only the corpus' pieces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import SlimtuneError
from ...stage import StageContext, StageResult, register
from . import unigram, wordpiece
from .backend import rebuild, renumber_specials, spec_of

SPLITS = ("train", "val", "test")
CHARACTERS = {True: "all", False: "none", "all": "all", "corpus": "corpus", "none": "none"}
MODELS = {"WordPiece": wordpiece, "Unigram": unigram}  # tokenizer.json's model type -> its module


@dataclass
class TrimVocabConfig:
    # which splits' *texts* (never labels) define the vocabulary; adding test is transductive:
    # say so when reporting it
    corpus: list[str] = field(default_factory=lambda: ["train", "val"])
    # 1-character pieces kept as the fallback for unseen text: all (true), corpus (those of the
    # characters the corpus texts contain), none (false)
    keep_characters: bool | str = True
    extra_characters: str = ""  # characters whose 1-character pieces are kept too (e.g. common hanzi)

    def __post_init__(self) -> None:
        bad = [s for s in self.corpus if s not in SPLITS]
        if bad or not self.corpus:
            raise SlimtuneError(f"trim_vocab: corpus must list splits from {', '.join(SPLITS)}, got {self.corpus}")
        if self.keep_characters not in CHARACTERS:
            raise SlimtuneError(f"trim_vocab: keep_characters must be all, corpus or none (or true / false), "
                                f"got {self.keep_characters!r}")

    @property
    def characters(self) -> str:
        return CHARACTERS[self.keep_characters]


def _module(spec: dict):
    kind = spec["model"]["type"]
    if kind not in MODELS:
        raise SlimtuneError(f"trim_vocab: tokenizer model {kind!r} is not supported (supported: {', '.join(MODELS)})")
    return MODELS[kind]


def kept_ids(tokenizer, texts: list[str], keep_characters: bool | str = True, extra_characters: str = "") -> list[int]:
    """Sorted ids of the pieces `texts` use, the special tokens and (optionally) characters."""
    spec = spec_of(tokenizer)
    module = _module(spec)
    ids = {i for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in row}
    ids |= set(tokenizer.all_special_ids) | {a["id"] for a in spec.get("added_tokens") or []} | module.always_kept(spec)
    mode = CHARACTERS[keep_characters]
    if mode == "all":
        ids |= module.character_ids(spec, None)
    else:
        chars = set(_normalized(tokenizer, texts)) if mode == "corpus" else set()
        chars |= set(extra_characters) | set(_normalized(tokenizer, [extra_characters]))
        if chars:
            ids |= module.character_ids(spec, chars)
    return sorted(ids)


def _normalized(tokenizer, texts: list[str]) -> str:
    """The texts as the tokenizer's normalizer hands them on (lower-cased, NFKC, ...): the
    characters its pieces are made of."""
    normalizer = tokenizer.backend_tokenizer.normalizer
    return "".join(normalizer.normalize_str(t) if normalizer is not None else t for t in texts)


def trim_tokenizer(tokenizer, kept: list[int]):
    """The same tokenizer over the vocabulary `kept` (old ids), renumbered 0..len(kept)-1."""
    spec = spec_of(tokenizer)
    module = _module(spec)
    new_id = {old: new for new, old in enumerate(kept)}
    module.keep(spec, kept)
    renumber_specials(spec, new_id)
    return rebuild(tokenizer, spec)


def trim_embeddings(model, kept: list[int], pad_id: int | None) -> None:
    """Keep rows `kept` of the input embedding table (and of an output layer over the vocabulary,
    tied or not), in place."""
    import torch

    rows = torch.tensor(kept)
    old = model.get_input_embeddings()
    output = model.get_output_embeddings()
    tied = output is not None and output.weight is old.weight
    new = torch.nn.Embedding(len(kept), old.embedding_dim, padding_idx=pad_id)
    new.weight.data = old.weight.data[rows].clone()
    model.set_input_embeddings(new)
    if output is not None:
        output.weight = new.weight if tied else torch.nn.Parameter(output.weight.data[rows].clone())
        if getattr(output, "bias", None) is not None:
            output.bias = torch.nn.Parameter(output.bias.data[rows].clone())
        output.out_features = len(kept)
    model.config.vocab_size = len(kept)
    model.config.pad_token_id = pad_id


@register("trim_vocab", TrimVocabConfig)
def trim_vocab(model, tokenizer, cfg: TrimVocabConfig, ctx: StageContext):
    """Keep only the pieces the task's texts use (+ specials, characters); remap the tokenizer."""
    texts = [t for name in cfg.corpus for t in getattr(ctx.splits, name).texts]
    before = model.get_input_embeddings().num_embeddings
    if before < len(tokenizer):  # more rows is fine: rows no id reaches (e5: 250,037 rows, 250,002 pieces)
        raise SlimtuneError(f"trim_vocab: the embedding table has {before} rows but the tokenizer {len(tokenizer)} tokens")
    kept = kept_ids(tokenizer, texts, cfg.keep_characters, cfg.extra_characters)
    new_tok = trim_tokenizer(tokenizer, kept)
    trim_embeddings(model, kept, new_tok.pad_token_id)
    chars = {"all": " + characters", "corpus": " + their characters", "none": ""}[cfg.characters]
    ctx.log(f"  kept {len(kept):,} of {before:,} tokens ({', '.join(cfg.corpus)} texts{chars})")
    return StageResult(model, new_tok, {"vocab_before": before, "vocab_after": len(kept), "vocab_corpus": "+".join(cfg.corpus),
                                        "vocab_characters": cfg.characters})
