"""The real packaged SmolLM2-135M-Instruct (slow: `make test-slow`): conversion, chat answers,
LoRA counts and the GenAI exports' parity with torch."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

PROMPTS = ["What is the capital of France?", "Tell me a joke.", "My computer won't turn on."]


@pytest.fixture(scope="module")
def smollm2():
    from slimtune.decoder.lm import load_causal_lm, resolve

    folder = resolve("smollm2-135m")
    model, tok = load_causal_lm(folder)
    return folder, model, tok


def test_converted_smollm2_is_the_135m_llama(smollm2):
    folder, model, tok = smollm2
    cfg = model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == \
        ("llama", 30, 576, 9, 3)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tok.pad_token_id is not None and tok.chat_template


def test_smollm2_answers_in_its_chat_template(smollm2):
    from slimtune.decoder.measure import TorchDecoder, answer

    _, model, tok = smollm2
    text, _ = answer(TorchDecoder(model, tok), PROMPTS[0], None, 24)
    assert "Paris" in text


def test_lora_trainable_count_on_smollm2(smollm2):
    import copy

    import peft

    _, model, _ = smollm2
    pm = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(task_type=peft.TaskType.CAUSAL_LM, r=8, lora_alpha=16,
                                                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    # per layer: q and o 576->576 (8*576*2), k and v 576->192 (8*576 + 192*8); 30 layers
    assert sum(p.numel() for p in pm.parameters() if p.requires_grad) == 30 * (2 * 9216 + 2 * 6144) == 921_600


def test_genai_exports_of_smollm2(smollm2, tmp_path):
    from slimtune.decoder.genai import export_genai
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import TorchDecoder
    from slimtune.decoder.chat import prompt_ids
    from slimtune.measure.bench import artifact_size

    folder, model, tok = smollm2
    torch_dec = TorchDecoder(model, tok)
    fp32 = load_decoder(export_genai(folder, "genai-fp32", tmp_path / "fp32", tmp_path / "cache"))
    for p in PROMPTS:
        ids = prompt_ids(tok, p)
        assert list(fp32.stream(ids, 32)) == list(torch_dec.stream(ids, 32)), p
    int4 = export_genai(folder, "genai-int4", tmp_path / "int4", tmp_path / "cache")
    assert artifact_size(tmp_path / "fp32") / artifact_size(int4) >= 5


def test_smollm2_int4_keeps_the_packaged_q4_1_grid(smollm2, tmp_path):
    """The packaged weights are the GGUF's Q4_1 values: genai-int4 keeps them exactly (fp32 output layer
    and fp32 activations: torch's log-probabilities), and with the recipe's options is >= 5x smaller."""
    import numpy as np

    from slimtune.decoder import grid
    from slimtune.decoder.chat import encode_pair
    from slimtune.decoder.lm import load_decoder
    from slimtune.decoder.measure import TorchDecoder
    from slimtune.measure.bench import artifact_size

    folder, model, tok = smollm2
    p = grid.plan(folder)
    assert p is not None and p.adapter is None and p.num_layers == 30
    exact = {"algo_config": "k_quant", "block_size": 32, "accuracy_level": 1, "shared_embeddings": False,
             "nodes_to_exclude": "/lm_head/MatMul"}
    assert grid.export_int4(p, tmp_path / "exact", tmp_path / "cache", exact)["on_grid_matmuls"] == 30 * 7
    ids = encode_pair(tok, PROMPTS[0], "Paris is the capital of France.").input_ids
    gap = np.abs(load_decoder(tmp_path / "exact").logprobs(ids) - TorchDecoder(model, tok).logprobs(ids)).max()
    assert gap < 1e-3, gap
    grid.export_int4(p, tmp_path / "int4", tmp_path / "cache", {"algo_config": "k_quant", "block_size": 16, "accuracy_level": 4})
    assert artifact_size(folder) / artifact_size(tmp_path / "int4") >= 5
