"""One interface over a torch model and an ONNX Runtime session: texts in, logits out.

Evaluation, benchmarking, export parity checks and `slimtune predict` all go through a
`Predictor`, so a torch model and its ONNX export are measured by the very same code. Which
predictor an artifact folder gets is the artifact registry's choice (`artifacts.load_predictor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SlimtuneError
from ..tasks.names import CLASSIFY, DEFAULT_LENGTH

DEFAULT_MAX_LENGTH = DEFAULT_LENGTH[CLASSIFY]  # a classifier's, when a caller gives none (text.length_for cuts it to a model)


class Predictor:
    kind = "?"
    label_names: list[str]
    tokenizer = None
    max_length: int = DEFAULT_MAX_LENGTH
    truncation: str = "head"  # or head_tail: how the model was trained to see long texts

    def logits(self, texts: list[str]) -> np.ndarray:  # (B, num_labels) float32
        raise NotImplementedError

    def num_params(self) -> int:
        raise NotImplementedError

    def facts(self) -> dict:
        """What a benchmark of this runtime should say beside its timings."""
        return {}

    def logits_and_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[int | None]]:
        """`logits(texts)`, and for each text longer than max_length its full token count (None
        for a text that fit): what a server tells a client whose text was cut. This default
        tokenizes the long texts a second time; `EncodedPredictor` counts from its one tokenization."""
        return self.logits(texts), token_counts(self, texts)

    def encode(self, texts: list[str], lengths: list[int] | None = None) -> dict[str, np.ndarray]:
        """The model's padded int64 inputs. `lengths`, when given, receives for each text its token
        count before truncation where that is over max_length (a text that fits may get 0): from
        the same tokenization where the fast encoder runs, from a second one otherwise."""
        from ..text import encode_padded

        if self.truncation == "head":
            tok = self.tokenizer  # what FastEncoder copies: a pad token or side changed later makes a new copy
            key = (id(tok), self.max_length, getattr(tok, "pad_token_id", None), getattr(tok, "padding_side", None))
            if getattr(self, "_fast_key", None) != key:
                self._fast, self._fast_key = FastEncoder.of(self.tokenizer, self.max_length), key
            if self._fast is not None:
                return self._fast(texts, lengths)
        if lengths is not None:
            lengths += [n or 0 for n in token_counts(self, texts)]  # 0: fits (the count of a short text is not needed)
        return encode_padded(self.tokenizer, texts, self.max_length, self.truncation)


class EncodedPredictor(Predictor):
    """A predictor whose model takes `encode`'s arrays: `forward(enc)` runs the model, and a text
    is tokenized once whether or not its full length is asked for."""

    def forward(self, enc: dict[str, np.ndarray]) -> np.ndarray:  # (B, num_labels) float32
        raise NotImplementedError

    def logits(self, texts: list[str]) -> np.ndarray:
        return self.forward(self.encode(texts))

    def logits_and_tokens(self, texts: list[str]) -> tuple[np.ndarray, list[int | None]]:
        lengths: list[int] = []
        logits = self.forward(self.encode(texts, lengths))
        return logits, [n if n > self.max_length else None for n in lengths]


def token_counts(pred: Predictor, texts: list[str]) -> list[int | None]:
    """For each text longer than the predictor's max_length in tokens, its full token count; else None.

    Every token covers at least one byte of the text, so a text of fewer UTF-8 bytes than
    max_length minus the special tokens cannot be truncated and is not tokenized again.
    """
    tok = pred.tokenizer
    out: list[int | None] = [None] * len(texts)
    if tok is None:  # no tokens (a TF-IDF floor): nothing is cut
        return out
    room = pred.max_length - tok.num_special_tokens_to_add()
    long = [i for i, t in enumerate(texts) if len(t.encode("utf-8")) > room]
    if long:
        ids = tok([texts[i] for i in long], truncation=False, add_special_tokens=True)["input_ids"]
        for i, row in zip(long, ids):
            if len(row) > pred.max_length:
                out[i] = len(row)
    return out


class FastEncoder:
    """`tokenizer(texts, padding=True, truncation=True, max_length=L, return_tensors="np")`, the
    same arrays, straight from a private copy of the fast tokenizer's Rust backend.

    Why by hand: transformers' `__call__` re-checks and re-sets the backend's truncation and padding
    and converts every encoding in Python on each call. That is 0.10-0.18 ms per text here, over a
    tenth of a compact MiniLM's whole batch-1 latency (~1 ms); the backend alone takes 0.04-0.07 ms.
    The copy is configured once, so the caller's tokenizer is never changed.
    tests/test_predictors.py holds it equal to `__call__` (truncation, padding, both padding sides)."""

    FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}  # HF name -> Encoding's

    def __init__(self, backend, names: list[str]):
        self.backend, self.names = backend, names

    @classmethod
    def of(cls, tokenizer, max_length: int) -> "FastEncoder | None":
        """None when `tokenizer` has no Rust backend or no pad token (the caller falls back)."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not getattr(tokenizer, "is_fast", False) or tokenizer.pad_token is None:
            return None
        from tokenizers import Tokenizer

        copy = Tokenizer.from_str(backend.to_str())
        copy.enable_truncation(max_length, direction=tokenizer.truncation_side)
        copy.enable_padding(direction=tokenizer.padding_side, pad_id=tokenizer.pad_token_id,
                            pad_type_id=tokenizer.pad_token_type_id, pad_token=tokenizer.pad_token)
        names = [n for n in cls.FIELDS if n in tokenizer.model_input_names]
        return cls(copy, names)

    def __call__(self, texts: list[str], lengths: list[int] | None = None) -> dict[str, np.ndarray]:
        """The arrays; `lengths`, when given, receives each text's token count before truncation."""
        if len(texts) == 1:
            encs = [self.backend.encode(texts[0])]
        else:
            encs = self.backend.encode_batch(list(texts))
        if lengths is not None:
            # truncation keeps what it cut as `overflowing` pieces, each post-processed (special
            # tokens added, padded) like the kept one: the full count without a second tokenization
            special = self.backend.num_special_tokens_to_add(False)
            lengths += [sum(e.attention_mask) + sum(sum(o.attention_mask) - special for o in e.overflowing) for e in encs]
        return {n: np.array([getattr(e, self.FIELDS[n]) for e in encs], dtype=np.int64) for n in self.names}


