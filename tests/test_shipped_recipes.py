"""Every shipped recipe, run end to end on a tiny model, with its deterministic facts checked.

recipes/chinese.yaml gets its own stand-ins: a tiny random 12-layer BERT (it names layers 0, 3, 6, 9)
over a tiny XLM-R-style SentencePiece Unigram tokenizer (tests/test_vocab_unigram.py's builder,
trained on the CSV's texts) and a small unbalanced Chinese CSV (2:1, so `class_weight: auto` weighs).

The model is swapped for a tiny random encoder of MiniLM-L6's depth (recipes name layers: 6
layers, hidden 32, 2 heads, FFN 64, the real 30,522-token vocabulary) and the budgets are cut to
a few steps; everything else is the recipe as shipped. What does not depend on training luck is
checked exactly: parameters removed, sparsity, layer and head counts, trainable counts; sizes are
checked as ratios against the stage they came from.

Parameter counts of the tiny 6-layer classifier (2 labels), by hand:
    embeddings 30,522*32 + 128*32 + 2*32 + 64 (LayerNorm)          = 980,928
    one layer: attention 4*(32*32+32) + FFN (32*64+64) + (64*32+32) + 2 LayerNorms = 8,544
    head: pooler 32*32+32 + classifier 32*2+2                      = 1,122
    total 980,928 + 6*8,544 + 1,122                                = 1,033,314
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from test_chinese import NEG, POS, chinese_rows
from test_runner import FAST_EVAL, run
from test_vocab_unigram import build_tokenizer

from slimtune.methods import METHODS
from slimtune.recipe import parse

REPO = Path(__file__).resolve().parents[1]
EMB, LAYER, HEAD = 980_928, 8_544, 1_122
FULL = EMB + 6 * LAYER + HEAD  # 1,033,314


FACTS = ("size_bytes", "total_params", "trainable_params", "params_removed", "sparsity", "vocab_after", "layers_after",
         "heads_after", "ffn_after", "parity", "parity_val", "onnx_quantization")


def rows(report) -> dict:
    return {s["name"]: s["metrics"] for s in report["stages"]}


def size_ratio(m: dict, name: str, of: str) -> float:
    return m[name]["size_bytes"] / m[of]["size_bytes"]


def check_default(m):
    assert m["student"]["teacher_params"] == FULL
    assert m["student"]["total_params"] == EMB + 3 * LAYER + HEAD  # layers 0, 2, 4 kept
    # half of every layer's 64 FFN neurons: 32 rows of the 32-wide input projection (+ bias) and
    # 32 columns of the output projection, in each of the 3 layers; every head kept
    assert m["slim"]["ffn_after"] == [32, 32, 32] and m["slim"]["heads_after"] == [2, 2, 2]
    assert m["slim"]["params_removed"] == 3 * 32 * (32 + 1 + 32)
    assert m["slim"]["total_params"] == m["student"]["total_params"] - 3 * 32 * (32 + 1 + 32)
    # the tokens of the 64 training + validation texts, specials and single characters (seeded subsample)
    assert m["trim"]["vocab_before"] == 30_522 and m["trim"]["vocab_after"] == 3_674
    assert size_ratio(m, "trim", "student") < 0.2  # the embedding table is most of a tiny model
    assert m["compact"]["onnx_quantization"].startswith("ONNX matmul int8, embeddings int4")
    assert size_ratio(m, "compact", "trim") < 0.35


def check_distill(m):
    assert m["student"]["teacher_params"] == FULL
    assert m["student"]["total_params"] > 17_000_000  # the packaged MiniLM-L3 student, 17.2M
    assert size_ratio(m, "onnx-int8", "student") < 0.3
    assert m["onnx-int8"]["parity"]["argmax_agreement"] >= 0.9


def check_distill_truncate(m):
    assert m["student"]["teacher_params"] == FULL
    assert m["student"]["total_params"] == EMB + 3 * LAYER + HEAD
    assert m["onnx-int8"]["parity"]["argmax_agreement"] >= 0.9


def check_peft(m):
    assert m["full"]["trainable_params"] == FULL
    assert m["head_only"]["trainable_params"] == HEAD
    assert m["last_2"]["trainable_params"] == 2 * LAYER + HEAD
    assert m["lora"]["trainable_params"] == 6 * 2 * (8 * 32 + 32 * 8) + HEAD  # r=8 on query and value
    assert m["prompt"]["trainable_params"] == 20 * 32 + HEAD  # 20 virtual token embeddings
    assert m["prefix"]["trainable_params"] == 20 * 6 * 2 * 32 + HEAD  # a key and a value per layer and token
    # pfeiffer, size 64: down (32*64+64) and up (64*32+32) per layer; LayerNorms (13 of 64) train too
    assert m["adapter"]["trainable_params"] == 6 * (2_112 + 2_080) + 13 * 64 + HEAD
    # every bias (q, k, v, o, FFN in and out, 2 LayerNorms per layer; the embeddings' LayerNorm) and the head
    assert m["bitfit"]["trainable_params"] == 6 * (4 * 32 + 64 + 32 + 2 * 32) + 32 + HEAD
    assert m["shared"]["params_removed"] == 3 * LAYER  # 6 layers -> 3 shared blocks
    assert m["shared"]["groups"] == [[0, 1], [2, 3], [4, 5]]


def check_prune(m):
    p = m["pruned"]
    assert p["layers_after"] == 4 and sum(p["heads_after"]) == 6 and sum(p["ffn_after"]) == round(0.35 * 6 * 64)
    # per layer 2,096 per head, 65 per FFN neuron, 192 besides: 51,264 before, 22,054 after
    assert p["params_removed"] == 6 * LAYER - (2_096 * 6 + 65 * 134 + 4 * 192)
    assert p["params_removed"] == 29_210
    assert m["onnx-int8"]["parity"]["argmax_agreement"] >= 0.9


def check_prune_unstructured(m):
    s = m["sparse80"]
    assert s["sparsity"] == pytest.approx(0.8, abs=1e-6) and s["storage"] == "sparse"
    assert size_ratio(m, "sparse80", "finetune") < 0.3  # 20% of the values + a 1-bit mask


def check_quantize(m):
    # measured (fp32 4,144,896 bytes): fp16 0.505, int8 0.288, int4 0.165, kmeans16 0.134, kmeans256 0.267;
    # the 30,522 x 32 embedding table is 94% of the weights, so per-row scales weigh 1/8 here
    assert size_ratio(m, "fp16", "fp32") < 0.51 and size_ratio(m, "bf16-compute", "fp32") < 0.51
    assert size_ratio(m, "torch-int8", "fp32") < 0.99  # int8 Linear weights only; the embeddings stay fp32
    assert size_ratio(m, "int8-weights", "fp32") < 0.29
    assert size_ratio(m, "int4-weights", "fp32") < 0.17
    assert size_ratio(m, "kmeans16", "fp32") < 0.14 and size_ratio(m, "kmeans256", "fp32") < 0.27
    assert m["onnx-int8-dynamic"]["onnx_quantization"] == "dynamic per-channel"
    assert size_ratio(m, "onnx-int8-dynamic", "fp32") < 0.28 and size_ratio(m, "onnx-int8-static", "fp32") < 0.33
    assert m["trim-vocab"]["vocab_after"] == 3_674 and m["trim-vocab"]["vocab_before"] == 30_522
    assert size_ratio(m, "trim-vocab-int4", "trim-vocab") < 0.22
    assert size_ratio(m, "trim-vocab-fp16", "trim-vocab") < 0.54  # the per-tensor codec index weighs more here


def check_chinese(m):
    # the tiny tokenizer's 390 pieces; the 64 training + validation texts (seeded subsample) use 255 of
    # them with the specials and every 1-character piece; layers and head as the 6-layer model's above
    assert m["trim"]["vocab_characters"] == "all" and (m["trim"]["vocab_before"], m["trim"]["vocab_after"]) == (390, 255)
    emb = 255 * 32 + 128 * 32 + 2 * 32 + 64
    assert m["finetune"]["total_params"] == m["finetune"]["trainable_params"] == emb + 12 * LAYER + HEAD == 116_034
    assert m["student"]["teacher_params"] == m["finetune"]["total_params"]
    assert m["student"]["total_params"] == emb + 4 * LAYER + HEAD  # layers 0, 3, 6, 9 kept
    assert m["slim"]["ffn_after"] == [32] * 4 and m["slim"]["params_removed"] == 4 * 32 * (32 + 1 + 32)
    assert m["compact"]["onnx_quantization"].startswith("ONNX matmul int8, embeddings int4")
    # measured 0.535: with 255 x 32 words the table is small here, and the graph's fixed bytes weigh
    assert size_ratio(m, "compact", "slim") < 0.6


CHECKS = {
    "chinese.yaml": check_chinese,
    "default.yaml": check_default,
    "distill.yaml": check_distill,
    "distill_truncate.yaml": check_distill_truncate,
    "peft.yaml": check_peft,
    "prune.yaml": check_prune,
    "prune_unstructured.yaml": check_prune_unstructured,
    "quantize.yaml": check_quantize,
}


DECODER_RECIPES = ("generate.yaml", "decoder_classify.yaml",  # run on a tiny Llama in tests/test_decoder*.py
                   "generate_zh.yaml")  # run on a tiny Gemma 3 below
ENCODER_RECIPES = sorted(p for p in (REPO / "recipes").glob("*.yaml") if p.name not in DECODER_RECIPES)


def test_every_shipped_recipe_has_a_check():
    assert [p.name for p in ENCODER_RECIPES] == sorted(CHECKS)
    assert all((REPO / "recipes" / name).is_file() for name in DECODER_RECIPES)


@pytest.fixture(scope="module")
def chinese_stand_ins(tmp_path_factory):
    """(model folder, CSV): a tiny 12-layer BERT over a tiny Unigram tokenizer, and 169 Chinese rows:
    正面 113, 负面 56 (2:1)."""
    import torch
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("zh")
    rows = [(t, label) for i, (t, label) in enumerate(chinese_rows(225)) if label == POS or i % 4 == 1]
    csv = root / "评论.csv"
    csv.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows), encoding="utf-8")
    tok = build_tokenizer(root / "model", [t for t, _ in rows])
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128, pad_token_id=tok.pad_token_id)).save_pretrained(root / "model")
    return root / "model", csv


# chinese.yaml: 12 layers and lengths from the data took 99 s here (2 shared cores); it is parsed as
# shipped by tests/test_chinese_recipe.py and tests/test_passes.py in the default run
SLOW = {"chinese.yaml"}


@pytest.mark.parametrize("recipe", [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
                                    for p in ENCODER_RECIPES])
def test_shipped_recipe_on_tiny_model(recipe, tiny_base6_dir, tmp_path, request):
    raw = yaml.safe_load(recipe.read_text())
    parse(raw, str(recipe))  # valid as shipped
    raw["model"] = str(tiny_base6_dir)
    keep_length = recipe.name == "chinese.yaml"  # its stages leave max_length to the data's profile: keep it so
    if keep_length:
        model, csv = request.getfixturevalue("chinese_stand_ins")
        raw["model"], raw["data"] = str(model), {"path": str(csv)}
    raw["data"] |= {"max_train_samples": 64, "max_test_samples": 48, "val_size": 0.01}
    for st in raw["stages"]:
        fields = {f.name for f in dataclasses.fields(METHODS[st["method"]].config_cls)}
        cut = {"max_steps": 2, "epochs": 1} | ({} if keep_length else {"max_length": 32})
        st |= {k: v for k, v in cut.items() if k in fields}  # training stages only
        st.pop("early_stopping_patience", None)
        if "extra_texts" in st:
            st["max_extra_texts"] = 16
        if st["method"] == "prune":  # the cubic schedule reaches its sparsity at 70% of the steps
            st["max_steps"] = 10
    raw["eval"] = FAST_EVAL
    report, logs = run(raw, tmp_path)
    for row in report["stages"]:  # shown when a check fails
        print(row["name"], {k: row["metrics"].get(k) for k in FACTS if k in row["metrics"]})
    assert [s["name"] for s in report["stages"]] == [s["name"] for s in raw["stages"]] + raw.get("export", [])
    CHECKS[recipe.name](rows(report))
    if keep_length:  # the lengths and the class weights came from the data
        n = report["profile"]["suggested_max_length"]
        assert sum(line.startswith(f"stage {s}: max_length not set; using {n} ") for line in logs for s in ("finetune", "student", "slim")) == 3
        train = report["profile"]["splits"]["train"]["classes"]
        assert train[POS] > 1.5 * train[NEG]
        total = sum(train.values())
        want = [total / (2 * train[name]) for name in report["data"]["labels"]]
        assert rows(report)["finetune"]["class_weights"] == rows(report)["student"]["class_weights"] == pytest.approx(want)
        weighted = [line for line in logs if line.startswith("class weights (auto): ")]
        assert len(weighted) == 3 and weighted[0].endswith(", ".join(f"{n} {w:.3f}" for n, w in zip(report["data"]["labels"], want)))


def test_generate_zh_recipe_on_tiny_gemma3(tmp_path):
    """generate_zh.yaml as shipped (valid without converting gemma3-270m), then run with the model swapped for a
    tiny random Gemma3ForCausalLM with a template-less tokenizer (tests/_tiny_gemma3.py) and the budgets cut."""
    import torch
    from _tiny_gemma3 import build_model_dir

    from slimtune.recipe import parse as parse_any
    from slimtune.runner import run as run_recipe

    raw = yaml.safe_load((REPO / "recipes/generate_zh.yaml").read_text())
    shipped = parse_any(raw, "generate_zh.yaml")
    assert (shipped.model, shipped.data.name, shipped.export) == ("gemma3-270m", "chatterbot_qa_zh", ["hf", "genai-int4"])
    raw["model"] = str(build_model_dir(tmp_path / "gemma3"))
    raw["data"] |= {"max_train_samples": 16, "max_test_samples": 6}
    for st in raw["stages"]:
        if st["method"] != "baseline":
            st |= {"max_steps": 2, "batch_size": 4}
    raw["eval"] = {"answer_prompts": 3, "max_new_tokens": 4, "parity_tokens": 4, "speed_prompts": 1,
                   "speed_new_tokens": 2, "samples": 1, "isolate": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core machine (see tests/test_decoder.py)
    try:
        report = run_recipe(parse_any(raw, "generate_zh.yaml"), tmp_path / "run", log=lambda m: None)
    finally:
        torch.set_num_threads(threads)
    m = rows(report)
    assert list(m) == ["untuned", "lora", "hf", "genai-int4"]
    # r=8 on q (64->64), k and v (64->32), o (64->64) in 2 layers: 8*(128 + 96 + 96 + 128) * 2
    assert m["lora"]["trainable_params"] == 7_168
    assert m["hf"]["parity"]["greedy_identical"] == m["hf"]["parity"]["greedy_prompts"]  # merged = unmerged, greedily
    assert m["hf"]["perplexity"] == pytest.approx(m["lora"]["perplexity"], rel=1e-4)
    assert all(m[s]["perplexity"] > 1 for s in m)
    assert 0.5 < m["genai-int4"]["perplexity"] / m["lora"]["perplexity"] < 2  # random tiny weights at 4 bits: sane
