"""A compact ONNX artifact: int8 or 4-bit weights *inside the graph*, embeddings included.

MiniLM's word-embedding table is 11.7M of its 22.7M parameters, so after int8 matmuls the
embeddings are what size is made of. This stage writes one fused ONNX Runtime graph where:

- `matmul: int8` quantizes MatMul and fused Attention weights dynamically (per channel, 7-bit: the
  spine's int8); `int4` makes MatMuls `MatMulNBits` (4-bit blocks, int8 compute with
  `accuracy_level: 4`) and keeps int8 for the fused Attention, which MatMulNBits does not cover;
  `fp32` leaves them;
- `embeddings: int8` quantizes the embedding Gathers with the int8 pass; `int4` replaces the word
  table's Gather by `GatherBlockQuantized` (4-bit blocks of `block_size` along the hidden axis, fp32
  out, `symmetric` or with zero points) and gives the position and token-type tables int8: those
  rows are added to every token, and at 4 bits they moved every prediction at once (MiniLM-L3 on
  Rotten Tomatoes, 2,551 test texts: argmax agreement with torch 0.937 with all tables 4-bit,
  0.979-0.981 with the position table int8, for 0.09 MiB); `fp32` leaves them. For int4 the embedding LayerNorm is not fused (EmbedLayerNormalization takes the
  table as a plain initializer, with no 4-bit form), so the word-embedding Gather stays a node.

`fuse` runs ONNX Runtime's transformer optimizer on the exported graph (fused Attention,
SkipLayerNormalization, Gelu, EmbedLayerNormalization); `fuse: false` keeps the exporter's plain
MatMul/Softmax graph. `per_channel` and `reduce_range` are the int8 pass's weight scales (one per
output channel; 7-bit weights, which also avoid the u8s8 overflow of CPUs without VNNI). The
stage records the graph it wrote: `onnx_ops` (nodes per op type) and `onnx_fusions` (those of
them that are fused ops, quantized forms included).

Put `trim_vocab` before this stage and the table itself is smaller. The stage checks parity against
the torch model it came from on validation texts (max |Δlogit|, argmax agreement) like every export.
Whether 4-bit is faster or only smaller is measured by the run, not assumed (report: latency column).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import SlimtuneError, check_ranges
from ..stage import Artifact, StageContext, StageResult, register

PRECISIONS = ("int8", "int4", "fp32")
# ONNX Runtime's fused ops for encoders (what its transformer optimizer writes), and their int8 forms
FUSED_OPS = ("Attention", "QAttention", "MultiHeadAttention", "EmbedLayerNormalization", "QEmbedLayerNormalization",
             "SkipLayerNormalization", "BiasGelu", "FastGelu", "Gelu", "BiasSkipLayerNormalization")


@dataclass
class OnnxCompactConfig:
    matmul: str = "int8"  # int8 | int4 | fp32: encoder weights
    embeddings: str = "int4"  # int8 | int4 | fp32: embedding tables
    block_size: int = 32  # 4-bit: weights per scale (a power of 2, >= 16)
    symmetric: bool = True  # 4-bit: symmetric blocks, or blocks with a zero point each
    parity_texts: int = 256  # validation texts the parity check runs on
    fuse: bool = True  # ONNX Runtime's transformer fusions (Attention, SkipLayerNormalization, Gelu)
    per_channel: bool = True  # int8: one weight scale per output channel (else one per tensor)
    reduce_range: bool = True  # int8: 7-bit weights

    def __post_init__(self) -> None:
        for key in ("fuse", "per_channel", "reduce_range", "symmetric"):
            if not isinstance(getattr(self, key), bool):
                raise SlimtuneError(f"onnx_compact: {key} must be true or false, not {getattr(self, key)!r}")
        if self.matmul not in PRECISIONS or self.embeddings not in PRECISIONS:
            raise SlimtuneError(f"onnx_compact: matmul and embeddings must be one of {', '.join(PRECISIONS)}, "
                                f"got {self.matmul!r}, {self.embeddings!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise SlimtuneError(f"onnx_compact: block_size must be a power of 2 >= 16, got {self.block_size}")
        check_ranges("onnx_compact", self, parity_texts=">= 1")

    def label(self) -> str:
        four = f" (4-bit blocks of {self.block_size}, {'symmetric' if self.symmetric else 'with zero points'})" \
            if "int4" in (self.matmul, self.embeddings) else ""
        eight = "" if (self.per_channel, self.reduce_range) == (True, True) or not int8_ops(self) else \
            f", int8 {'per channel' if self.per_channel else 'per tensor'}{', 7-bit' if self.reduce_range else ''}"
        return f"ONNX matmul {self.matmul}, embeddings {self.embeddings}{four}{eight}{'' if self.fuse else ', unfused'}"


def int8_ops(cfg: OnnxCompactConfig) -> list[str]:
    """The op types the int8 pass quantizes (fused Attention stays int8 under 4-bit MatMuls)."""
    return (["MatMul", "Attention"] if cfg.matmul == "int8" else ["Attention"] if cfg.matmul == "int4" else []) \
        + (["Gather", "EmbedLayerNormalization"] if cfg.embeddings == "int8" else ["Gather"] if cfg.embeddings == "int4" else [])


def graph_ops(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(nodes per op type, fused ops per op type) of the ONNX graph at `path`, most frequent first."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    ops = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return ops, {k: n for k, n in ops.items() if k in FUSED_OPS}


def _other_tables(graph, vocab_size: int) -> list[str]:
    """The Gather nodes over constant tables other than the word embeddings (positions, types)."""
    rows = {i.name: i.dims[0] for i in graph.initializer if len(i.dims) == 2}
    return [n.name for n in graph.node if n.op_type == "Gather" and rows.get(n.input[0], vocab_size) != vocab_size]


def _nbits(src: Path, dst: Path, op_types: tuple[str, ...], cfg: OnnxCompactConfig, vocab_size: int) -> None:
    """ORT's weight-only 4-bit quantizer: MatMul -> MatMulNBits, the word table's Gather ->
    GatherBlockQuantized."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)  # its import ran logging.basicConfig(level=INFO)
    graph = onnx.load(str(src))
    q = MatMulNBitsQuantizer(graph, bits=4, block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                             accuracy_level=4, op_types_to_quantize=op_types,
                             nodes_to_exclude=_other_tables(graph.graph, vocab_size),
                             quant_axes=(("MatMul", 0), ("Gather", 1)))
    q.process()
    q.model.save_model_to_file(str(dst), use_external_data_format=False)


