"""GPT-family decoders (causal LMs): the packaged SmolLM2-135M-Instruct, prompt/response data,
generative fine-tuning with the loss on response tokens only, perplexity / token F1 / generation
speed, depth pruning and ONNX Runtime GenAI exports.

These are the generate task's building blocks; the task itself (slimtune/tasks/generate.py: its
eval config, how an artifact is measured and exported) plugs them into the one recipe parser and
runner.

    model/convert_smollm2 -> the model folder (SmolLM2 converted once from its GGUF into the cache)
    packaged  -> the packaged prompt/response data (chatterbot)
    data      -> prompt/response pairs, split 80/20 by prompt (a prompt's answers stay in one split)
    chat      -> chat-template formatting, labels -100 on everything but the response
    stage     -> register (into the one registry, task generate), GenTrainConfig, train_pairs (what every method builds on)
    methods   -> baseline | full | lora | weight_only (stage methods for generation, StageResult like slimtune/stage.py)
    prune/    -> prune_layers, prune_width (scores, surgery, recovery distilled from cached top-k teacher logits)
    measure   -> perplexity, token F1 / exact match, samples, TTFT and decode tokens/s
    bench     -> timing in a fresh process (python -m slimtune.decoder.bench)
    genai     -> genai-int4 / genai-fp32 exports (ONNX Runtime GenAI model builder)
    report    -> report.md of a generate run
"""
