"""A tiny Llama causal LM and a byte-level BPE tokenizer with a ChatML chat template, built in-process.

The tokenizer is trained here in milliseconds on a few sentences (tokenizers' BPE trainer), with
SmolLM2's special tokens and the same ChatML template shape, so chat formatting, masking and the
GenAI builder see what they see with the real model, without loading it.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

QA = [
    ("What is AI?", "Artificial intelligence is the science of making machines think."),
    ("Are you sentient?", "Sort of."),
    ("What language are you written in?", "I am written in Python."),
    ("My computer won't turn on.", "Check if it is plugged in and hold the power button."),
    ("My mouse is not responding.", "Try another USB port or change the batteries."),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
    ("What is the capital of France?", "Paris is the capital of France."),
    ("Do you like music?", "I like all kinds of music."),
    ("Tell me a joke.", "Why did the robot cross the road? It was programmed to."),
    ("How are you?", "I am doing well, thank you."),
    ("What is money?", "Money is a medium of exchange."),
    ("My screen is black.", "Try adjusting the brightness or connecting another monitor."),
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    corpus = [t for pair in QA for t in pair] * 3 + ["system user assistant You are a helpful assistant."]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    return fast


def build_model_dir(folder: Path, layers: int = 4, seed: int = 0) -> Path:
    """A random 4-layer, 64-wide Llama (4 heads of 16: GroupQueryAttention on CPU wants a multiple of 16; 2 KV heads: grouped-query like SmolLM2) + tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_pairs(path: Path, n_copies: int = 2) -> Path:
    """A JSONL of prompt/response pairs (each pair written once per copy, with numbered prompts)."""
    import json

    with open(path, "w") as f:
        for k in range(n_copies):
            for i, (p, r) in enumerate(QA):
                f.write(json.dumps({"prompt": f"{p} ({k})" if k else p, "response": r}) + "\n")
    return path