def _dynamic(src: Path, dst: Path, op_types: list[str], cfg: OnnxCompactConfig) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=cfg.per_channel,
                     reduce_range=cfg.reduce_range, op_types_to_quantize=op_types,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def build(model, tokenizer, cfg: OnnxCompactConfig, work: Path) -> Path:
    """Write the compact graph for `model` into `work`; returns its path."""
    from ..artifacts.onnx import quiet_root_logger, write_onnx

    work.mkdir(parents=True, exist_ok=True)
    path = work / "fp32.onnx"
    eight = int8_ops(cfg)
    nbits_ops = (("MatMul",) if cfg.matmul == "int4" else ()) + (("Gather",) if cfg.embeddings == "int4" else ())
    # ORT's quantizers (and its graph optimizer) log every tensor at INFO on the root logger once
    # the 4-bit one has run
    with warnings.catch_warnings(), quiet_root_logger():
        warnings.simplefilter("ignore")
        write_onnx(model, tokenizer, path, optimize=cfg.fuse, embed_layer_norm=cfg.embeddings != "int4")
        if nbits_ops:  # 4-bit first: the int8 pass would turn the float MatMuls into integer ones
            nxt = work / "nbits.onnx"
            _nbits(path, nxt, nbits_ops, cfg, model.config.vocab_size)
            path = nxt
        if eight:
            nxt = work / "int8.onnx"
            _dynamic(path, nxt, eight, cfg)
            path = nxt
    return path


@register("onnx_compact", OnnxCompactConfig)
def onnx_compact(model, tokenizer, cfg: OnnxCompactConfig, ctx: StageContext):
    """One ONNX graph with int8/4-bit weights and int8/4-bit embeddings inside, parity-checked."""
    from ..measure.bench import int8_isa
    from ..measure.metrics import parity
    from ..measure.predictors import OnnxPredictor, TorchPredictor, batched_logits

    info = int8_isa(ctx.log) if "int8" in (cfg.matmul, cfg.embeddings) or cfg.matmul == "int4" else {}
    work = Path(ctx.work_dir)
    try:
        path = build(model, tokenizer, cfg, work)
    except SlimtuneError:
        raise
    except Exception as e:  # exporter / quantizer failures are deep: one line
        raise SlimtuneError(f"onnx_compact: {cfg.label()} of {type(model).__name__} failed: {str(e).splitlines()[0]}") from e
    texts = (ctx.splits.val.texts or ctx.splits.train.texts)[: cfg.parity_texts]
    check = {}
    if texts:
        names = ctx.splits.label_names
        src = batched_logits(TorchPredictor(model, tokenizer, ctx.max_length), texts)
        out = batched_logits(OnnxPredictor(path, tokenizer, names, ctx.max_length), texts)
        check = parity(src, out)
        ctx.log(f"  {cfg.label()}: parity on {len(texts)} validation texts: max |Δlogit| "
                f"{check['max_abs_logit_diff']:.3g}, argmax agreement {check['argmax_agreement']:.4f}")
    ops, fusions = graph_ops(path)
    ctx.log(f"  fused ops: {', '.join(f'{k} x{n}' for k, n in fusions.items()) or 'none'}")
    info |= {"onnx_quantization": cfg.label(), "parity_val": check, "int8_compute": cfg.matmul != "fp32",
             "onnx_fusions": fusions, "onnx_ops": ops}

    return StageResult(model, tokenizer, info, Artifact("onnx", {"onnx_file": path}))
