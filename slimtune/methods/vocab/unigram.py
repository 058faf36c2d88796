"""SentencePiece Unigram (XLM-R, multilingual-e5): the vocabulary is a list of `[piece, score]`
(score = log probability, id = position); a pre-tokenized word (`▁` marks a word start) is cut
into the pieces whose scores sum highest (Viterbi over every segmentation the vocabulary allows).

The trimmed model keeps its pieces with their ORIGINAL scores, in the original order. Then:

- text whose best segmentation used only kept pieces segments exactly as before: removing pieces
  only removes candidate segmentations, the winner is still there with the same score, and
  `tokenizers`' Viterbi keeps the first-found best at each position (strict `>`), so even a tie
  resolves as before;
- a character that no longer has a 1-character piece gets an <unk> candidate scored
  `min(score) - 10` (`tokenizers`' `K_UNK_PENALTY`); the piece with the lowest score is therefore
  always kept, so that penalty, and every segmentation that involves <unk>, is the original's;
- text that needs removed pieces falls back to the best segmentation over the kept pieces: longer
  pieces split into shorter kept ones, down to single characters (`▁` + one piece per character),
  and a character without a kept piece becomes <unk> (consecutive ones fused into one, as before).

transformers 5's XLMRobertaTokenizer rebuilds its pipeline when it loads a folder (normalizer only
from a SentencePiece charsmap, WhitespaceSplit + Metaspace, its own <s> ... </s> template, <unk> at
id 3): the specials at ids 0-3 are always kept and the order never changes, so they keep their ids,
and `backend.rebuild` returns the tokenizer as loaded back from disk, what every export will load.

Single characters are the fallback for unseen words. XLM-R's 250,002 pieces hold 13,828
1-character pieces (7,688 of them CJK ideographs): keeping all (`keep_characters: all`) costs
13,828 x 384 = 5.3M parameters in multilingual-e5-small and covers any text in XLM-R's scripts;
`keep_characters: corpus` keeps only the characters the corpus texts contain (plus
`extra_characters`), a few thousand for Chinese reviews, and an unseen character becomes <unk>.
"""

from __future__ import annotations

REPLACEMENT = "\u2581"  # SentencePiece's word-start mark, the Metaspace pre-tokenizer's default


def character_ids(spec: dict, chars: set[str] | None) -> set[int]:
    """Ids of the 1-character pieces (of `chars` and the word-start mark only, unless None)."""
    if chars is not None:
        chars = chars | {_word_start(spec.get("pre_tokenizer"))}
    return {i for i, (piece, _) in enumerate(spec["model"]["vocab"]) if len(piece) == 1 and (chars is None or piece in chars)}


def always_kept(spec: dict) -> set[int]:
    """<unk>, the lowest-scored piece (it sets <unk>'s score: see above) and, with byte fallback,
    the 256 `<0xNN>` pieces that replace <unk>."""
    model = spec["model"]
    vocab = model["vocab"]
    ids = {min(range(len(vocab)), key=lambda i: vocab[i][1])}
    if model.get("unk_id") is not None:
        ids.add(model["unk_id"])
    if model.get("byte_fallback"):
        ids |= {i for i, (piece, _) in enumerate(vocab) if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")}
    return ids


def keep(spec: dict, kept: list[int]) -> None:
    """Rewrite the model section over `kept` (old ids, sorted): same pieces, same scores, renumbered.
    Ids past the model's pieces are added tokens (a <mask> added after training): they stay after them."""
    model = spec["model"]
    model["vocab"] = [model["vocab"][old] for old in kept if old < len(model["vocab"])]
    if model.get("unk_id") is not None:
        model["unk_id"] = kept.index(model["unk_id"])


def _word_start(pre: dict | None) -> str:
    """The Metaspace replacement character of the pre-tokenizer (inside a Sequence too)."""
    if not pre:
        return REPLACEMENT
    if pre.get("type") == "Metaspace":
        return pre.get("replacement", REPLACEMENT)
    for inner in pre.get("pretokenizers") or []:
        if inner.get("type") == "Metaspace":
            return inner.get("replacement", REPLACEMENT)
    return REPLACEMENT
