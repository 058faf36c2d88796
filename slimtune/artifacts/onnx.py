"""ONNX artifacts: a folder with `model.onnx` + config.json (labels) + tokenizer files.

Written by `torch.onnx.export` (legacy TorchScript exporter, dynamic batch and sequence axes) with
eager attention, then ONNX Runtime's transformer optimizer fuses attention/LayerNorm/GELU, then
`onnxruntime.quantization.quantize_dynamic` makes int8. Optimum is not used: it pins
transformers 4.x. A stage that builds its own graph (onnx_int8, onnx_compact) hands the finished
file over as `Artifact("onnx", {"onnx_file": path})`; it is moved into place.

An ONNX folder holds no torch model: it runs through ONNX Runtime (`OnnxPredictor`), and no later
stage can start from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import warnings
from pathlib import Path

from ..errors import SlimtuneError

ONNX_FILE = "model.onnx"


def _onnx_inputs(model, tokenizer):
    import torch

    enc = tokenizer(["a short example", "a second, slightly longer example sentence"], padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
    return names, tuple(enc[n] for n in names)


def write_onnx(model, tokenizer, onnx_path: Path, opset: int = 17, optimize: bool = True, embed_layer_norm: bool = True) -> None:
    """Export a torch classifier to `onnx_path` with dynamic batch and sequence axes."""
    import torch

    model = model.eval().float()
    previous = model.config._attn_implementation
    # Eager attention exports as plain MatMul/Softmax, the pattern ORT's fusion recognises.
    model.set_attn_implementation("eager")
    names, args = _onnx_inputs(model, tokenizer)
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}

    class _Logits(torch.nn.Module):  # return a plain tensor, not a ModelOutput
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *inputs):
            return self.m(**dict(zip(names, inputs))).logits

    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Logits(model), args, str(onnx_path), input_names=names, output_names=["logits"],
                dynamic_axes=axes, opset_version=opset, dynamo=False,
            )
    finally:
        model.set_attn_implementation(previous)
    if optimize and model.config.model_type in ("bert", "roberta", "distilbert", "xlm-roberta", "slimtune_bert"):
        _fuse(onnx_path, model.config, embed_layer_norm)


def _fuse(onnx_path: Path, config, embed_layer_norm: bool = True) -> None:
    """ORT's transformer optimizer: fused Attention / SkipLayerNorm / Gelu (faster on CPU, fp32)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    # its "input hidden size is not the q/k/v width" notice is expected for pruned heads
    # (ORT imports its fusion modules as top-level ones, hence the bare logger name)
    logging.getLogger("fusion_attention").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # A SlimBERT (e.g. pruned) has its own head count per layer, written into each reshape: let ORT read
        # it there (0 = detect) instead of imposing one model-wide value.
        per_layer = config.model_type == "slimtune_bert"
        options = FusionOptions("bert")
        # unfused embeddings keep the word-embedding Gather that a 4-bit GatherBlockQuantized can replace
        options.enable_embed_layer_norm = embed_layer_norm
        opt = optimize_model(
            str(onnx_path), model_type="bert", num_heads=0 if per_layer else config.num_attention_heads,
            hidden_size=0 if per_layer else config.hidden_size, opt_level=1, optimization_options=options,
        )
    opt.save_model_to_file(str(onnx_path))


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantization of MatMul, fused Attention and embedding weights.

    Per-channel scales and 7-bit weights (`reduce_range`): measured on MiniLM-L6 fine-tuned on
    Rotten Tomatoes, per-tensor int8 lost 1.4 accuracy points (argmax agreement 0.953) while
    per-channel + reduce_range lost none (0.8318 vs 0.8314 fp32, agreement 0.980) at the same
    size and speed. reduce_range also avoids the u8s8 overflow ORT documents on CPUs without VNNI.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
        # A fused graph has ops ORT cannot type-infer; tell it they are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


@contextlib.contextmanager
def quiet_root_logger():
    """ORT's 4-bit quantizer module calls logging.basicConfig(level=INFO) when imported: it adds a
    handler to the root logger and lowers its level, after which every quantizer logs each tensor.
    Its handlers and level are undone on the way out, and the level is held at ERROR meanwhile."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def detect(path: Path) -> bool:
    path = Path(path)
    return (path.suffix == ".onnx" and path.is_file()) or (path / ONNX_FILE).is_file()


def save(folder: Path, model, tokenizer, onnx_file: Path | None = None, int8: bool = False) -> dict:
    """Write `folder/model.onnx` (+ config.json with labels + tokenizer) into an existing folder:
    the graph a stage already built (`onnx_file`, moved), or a new export of `model` (int8: dynamic)."""
    folder = Path(folder)
    if onnx_file is not None:
        shutil.move(str(onnx_file), str(folder / ONNX_FILE))
    else:
        fp32 = folder / ("model-fp32.onnx" if int8 else ONNX_FILE)
        try:
            write_onnx(model, tokenizer, fp32)
            if int8:
                quantize_int8(fp32, folder / ONNX_FILE)
                fp32.unlink()
        except SlimtuneError:
            raise
        except Exception as e:  # exporter failures are deep; keep one line for the user
            raise SlimtuneError(f"ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0]}") from e
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {}


def label_names(folder: Path) -> list[str]:
    """The labels in an ONNX export's config.json, read as JSON: AutoConfig would import torch and
    the model classes (seconds of start-up) for a session that needs neither."""
    path = folder / "config.json"
    if not path.is_file():
        raise SlimtuneError(f"{folder}: ONNX model has no config.json beside it (label names)")
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise SlimtuneError(f"{path}: not valid JSON: {e}") from None
    id2label = config.get("id2label") or {str(i): f"LABEL_{i}" for i in range(config.get("num_labels", 2))}
    try:
        return [id2label[str(i)] for i in range(len(id2label))]
    except KeyError:
        raise SlimtuneError(f"{path}: id2label must number the labels 0..{len(id2label) - 1}") from None


def read_export(path: Path, filename: str, what: str, labels: list[str] | None, task: str | None):
    """An exported graph (`folder/filename`, or the file itself) with its config.json and labels,
    checked against the data's labels: (graph file, folder, label names, config as JSON)."""
    path = Path(path)
    graph = path if path.suffix == Path(filename).suffix else path / filename
    if task is not None:
        raise SlimtuneError(f"{path}: {what} holds one task; export it with --task instead")
    folder = graph.parent
    names = label_names(folder)
    if labels is not None and list(labels) != names:
        raise SlimtuneError(f"{folder}: model was trained for labels {names}, but the data has {list(labels)}")
    return graph, folder, names, json.loads((folder / "config.json").read_text())


def predictor(path: Path, max_length: int, labels: list[str] | None = None, task: str | None = None,
              threads: int | None = None, provider: str = "cpu", spin: bool = True):
    """An ONNX Runtime predictor for a folder holding `model.onnx` (or the .onnx file itself);
    `provider`: ONNX Runtime's cpu, cuda or tensorrt execution provider (`compute.onnx_providers`);
    `spin`: False lets idle intra-op threads sleep (a server)."""
    from ..compute import onnx_providers
    from ..measure.predictors import OnnxPredictor
    from ..model.folders import load_tokenizer

    onnx_file, folder, names, config = read_export(path, ONNX_FILE, "an ONNX export", labels, task)
    pred = OnnxPredictor(onnx_file, load_tokenizer(folder, config.get("vocab_size")), names, max_length, threads,
                         onnx_providers(provider), spin=spin)
    pred.truncation = config.get("slimtune_truncation", "head")
    return pred
