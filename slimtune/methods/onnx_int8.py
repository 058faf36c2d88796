"""ONNX Runtime int8 as a stage: dynamic, or static with calibration on the run's training texts,
behind an accuracy guard.

Static quantization fixes every activation's range from calibration texts; a range taken from
texts unlike the real ones clips real activations and accuracy collapses (onnxruntime issues
6695, 10571, 11286). So the stage quantizes, measures the int8 graph against the fp32 graph on the
*validation* split (never test: the report's test figures stay unseen), and when accuracy drops
more than `max_accuracy_drop` it falls back to the next safer setting, and says so:

    static as asked  ->  dynamic int8 (the spine's: no calibration)  ->  fp32 ONNX

It is a stage rather than an export because calibration needs the run's data and the guard its
validation split, which stages get (`ctx.splits`) and exports do not. The stage writes
`model.onnx` (+ config + tokenizer) as an ONNX artifact; being ONNX, it ends a chain (no later stage
can start from it).
"""

from __future__ import annotations

import contextlib
import io
import random
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import SlimtuneError, check_ranges
from ..stage import Artifact, StageContext, StageResult, register

CALIBRATIONS = ("minmax", "entropy", "percentile")


@dataclass
class OnnxInt8Config:
    mode: str = "static"  # static (calibrated activations) | dynamic (activations quantized per call)
    calibration: str = "minmax"  # static: minmax | entropy | percentile
    per_channel: bool = True  # one weight scale per output channel
    reduce_range: bool = True  # 7-bit weights: avoids u8s8 overflow on CPUs without VNNI
    format: str = "qdq"  # static: qdq (QuantizeLinear/DequantizeLinear pairs) | qoperator
    calibration_samples: int = 256  # training texts the activation ranges are taken from (seeded)
    percentile: float = 99.999  # percentile calibration: the kept share of |activations|
    const_matmul_only: bool = False  # static: leave the activation x activation MatMuls (Q.K^T) in fp32
    max_accuracy_drop: float = 0.005  # guard, on validation accuracy vs the fp32 ONNX graph (0.005 = 0.5 point)
    seed: int = 42

    def __post_init__(self) -> None:
        if self.mode not in ("static", "dynamic"):
            raise SlimtuneError(f"onnx_int8: mode must be static or dynamic, got {self.mode!r}")
        if self.calibration not in CALIBRATIONS:
            raise SlimtuneError(f"onnx_int8: calibration must be one of {', '.join(CALIBRATIONS)}, got {self.calibration!r}")
        if self.format not in ("qdq", "qoperator"):
            raise SlimtuneError(f"onnx_int8: format must be qdq or qoperator, got {self.format!r}")
        if self.calibration_samples < 1 or not 90 < self.percentile <= 100 or self.max_accuracy_drop < 0:
            raise SlimtuneError("onnx_int8: calibration_samples >= 1, percentile in (90, 100], max_accuracy_drop >= 0")
        check_ranges("onnx_int8", self, seed=">= 0")

    def label(self) -> str:
        if self.mode == "dynamic":
            return "dynamic" + (" per-channel" if self.per_channel else "")
        return (f"static {self.calibration} {self.format}" + (" per-channel" if self.per_channel else "")
                + (" const-MatMul-only" if self.const_matmul_only else ""))


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol: one tokenized text per call, then None.

    Histogram calibrators (entropy, percentile) stack every call's activations, so their texts
    are padded to one length (the longest calibration text); min-max takes each text as is."""

    def __init__(self, tokenizer, texts: list[str], input_names: list[str], max_length: int, pad: bool):
        longest = max(len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"])
        how = dict(padding="max_length", max_length=longest) if pad else dict(max_length=max_length)
        self.batches = iter(
            {k: v.astype("int64") for k, v in tokenizer([t], truncation=True, return_tensors="np", **how).items() if k in input_names}
            for t in texts
        )

    def get_next(self):
        return next(self.batches, None)


def quantize_static(fp32: Path, dst: Path, cfg: OnnxInt8Config, tokenizer, texts: list[str], max_length: int) -> None:
    """Static int8 of an *unfused* fp32 graph (`write_onnx(optimize=False)`): every MatMul (the
    attention score products too, unless `const_matmul_only`) and the embedding Gathers.

    Measured on MiniLM-L6 / Rotten Tomatoes (validation accuracy against fp32): all op types of
    the fused graph fail in ORT 1.32 (a pooler bias gets no scale; there is no static QDQ
    Attention), and its MatMuls alone ran slower than fp32 in a quick check on a busy machine;
    every op type of the unfused graph lost 3.6 points; MatMul + Gather matched fp32."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static as ort_static

    from ..artifacts.onnx import quiet_root_logger

    names = [i.name for i in ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()]
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    reader = _Calibration(tokenizer, texts, names, max_length, pad=cfg.calibration != "minmax")
    # ORT's calibrators print progress and log a "consider pre-processing" warning per call
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_root_logger():
        warnings.simplefilter("ignore")
        ort_static(
            str(fp32), str(dst), reader,
            quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
            op_types_to_quantize=["MatMul", "Gather"],
            per_channel=cfg.per_channel, reduce_range=cfg.reduce_range,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=method[cfg.calibration],
            extra_options={"CalibPercentile": cfg.percentile, "MatMulConstBOnly": cfg.const_matmul_only},
        )


