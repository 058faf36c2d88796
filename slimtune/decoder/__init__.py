"""GPT-family decoders (causal LMs): the packaged SmolLM2-135M-Instruct, prompt/response data,
generative fine-tuning with the loss on response tokens only, perplexity / token F1 / generation
speed, depth pruning and ONNX Runtime GenAI exports.

The flow mirrors the encoder one (`slimtune/runner.py`) for `task: generate` recipes:

    model/convert_smollm2 -> the model folder (SmolLM2 converted once from its GGUF into the cache)
    packaged  -> the packaged prompt/response data (chatterbot)
    data      -> prompt/response pairs, split 80/20 by prompt (a prompt's answers stay in one split)
    chat      -> chat-template formatting, labels -100 on everything but the response
    stage     -> GenContext, GEN_METHODS + register, GenTrainConfig, train_pairs (what every method builds on)
    methods   -> baseline | full | lora | weight_only (stage methods for generation, StageResult like slimtune/stage.py)
    prune/    -> prune_layers, prune_width (scores, surgery, recovery distilled from cached top-k teacher logits)
    registry  -> GEN_METHODS with every method registered (what recipe.py validates against; no torch)
    measure   -> perplexity, token F1 / exact match, samples, TTFT and decode tokens/s
    bench     -> timing in a fresh process (python -m slimtune.decoder.bench)
    genai     -> genai-int4 / genai-fp32 exports (ONNX Runtime GenAI model builder)
    runner    -> stages, exports, report (resumable, atomic folders)
"""
