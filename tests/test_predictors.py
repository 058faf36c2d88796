"""Predictors: the fast batch-1 encoder gives exactly what the tokenizer's `__call__` gives."""

from __future__ import annotations

import numpy as np
import pytest

from slimtune.measure.predictors import FastEncoder

TEXTS = [
    "a gorgeous, witty, seductive movie.",
    "",
    "naïve café déjà-vu — 東京 😀 unknown-ish tokens: qwxzj",
    "word " * 300,  # longer than max_length: cut from the head, [SEP] kept
    "short",
    "the film is a charming, funny and deeply moving portrait of a family in crisis, and it earns every tear.",
]


def _reference(tokenizer, texts, max_length):
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    return {k: np.asarray(v).astype(np.int64) for k, v in enc.items()}


def _same(tokenizer, max_length):
    fast = FastEncoder.of(tokenizer, max_length)
    assert fast is not None
    batches = [[t] for t in TEXTS] + [TEXTS, TEXTS[2:5]]
    for batch in batches:
        want, got = _reference(tokenizer, batch, max_length), fast(batch)
        assert sorted(got) == sorted(want), batch
        for k in want:
            assert got[k].dtype == np.int64 and np.array_equal(got[k], want[k]), (k, batch)


@pytest.mark.parametrize("max_length", [16, 128])
def test_fast_encoder_equals_the_tokenizer_on_wordpiece(tokenizer, max_length):
    _same(tokenizer, max_length)


def test_fast_encoder_equals_the_tokenizer_on_trimmed_vocabulary(tokenizer):
    from slimtune.methods.vocab import kept_ids, trim_tokenizer

    trimmed = trim_tokenizer(tokenizer, kept_ids(tokenizer, TEXTS[:1] + TEXTS[4:]))
    assert len(trimmed) < len(tokenizer) / 10
    _same(trimmed, 32)


@pytest.mark.parametrize("side", ["right", "left"])
def test_fast_encoder_equals_the_tokenizer_on_byte_level_bpe(side):
    from _tiny_llama import build_tokenizer

    tok = build_tokenizer()
    tok.padding_side = side
    _same(tok, 24)


def test_fast_encoder_leaves_the_callers_tokenizer_alone(tokenizer):
    before = tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding
    FastEncoder.of(tokenizer, 8)(TEXTS)
    assert (tokenizer.backend_tokenizer.truncation, tokenizer.backend_tokenizer.padding) == before
    assert len(tokenizer(TEXTS[3])["input_ids"]) > 8


def test_no_pad_token_falls_back(tokenizer):
    from _tiny_llama import build_tokenizer

    tok = build_tokenizer()
    tok.pad_token = None
    assert FastEncoder.of(tok, 16) is None


def test_a_predictor_sees_a_padding_side_changed_after_it_was_built():
    from _tiny_llama import build_tokenizer

    from slimtune.measure.predictors import Predictor

    class Plain(Predictor):
        def __init__(self, tok):
            self.tokenizer, self.max_length, self.truncation = tok, 24, "head"

    tok = build_tokenizer()
    tok.padding_side = "right"
    pred, pair = Plain(tok), [TEXTS[0], TEXTS[4]]  # two lengths: one row padded
    assert np.array_equal(pred.encode(pair)["input_ids"], _reference(tok, pair, 24)["input_ids"])
    tok.padding_side = "left"
    assert np.array_equal(pred.encode(pair)["input_ids"], _reference(tok, pair, 24)["input_ids"])