def _candidates(cfg: OnnxInt8Config) -> list[OnnxInt8Config | None]:
    """The setting asked for, then safer ones; None is the fp32 graph (no quantization).

    Dynamic int8 is the step after static: it takes no ranges from calibration texts, so a
    calibration set unlike the real inputs cannot hurt it. (Percentile and entropy calibration
    were not safer here: both lost 0.9 points on MiniLM-L6 / Rotten Tomatoes where min-max lost none.)"""
    chain = [cfg]
    if cfg.mode == "static":
        chain.append(replace(cfg, mode="dynamic", per_channel=True, reduce_range=True))
    return chain + [None]


def _accuracy(onnx_path: Path, tokenizer, data, label_names, max_length: int) -> float:
    from ..measure.metrics import evaluate
    from ..measure.predictors import OnnxPredictor

    return evaluate(OnnxPredictor(onnx_path, tokenizer, label_names, max_length), data)[0]["accuracy"]


@register("onnx_int8", OnnxInt8Config)
def onnx_int8(model, tokenizer, cfg: OnnxInt8Config, ctx: StageContext):
    """ONNX Runtime int8 (static calibrated or dynamic) with an accuracy guard and fallback."""
    from ..artifacts.onnx import quantize_int8, write_onnx
    from ..measure.bench import int8_isa

    info = int8_isa(ctx.log)
    work = Path(ctx.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    fused, plain = work / "model-fp32.onnx", work / "model-fp32-unfused.onnx"
    try:
        write_onnx(model, tokenizer, fused)
        if any(c and c.mode == "static" for c in _candidates(cfg)):
            write_onnx(model, tokenizer, plain, optimize=False)
    except Exception as e:
        raise SlimtuneError(f"onnx_int8: ONNX export of {type(model).__name__} failed: {str(e).splitlines()[0]}") from e
    texts = list(ctx.splits.train.texts)
    random.Random(cfg.seed).shuffle(texts)
    texts = texts[: cfg.calibration_samples]
    val, labels = ctx.splits.val, ctx.splits.label_names
    base = _accuracy(fused, tokenizer, val, labels, ctx.max_length) if len(val) else None
    tried, kept = [], None
    for i, cand in enumerate(_candidates(cfg)):
        path = work / f"candidate-{i}.onnx"
        if cand is None:
            shutil.copy(fused, path)
        elif cand.mode == "dynamic":
            quantize_int8(fused, path)  # the spine's: per-channel, reduce_range, fused graph
        else:
            if not texts:
                raise SlimtuneError("onnx_int8: static calibration needs training texts, and the train split is empty")
            try:
                quantize_static(plain, path, cand, tokenizer, texts, ctx.max_length)
            except Exception as e:  # ORT's calibrators fail deep inside numpy; keep one line
                raise SlimtuneError(f"onnx_int8: static quantization ({cand.label()}) failed: {str(e).splitlines()[0]}") from e
        label = cand.label() if cand else "fp32 (no quantization)"
        acc = _accuracy(path, tokenizer, val, labels, ctx.max_length) if base is not None else None
        tried.append({"setting": label, "val_accuracy": acc})
        if base is None or cand is None or base - acc <= cfg.max_accuracy_drop:
            kept = (cand, path, label)
            break
        ctx.log(f"  guard: {label} lost {100 * (base - acc):.2f} points on validation "
                f"(limit {100 * cfg.max_accuracy_drop:.2f}); trying a safer setting")
    cand, path, label = kept
    if len(tried) > 1:
        ctx.log(f"  guard: fell back to {label} (asked for {tried[0]['setting']})")
    info |= {
        "onnx_quantization": label, "asked": tried[0]["setting"], "fell_back": len(tried) > 1,
        "guard_val_accuracy_fp32": base, "guard_tried": tried,
        "calibration_texts": len(texts) if cfg.mode == "static" else 0,
        "int8_compute": cand is not None,
    }
    if base is None:
        ctx.log("  guard skipped: the data has no validation split (data.val_size is 0)")

    return StageResult(model, tokenizer, info, Artifact("onnx", {"onnx_file": path}))
