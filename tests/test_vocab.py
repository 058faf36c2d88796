"""Vocabulary trimming: same tokens (renumbered) and same logits on in-vocabulary text, unseen
words split into kept pieces rather than [UNK], a loadable smaller folder."""

from __future__ import annotations

import pytest
import torch

from slimtune.data import Splits, TextSet
from slimtune.errors import SlimtuneError
from slimtune.artifacts.hf import save as save_hf
from slimtune.methods import METHODS, StageContext
from slimtune.artifacts import load_model
from slimtune.recipe import build

from conftest import synthetic_rows

CORPUS = [t for t, _ in synthetic_rows(60)] + ["A brilliantly acted, if overlong, melodrama!"]


@pytest.fixture(scope="module")
def trimmed(tiny_clf_dir, tmp_path_factory):
    model, tok = load_model(tiny_clf_dir)
    splits = Splits(TextSet(CORPUS, [0] * len(CORPUS)), TextSet([], []), TextSet(["unused"], [0]), ["neg", "pos"], "t")
    cfg = build(METHODS["trim_vocab"].config_cls, {"corpus": ["train"]}, "trim_vocab")
    result = METHODS["trim_vocab"].apply(model, tok, cfg, StageContext(splits, tmp_path_factory.mktemp("w"), log=lambda m: None))
    new_model, new_tok, info = result.model, result.tokenizer, result.facts
    folder = tmp_path_factory.mktemp("trimmed")
    save_hf(folder, new_model, new_tok)
    return tok, new_model, new_tok, info, folder


def in_vocab_texts():
    """Texts recombining the corpus' words, unseen as whole sentences."""
    words = " ".join(CORPUS).split()
    return [" ".join(words[i::7][:12]) for i in range(7)] + CORPUS[:3]


def test_tokenization_identical_on_in_vocabulary_text(trimmed):
    tok, _, new_tok, info, _ = trimmed
    vocab = new_tok.convert_ids_to_tokens(list(range(len(new_tok))))
    for text in in_vocab_texts():
        old, new = tok(text), new_tok(text)
        assert tok.convert_ids_to_tokens(old["input_ids"]) == new_tok.convert_ids_to_tokens(new["input_ids"])
        assert old["attention_mask"] == new["attention_mask"] and old["token_type_ids"] == new["token_type_ids"]
    assert info["vocab_after"] == len(new_tok) == len(vocab) < info["vocab_before"] == 30522
    assert new_tok.pad_token_id == 0 and new_tok.unk_token == "[UNK]"


def test_logits_identical_after_save_and_load(trimmed, tiny_clf_dir):
    _, _, _, info, folder = trimmed
    ref, tok = load_model(tiny_clf_dir)
    model, new_tok = load_model(folder)
    assert model.get_input_embeddings().num_embeddings == info["vocab_after"] == model.config.vocab_size
    texts = in_vocab_texts()
    with torch.inference_mode():
        a = ref(**tok(texts, padding=True, return_tensors="pt")).logits
        b = model(**new_tok(texts, padding=True, return_tensors="pt")).logits
    assert torch.equal(a, b)


def test_unseen_words_split_into_kept_pieces_not_unk(trimmed):
    _, _, new_tok, _, _ = trimmed
    tokens = new_tok.tokenize("zyxwvut quokka")
    assert "[UNK]" not in tokens and "".join(t.removeprefix("##") for t in tokens) == "zyxwvutquokka"


def test_bad_corpus_is_an_error():
    with pytest.raises(SlimtuneError, match="trim_vocab: corpus must list splits from train, val, test"):
        build(METHODS["trim_vocab"].config_cls, {"corpus": ["dev"]}, "trim_vocab")
