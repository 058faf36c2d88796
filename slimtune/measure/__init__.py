"""Measuring artifacts the same way for all: `predictors` (texts in, logits out, torch or ONNX
Runtime), `metrics` (the one accuracy / F1 / parity computation), `bench` (latency, throughput,
memory, size, hardware) and `floor` (the TF-IDF baseline every report carries)."""
