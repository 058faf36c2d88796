"""WordPiece (BERT, MiniLM): the vocabulary is `{token: id}`; a word is split greedily, longest
known prefix first, then `##`-continuations. Every piece the greedy match picked before is still
there after trimming, so text made of kept pieces splits exactly as before; with characters kept,
an unseen word splits into smaller kept pieces down to single characters instead of [UNK]."""

from __future__ import annotations


def character_ids(spec: dict, chars: set[str] | None) -> set[int]:
    """Ids of the 1-character pieces and their `##` continuations (of `chars` only, unless None)."""
    prefix = spec["model"].get("continuing_subword_prefix") or "##"
    return {i for t, i in spec["model"]["vocab"].items()
            if len(t.removeprefix(prefix)) == 1 and (chars is None or t.removeprefix(prefix) in chars)}


def always_kept(spec: dict) -> set[int]:
    unk = spec["model"].get("unk_token")
    return {spec["model"]["vocab"][unk]} if unk in spec["model"]["vocab"] else set()


def keep(spec: dict, kept: list[int]) -> None:
    """Rewrite the model section over `kept` (old ids, sorted), renumbered 0..len(kept)-1; ids past
    the vocabulary are added tokens, which stay after it."""
    token = {i: t for t, i in spec["model"]["vocab"].items()}
    spec["model"]["vocab"] = {token[old]: new for new, old in enumerate(kept) if old in token}
