"""Storage codecs for compact folders (compact.py): sparse, fp16, bf16, int8, int4 (group-wise), k-means.

Each codec turns one weight tensor into a few smaller tensors plus JSON settings, and back into
fp32 on load (weight-only: the model computes in fp32, or in whatever a storage runtime casts it
to). Each is registered once in CODECS, here.

    sparse        2-D weights, a bitmask of the non-zeros plus their values  size ~ density
    fp16 / bf16   every float tensor cast to 16 bits                      2x smaller
    int8          2-D weights, one symmetric scale per row (output channel) ~4x
    int4          2-D weights, 4-bit codes two per byte, one fp16 scale and  ~6-7x
                  one fp16 minimum per `group_size` weights of a row
    kmeans        2-D weights, a codebook of `centroids` fp32 values per matrix ~8x (16) / ~4x (256)
                  and one index per weight (two per byte when centroids <= 16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Codec:
    """encode(tensor) -> (parts, meta); decode(parts, meta) -> tensor. meta must be JSON-able."""

    name: str
    encode: Callable
    decode: Callable
    applies: Callable  # (param name, tensor) -> bool; tensors it does not apply to are stored as is


CODECS: dict[str, Codec] = {}


def register_codec(codec: Codec) -> Codec:
    CODECS[codec.name] = codec
    return codec


def is_matrix(name: str, t) -> bool:
    """2-D float weights (Linear and embedding matrices): where compression pays."""
    return t.dim() == 2 and t.is_floating_point() and t.numel() >= 1024


# --- sparse: a bitmask of the non-zeros plus their values ------------------------------------

def _sparse_encode(t):
    import numpy as np
    import torch

    flat = t.detach().contiguous().reshape(-1)
    nz = flat != 0
    bits = np.packbits(nz.numpy())  # 1 bit per element, 8 elements a byte
    return {"mask": torch.from_numpy(bits), "values": flat[nz].clone()}, {"shape": list(t.shape)}


def _sparse_decode(parts, meta):
    import numpy as np
    import torch

    shape = meta["shape"]
    n = int(np.prod(shape))
    nz = torch.from_numpy(np.unpackbits(parts["mask"].numpy(), count=n).astype(bool))
    values = parts["values"]
    if int(nz.sum()) != values.numel():
        raise ValueError("sparse mask and values disagree")
    out = torch.zeros(n, dtype=values.dtype)
    out[nz] = values
    return out.reshape(shape)


register_codec(Codec("sparse", _sparse_encode, _sparse_decode, is_matrix))


def is_float(name: str, t) -> bool:
    return t.is_floating_point()


# --- fp16 / bf16: a plain cast --------------------------------------------------------------

def _cast_codec(name: str, dtype: torch.dtype) -> Codec:
    def encode(t):
        half = t.detach().to(dtype)
        if not torch.isfinite(half).all():
            raise ValueError(f"values outside the {name} range")
        return {"data": half}, {"dtype": str(t.dtype).removeprefix("torch.")}

    def decode(parts, meta):
        return parts["data"].to(getattr(torch, meta["dtype"]))

    return Codec(name, encode, decode, is_float)


register_codec(_cast_codec("fp16", torch.float16))
register_codec(_cast_codec("bf16", torch.bfloat16))


# --- int8: symmetric, one scale per row -----------------------------------------------------

def _int8_encode(t):
    w = t.detach().float()
    scale = (w.abs().amax(dim=1, keepdim=True) / 127).clamp(min=1e-12)  # (rows, 1)
    q = torch.round(w / scale).clamp(-127, 127).to(torch.int8)
    return {"q": q, "scale": scale.squeeze(1)}, {}


def _int8_decode(parts, meta):
    return parts["q"].float() * parts["scale"].unsqueeze(1)


register_codec(Codec("int8", _int8_encode, _int8_decode, is_matrix))


# --- int4: asymmetric, group-wise along each row, packed two codes a byte --------------------

def _pack4(codes):  # uint8 codes 0..15, even count -> half as many bytes
    codes = codes.reshape(-1, 2)
    return (codes[:, 0] | (codes[:, 1] << 4)).contiguous()


def _unpack4(packed, n):
    return torch.stack([packed & 15, packed >> 4], dim=1).reshape(-1)[:n]


def _int4_encode(t, group_size: int = 64):
    if group_size < 2 or group_size % 2:
        raise ValueError(f"int4 group_size must be an even number >= 2, got {group_size}")
    rows, cols = t.shape
    pad = -cols % group_size  # rows are padded to whole groups; the padding is dropped on decode
    w = torch.nn.functional.pad(t.detach().float(), (0, pad)).reshape(rows, -1, group_size)  # (R, G, g)
    lo, hi = w.amin(dim=2, keepdim=True), w.amax(dim=2, keepdim=True)
    lo, scale = lo.half().float(), ((hi - lo) / 15).clamp(min=1e-8).half().float()  # as stored
    codes = torch.round((w - lo) / scale).clamp(0, 15).to(torch.uint8)
    return ({"codes": _pack4(codes.reshape(-1)), "scale": scale.squeeze(2).half(), "min": lo.squeeze(2).half()},
            {"shape": [rows, cols], "group_size": group_size})


def _int4_decode(parts, meta):
    rows, cols = meta["shape"]
    g = meta["group_size"]
    groups = parts["scale"].shape[1]
    codes = _unpack4(parts["codes"], rows * groups * g).reshape(rows, groups, g).float()
    w = codes * parts["scale"].float().unsqueeze(2) + parts["min"].float().unsqueeze(2)
    return w.reshape(rows, groups * g)[:, :cols].contiguous()


register_codec(Codec("int4", _int4_encode, _int4_decode, is_matrix))


# --- kmeans: a per-matrix codebook (non-linear levels), one index per weight -----------------

def kmeans_1d(values, k: int, iters: int = 25, sample: int = 1 << 20):
    """Lloyd's algorithm on scalars, initialised at quantiles (dense where the weights are).

    Centroids are fitted on a seeded sample of at most `sample` values (a 1-D distribution is
    well estimated by a million draws; the 11.7M-weight embedding table took 13 s without),
    then every value gets its nearest centroid."""
    x = values.reshape(-1).float()
    fit = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(0))[:sample]]
    centroids = torch.quantile(fit[: 1 << 16], torch.linspace(0, 1, k)).unique()
    for _ in range(iters):
        idx = torch.bucketize(fit, (centroids[1:] + centroids[:-1]) / 2)  # nearest centroid (sorted)
        sums = torch.zeros_like(centroids).scatter_add_(0, idx, fit)
        counts = torch.zeros_like(centroids).scatter_add_(0, idx, torch.ones_like(fit))
        moved = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
        if torch.allclose(moved, centroids):
            break
        centroids = moved
    return centroids, torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)


def _kmeans_encode(t, centroids: int = 16):
    if not 2 <= centroids <= 256:
        raise ValueError(f"kmeans centroids must be in 2..256, got {centroids}")
    codebook, idx = kmeans_1d(t.detach(), centroids)
    idx = idx.to(torch.uint8)
    packed = centroids <= 16
    if packed:
        idx = _pack4(torch.nn.functional.pad(idx, (0, idx.numel() % 2)))
    return {"codebook": codebook, "index": idx}, {"shape": list(t.shape), "packed4": packed}


def _kmeans_decode(parts, meta):
    n = int(torch.tensor(meta["shape"]).prod())
    idx = _unpack4(parts["index"], n) if meta["packed4"] else parts["index"]
    return parts["codebook"][idx.long()].reshape(meta["shape"])


register_codec(Codec("kmeans", _kmeans_encode, _kmeans_decode, is_matrix))