class TorchPredictor(EncodedPredictor):
    kind = "torch"

    def __init__(self, model, tokenizer, max_length: int = DEFAULT_MAX_LENGTH):
        from ..model.folders import label_names_of

        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.label_names = label_names_of(model)
        self.truncation = getattr(model.config, "slimtune_truncation", "head")
        self.device = "cpu"

    def to(self, device: str) -> "TorchPredictor":
        """Run on `device` (cpu, cuda); logits always come back as a CPU array."""
        self.model.to(device)
        self.device = device
        return self

    def forward(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        enc = {k: torch.from_numpy(v).to(self.device) for k, v in enc.items()}
        with torch.inference_mode():
            out = self.model(**enc).logits
        return out.float().cpu().numpy()

    def num_params(self) -> int:
        n = sum(p.numel() for p in self.model.parameters())
        # torch's dynamically quantized Linear packs its weight and bias outside parameters()
        for m in self.model.modules():
            if hasattr(m, "_packed_params") and callable(getattr(m, "weight", None)):
                n += m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
        return n


class OnnxPredictor(EncodedPredictor):
    kind = "onnx"

    def __init__(self, onnx_path: Path, tokenizer, label_names: list[str], max_length: int = DEFAULT_MAX_LENGTH, threads: int | None = None,
                 providers: list[str] | None = None, spin: bool = True):
        import onnxruntime as ort

        opts = session_options(threads, spin)
        try:
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for a bad file
            raise SlimtuneError(f"{onnx_path}: cannot load ONNX model: {str(e).splitlines()[0]}") from None
        self.path = Path(onnx_path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = tokenizer
        self.label_names = list(label_names)
        self.max_length = max_length

    def forward(self, enc: dict[str, np.ndarray]) -> np.ndarray:
        feed = {name: enc[name] for name in self.input_names}
        return self.session.run(["logits"], feed)[0].astype(np.float32)

    def num_params(self) -> int:
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        return onnx_params(model.graph)


def session_options(threads: int | None = None, spin: bool = True):
    """ONNX Runtime's session settings, each chosen rather than left to the runtime's defaults:
    `threads` intra-op threads (default one per physical core: a second hyperthread on a core
    adds contention, not arithmetic), one inter-op thread and sequential execution (a BERT graph
    is a chain: nothing runs in parallel between ops), every graph optimization (the fusions and
    layout changes ORT can make at load), and `spin`: whether idle pool threads busy-wait for the
    next call. A benchmark spins (back-to-back calls); a server does not: its pool threads would
    take the cores the event loop (HTTP, JSON) needs between requests (docs/figures.md: 2.8x
    served texts/s on a shared 2-core machine)."""
    import onnxruntime as ort

    from ..compute import physical_cores

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return opts


def onnx_params(graph) -> int:
    """Weights in an ONNX graph, counted as weights (one per number), not as stored elements:
    quantization adds scale / zero-point tensors that are not parameters, and MatMulNBits packs its
    4-bit weights two to a byte in (N, blocks, bytes) blobs, so its weight counts as N x K; integer
    and one-number constants an optimised graph carries are not weights. (GatherBlockQuantized
    stores an INT4/UINT4 tensor whose dims are the weight's own.)"""
    import onnx

    skip, extra = set(), 0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "MatMulNBits":  # inputs: A, B (packed), scales, zero_points, g_idx, bias
            skip.update(node.input[1:5])
            extra += int(attrs["N"]) * int(attrs["K"])
        elif node.op_type == "GatherBlockQuantized":  # inputs: data, indices, scales, zero_points
            skip.update(node.input[2:4])
    index = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)  # shapes, axes, position ids: constants, not weights
    return extra + int(sum(n for t in graph.initializer if (n := int(np.prod(t.dims, dtype=np.int64))) > 1
                           and t.data_type not in index and t.name not in skip and not t.name.endswith(("_scale", "_zero_point"))))


def batched_logits(pred: Predictor, texts: list[str], batch_size: int = 32, progress: str | None = None) -> np.ndarray:
    """Logits for all `texts`, batched by similar length (less padding), in the input order."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), len(pred.label_names)), dtype=np.float32)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for idx in _progress(batches, progress):
        out[idx] = pred.logits([texts[i] for i in idx])
    return out


def _progress(items, description: str | None):
    from ..console import track

    return track(items, description)


@dataclass
class Prediction:
    label: str
    probability: float
    probabilities: dict[str, float]


def predict(pred: Predictor, texts: list[str]) -> list[Prediction]:
    logits = batched_logits(pred, texts)
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    result = []
    for row in probs:
        k = int(row.argmax())
        result.append(Prediction(pred.label_names[k], float(row[k]), dict(zip(pred.label_names, map(float, row)))))
    return result
