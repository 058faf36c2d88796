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


@dataclass
class OnnxCompactConfig:
    matmul: str = "int8"  # int8 | int4 | fp32: encoder weights
    embeddings: str = "int4"  # int8 | int4 | fp32: embedding tables
    block_size: int = 32  # 4-bit: weights per scale (a power of 2, >= 16)
    symmetric: bool = True  # 4-bit: symmetric blocks, or blocks with a zero point each
    parity_texts: int = 256  # validation texts the parity check runs on

    def __post_init__(self) -> None:
        if self.matmul not in PRECISIONS or self.embeddings not in PRECISIONS:
            raise SlimtuneError(f"onnx_compact: matmul and embeddings must be one of {', '.join(PRECISIONS)}, "
                                f"got {self.matmul!r}, {self.embeddings!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise SlimtuneError(f"onnx_compact: block_size must be a power of 2 >= 16, got {self.block_size}")
        check_ranges("onnx_compact", self, parity_texts=">= 1")

    def label(self) -> str:
        four = f" (4-bit blocks of {self.block_size}, {'symmetric' if self.symmetric else 'with zero points'})" \
            if "int4" in (self.matmul, self.embeddings) else ""
        return f"ONNX matmul {self.matmul}, embeddings {self.embeddings}{four}"


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


def _dynamic(src: Path, dst: Path, op_types: list[str]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     op_types_to_quantize=op_types, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def build(model, tokenizer, cfg: OnnxCompactConfig, work: Path) -> Path:
    """Write the compact graph for `model` into `work`; returns its path."""
    from ..artifacts.onnx import quiet_root_logger, write_onnx

    work.mkdir(parents=True, exist_ok=True)
    path = work / "fp32.onnx"
    int8_ops = (["MatMul", "Attention"] if cfg.matmul == "int8" else ["Attention"] if cfg.matmul == "int4" else []) \
        + (["Gather", "EmbedLayerNormalization"] if cfg.embeddings == "int8" else ["Gather"] if cfg.embeddings == "int4" else [])
    nbits_ops = (("MatMul",) if cfg.matmul == "int4" else ()) + (("Gather",) if cfg.embeddings == "int4" else ())
    # ORT's quantizers (and its graph optimizer) log every tensor at INFO on the root logger once
    # the 4-bit one has run
    with warnings.catch_warnings(), quiet_root_logger():
        warnings.simplefilter("ignore")
        write_onnx(model, tokenizer, path, embed_layer_norm=cfg.embeddings != "int4")
        if nbits_ops:  # 4-bit first: the int8 pass would turn the float MatMuls into integer ones
            nxt = work / "nbits.onnx"
            _nbits(path, nxt, nbits_ops, cfg, model.config.vocab_size)
            path = nxt
        if int8_ops:
            nxt = work / "int8.onnx"
            _dynamic(path, nxt, int8_ops)
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
    info |= {"onnx_quantization": cfg.label(), "parity_val": check, "int8_compute": cfg.matmul != "fp32"}

    return StageResult(model, tokenizer, info, Artifact("onnx", {"onnx_file": path}))
