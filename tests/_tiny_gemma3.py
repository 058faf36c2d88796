"""A tiny random Gemma 3 causal LM and a template-less byte-level BPE tokenizer, built in-process:
the stand-in for the packaged gemma3-270m (a base model: no chat template; its tokenizer starts
every encoding with `<bos>`, as Gemma's does). The tokenizer is trained in milliseconds on Chinese
and English sentences, so Chinese text tokenizes into more than bytes.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # Gemma's first four ids, in Gemma's order
CORPUS = [
    "你好", "嗨，最近如何?", "我挺好的，你呢", "什么是人工智能?", "人工智能是工程和科学的分支。", "你喜欢看电影吗?",
    "这部电影太好看了", "我喜欢音乐", "你是什么语言编写的", "Python", "谢谢你", "再见", "User: Assistant: System:",
]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 3, trainer)
    bos = tok.token_to_id("<bos>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>")


def build_model_dir(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """A random 2-layer, 64-wide Gemma3ForCausalLM (4 heads of 16, 2 KV heads; tied embeddings like the real one)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = build_tokenizer()
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                           sliding_window=64, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                           pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
