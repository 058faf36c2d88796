"""TensorFlow Lite (LiteRT) artifacts, for phones and edge devices: a folder with `model.tflite` +
config.json (labels, the graph's sequence length) + tokenizer files.

Written by Google's own tools, none of which slimtune needs otherwise (`pip install
'slimtune[tflite]'`, ~1.3 GB: jax, torchao; no TensorFlow):
- litert-torch converts the torch classifier (torch.export, then the TFLite flatbuffer);
- ai-edge-quantizer makes `tflite-int8`: its dynamic recipe, int8 weights with float activations.
  Not litert-torch's own PT2E int8 route: measured here, that model converts but fails at run time
  in the embedding lookup (a zero point other than 0);
- ai-edge-litert's interpreter runs it (`TFLitePredictor`), so a .tflite file is evaluated,
  parity-checked and benchmarked by the same code as every other artifact.

The graph has a static 1 x L input (L = the export's max_length), the shape a phone app feeds one
text at a time: the predictor pads every text to L and runs texts one after another. Its batch-1
latency is therefore at L tokens, not at each text's own length as with ONNX Runtime; the report
notes L beside it.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np

from ..errors import SlimtuneError
from ..measure.predictors import Predictor
from ..tasks.names import CLASSIFY, DEFAULT_LENGTH

TFLITE_FILE = "model.tflite"
EXTRA = "pip install 'slimtune[tflite]'  (litert-torch, ai-edge-litert, ai-edge-quantizer)"


def _need(module: str, what: str):
    import importlib
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ info lines (op counts)
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SlimtuneError(f"{what} needs the optional TFLite tools ({e.name} is missing); run: {EXTRA}") from None


@contextlib.contextmanager
def _quiet():
    """The converter and quantizer print progress, sizes and a warning per int64 input (ours are
    fed as int32, as it says) on stdout, stderr and the root logger; a failure still raises."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def detect(path: Path) -> bool:
    path = Path(path)
    return (path.suffix == ".tflite" and path.is_file()) or (path / TFLITE_FILE).is_file()


def _input_names(tokenizer) -> list[str]:
    enc = tokenizer(["a"], return_tensors="np")
    return [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]


