"""Model plumbing: where a model's files are (`folders`), packaged assets (`assets`), the MiniLM-L3
ONNX-to-HF conversion (`convert_l3`), the multilingual-e5-small E5S1-to-HF conversion
(`convert_e5`), the packaged SmolLM2's GGUF-to-HF conversion (`convert_smollm2`), SlimBERT's
shapes (`slim_bert`), the names of a model's parts (`structure`) and library shims (`compat`).
Loading weights is `slimtune.artifacts`' job."""