def write_tflite(model, tokenizer, path: Path, max_length: int) -> list[str]:
    """Convert a torch classifier to a float32 .tflite with a static 1 x max_length input; returns
    the input names in the graph's order."""
    import torch

    litert_torch = _need("litert_torch", "TFLite export")
    names = _input_names(tokenizer)
    model = model.eval().float()
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # plain matmul + softmax; SDPA's kernels do not convert

    class _Logits(torch.nn.Module):  # positional inputs in, a plain logits tensor out
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *inputs):
            return self.m(**dict(zip(names, inputs))).logits

    enc = tokenizer(["a short example"], padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    args = tuple(enc[n] for n in names)
    try:
        with torch.inference_mode(), _quiet():
            litert_torch.convert(_Logits(model).eval(), args).export(str(path))
    except SlimtuneError:
        raise
    except Exception as e:  # the converter's failures come from deep in torch.export / MLIR
        raise SlimtuneError(f"TFLite export of {type(model).__name__} failed: {str(e).strip().splitlines()[0]}") from e
    finally:
        model.set_attn_implementation(previous)
    return names


def quantize_int8(src: Path, dst: Path) -> None:
    """int8 weights, float activations (ai-edge-quantizer's `dynamic_wi8_afp32` recipe)."""
    _need("ai_edge_quantizer", "TFLite int8 export")
    from ai_edge_quantizer import quantizer, recipe

    try:
        with _quiet():
            q = quantizer.Quantizer(str(src), recipe.dynamic_wi8_afp32())
            q.quantize().export_model(str(dst))
    except Exception as e:
        raise SlimtuneError(f"TFLite int8 quantization failed: {str(e).strip().splitlines()[0]}") from e


def save(folder: Path, model, tokenizer, int8: bool = False, max_length: int = DEFAULT_LENGTH[CLASSIFY]) -> dict:
    """Write `folder/model.tflite` (+ config.json with labels and the graph's length + tokenizer)."""
    folder = Path(folder)
    fp32 = folder / ("model-fp32.tflite" if int8 else TFLITE_FILE)
    names = write_tflite(model, tokenizer, fp32, max_length)
    if int8:
        quantize_int8(fp32, folder / TFLITE_FILE)
        fp32.unlink()
    model.config.slimtune_tflite = {"sequence_length": max_length, "inputs": names, "int8": int8}
    try:
        model.config.save_pretrained(folder)
    finally:
        del model.config.slimtune_tflite
    tokenizer.save_pretrained(folder)
    return {"tflite_sequence_length": max_length}


class TFLitePredictor(Predictor):
    """A .tflite classifier through ai-edge-litert's interpreter: every text padded to the graph's
    length and run alone (the graph's batch is 1)."""

    kind = "tflite"

    def __init__(self, tflite_path: Path, tokenizer, label_names: list[str], sequence_length: int, inputs: list[str],
                 threads: int | None = None):
        interpreter = _need("ai_edge_litert.interpreter", "running a .tflite model")
        try:
            self.interpreter = interpreter.Interpreter(model_path=str(tflite_path), num_threads=threads or None)
            self.runner = self.interpreter.get_signature_runner()
        except Exception as e:
            raise SlimtuneError(f"{tflite_path}: cannot load TFLite model: {str(e).strip().splitlines()[0]}") from None
        self.path = Path(tflite_path)
        # the converter names the graph's inputs args_0, args_1, ... in the order they were traced
        self.feed_names = sorted(self.runner.get_input_details(), key=lambda n: int(n.rsplit("_", 1)[-1]))
        self.input_names = inputs
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = sequence_length

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        from ..text import encode_padded

        enc = encode_padded(self.tokenizer, texts, self.max_length, self.truncation)
        width = next(iter(enc.values())).shape[1]
        return {k: np.pad(v, ((0, 0), (0, self.max_length - width))).astype(np.int32) for k, v in enc.items()}

    def logits(self, texts: list[str]) -> np.ndarray:
        enc = self.encode(texts)
        rows = []
        for i in range(len(texts)):
            feed = {f: enc[n][i : i + 1] for f, n in zip(self.feed_names, self.input_names)}
            out = self.runner(**feed)
            rows.append(next(iter(out.values()))[0])
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), len(self.label_names))

    def facts(self) -> dict:
        return {"tflite_sequence_length": self.max_length,
                "tflite_note": f"every text padded to {self.max_length} tokens (the graph's static shape)"}

    def num_params(self) -> int:
        # weights only: the interpreter's constant tensors with more than one element, quantization
        # parameters aside (they live in each tensor's `quantization_parameters`, not as tensors)
        details = self.interpreter.get_tensor_details()
        inputs = {d["index"] for d in self.interpreter.get_input_details()}
        return int(sum(int(np.prod(d["shape"])) for d in details
                       if d["index"] not in inputs and len(d["shape"]) > 1 and self._is_constant(d["index"])))

    def _is_constant(self, index: int) -> bool:
        try:
            self.interpreter.get_tensor(index)
            return True
        except ValueError:  # an intermediate tensor has no data outside invoke()
            return False


def predictor(path: Path, max_length: int, labels: list[str] | None = None, task: str | None = None,
              threads: int | None = None):
    """A LiteRT predictor for a folder holding `model.tflite` (or the .tflite file itself). The
    graph's own sequence length wins over `max_length` (its input shape is fixed)."""
    from ..model.folders import load_tokenizer
    from .onnx import read_export

    tfl, folder, names, config = read_export(path, TFLITE_FILE, "a TFLite export", labels, task)
    meta = config.get("slimtune_tflite")
    if not meta:
        raise SlimtuneError(f"{folder}/config.json: no slimtune_tflite entry (sequence length, inputs); re-export it")
    pred = TFLitePredictor(tfl, load_tokenizer(folder, config.get("vocab_size")), names, int(meta["sequence_length"]),
                           list(meta["inputs"]), threads)
    pred.truncation = config.get("slimtune_truncation", "head")
    return pred
