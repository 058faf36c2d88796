"""Keep a model's own 4-bit grid in the `genai-int4` export instead of rounding it a second time.

The packaged SmolLM2 comes from a Q4_1 GGUF: every linear weight is already `d * q + m` per block
of 32 inputs (q in 0..15; d and m fp16, m the block's minimum and m + 15 d its maximum, as
llama.cpp's quantizer sets them). slimtune's own `weight_only` int4 codec writes the same kind of
grid per `group_size` weights. Re-quantizing those values with the GenAI builder (k_quant,
symmetric int4) rounds them onto a different grid: response perplexity 23.0 -> 30.0 on the
untuned SmolLM2. The grid is read back from the fp32 weights themselves (no GGUF, no names): a
block's minimum is m, (maximum - minimum) / 15 is d, and the block is on the grid when d * q + m
gives every value back.

ONNX Runtime's MatMulNBits computes `scale * (q - zero_point)` with an integer zero point; a float
zero point (which would hold -m / d) is accepted on CPU but runs a dequantizing fallback, 56x slower
at batch 1 (measured: 1.42 ms vs 25 us for a 576x1536 MatMul). So each on-grid MatMul becomes

    y = MatMulNBits(x; q, d, zero point 0) + blocksum(x) @ M      # blocksum (.., K/block), M (K/block, N)

where blocksum adds up each block of inputs: the m term of every weight in a block is the same
number, so x . w = d (x . q) + m sum(x over the block). That is exact (to fp32 rounding); M is
stored in fp16 when m is an fp16 value. No library does this: ONNX Runtime's quantizers and the
GenAI builder compute their own scales from the weights (written by hand for that reason). The
builder still quantizes what is not on a grid (the tied embedding / output table: `int4.block_size`).

A LoRA stage keeps its adapter (stage folder `adapter/`); its merged weights are off the grid, so
`genai-int4` builds from the adapter's base plus the adapter (the builder's `adapter_path`: LoRA
MatMuls beside the base ones), keeps the LoRA MatMuls fp32 and the base on its grid.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCKS = (32, 16, 64, 128, 256)  # block sizes tried (MatMulNBits takes powers of two >= 16); GGUF Q4_1 is 32
LEVELS = 15
# the body MatMuls of a builder graph (names as the builder writes them: /model/layers.{i}/attn/q_proj/MatMul)
BODY = re.compile(r"^/model/layers\.\d+/(attn/(q|k|v|o|qkv)_proj|mlp/(gate|up|down|gate_up)_proj)/MatMul$")
BODY_PARTS = ("attn/q_proj", "attn/k_proj", "attn/v_proj", "attn/qkv_proj", "attn/o_proj",
              "mlp/gate_proj", "mlp/up_proj", "mlp/gate_up_proj", "mlp/down_proj")


@dataclass
class Grid:
    """w == d * q + m per block of `block` inputs; w (N, K), q (N, K) 0..15, d and m (N, K / block)."""

    block: int
    q: np.ndarray
    d: np.ndarray
    m: np.ndarray


def q4_grid(w: np.ndarray) -> Grid | None:
    """The 4-bit grid `w` (N, K) is on, blockwise along its input dimension K, or None: no block size
    of BLOCKS divides K with every value given back within a few fp32 ulps (the dequantizer's own
    rounding, not a different grid)."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        return None
    n, k = w.shape
    tol = 4 * np.finfo(np.float32).eps * max(float(np.abs(w).max(initial=0.0)), 1e-30)
    for block in BLOCKS:
        if k % block:
            continue
        x = w.reshape(n, k // block, block)
        m = x.min(-1)
        raw = (x.max(-1) - m) / LEVELS
        for d in (raw.astype(np.float16).astype(np.float32), raw):  # GGUF and slimtune's int4 store d in fp16
            q = np.rint((x - m[..., None]) / np.where(d == 0, 1, d)[..., None])
            if q.min() >= 0 and q.max() <= LEVELS and np.abs(d[..., None] * q + m[..., None] - x).max() <= tol:
                return Grid(block, q.reshape(n, k).astype(np.uint8), d, m)
    return None


LAYER_WEIGHT = re.compile(r"(^|\.)layers\.\d+\..*\.weight$")


def folder_on_grid(folder: Path) -> bool:
    """Every 2-D weight of the decoder layers in `folder`'s safetensors on a 4-bit grid (q4_grid);
    stops at the first that is not."""
    from safetensors import safe_open

    files = sorted(p for p in Path(folder).glob("*.safetensors") if p.name.startswith("model"))
    seen = 0
    for f in files:
        with safe_open(str(f), "np") as st:
            for key in st.keys():
                if not LAYER_WEIGHT.search(key):
                    continue
                w = st.get_tensor(key)
                if w.ndim != 2:
                    continue
                if q4_grid(w) is None:
                    return False
                seen += 1
    return seen > 0


@dataclass
class Int4Plan:
    """What `genai-int4` builds from to keep a grid: `source` (on a grid), or the `source` a merged
    LoRA stage was trained from plus its `adapter`, kept unmerged (its merged weights are off the grid)."""

    source: Path
    adapter: Path | None
    num_layers: int


def plan(folder: Path) -> Int4Plan | None:
    """An Int4Plan for the stage folder `folder` (a plain HF folder), or None: build as before."""
    import json

    from ..artifacts.peft_adapter import ADAPTER_DIR, record

    folder = Path(folder)
    source, adapter = folder, None
    rec = record(folder) or {}  # LoRA stages keep their adapter beside the merged weights
    config = folder / ADAPTER_DIR / "adapter_config.json"
    base = Path(rec["source"]) if rec.get("source") else None  # not Path(""): that is the working directory
    if rec.get("merged") and base is not None and (base / "config.json").is_file() and config.is_file() \
            and json.loads(config.read_text()).get("peft_type") == "LORA":
        source, adapter = base, folder / ADAPTER_DIR
    if not folder_on_grid(source):
        return None
    layers = json.loads((source / "config.json").read_text()).get("num_hidden_layers", 0)
    return Int4Plan(source, adapter, int(layers))


def builder_options(p: Int4Plan, options: dict) -> dict:
    """The builder's `--extra_options` for `p`: the body MatMuls (and LoRA's) left fp32 for `rewrite`
    (node names a graph does not have are ignored by the builder), the adapter applied unmerged."""
    names = [f"/model/layers.{i}/{part}/{sub}MatMul" for i in range(p.num_layers) for part in BODY_PARTS
             for sub in ("", "lora_A/", "lora_B/")]
    if options.get("nodes_to_exclude"):  # the caller's own (e.g. /lm_head/MatMul) as well
        names.insert(0, options["nodes_to_exclude"])
    out = dict(options) | {"nodes_to_exclude": ",".join(names)}
    return out | ({"adapter_path": str(p.adapter)} if p.adapter else {})


def _pack_nibbles(q: np.ndarray, block: int) -> np.ndarray:
    """(N, K) values 0..15 -> (N, K / block, block / 2) bytes, even index in the low nibble (MatMulNBits' B)."""
    n, k = q.shape
    return (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8).reshape(n, k // block, block // 2)


def rewrite(folder: Path, accuracy_level: int = 4) -> dict:
    """Replace the fp32 body MatMuls of the GenAI graph in `folder` whose weights are on a 4-bit grid
    by MatMulNBits + the block-sum term (module docstring); LoRA MatMuls stay fp32. MatMuls that read
    the same input with the same block (q/k/v, gate/up) become one MatMulNBits and one block-minimum
    MatMul, split after: at batch 1 every node costs a fixed few microseconds. Rewrites model.onnx
    and its data file in place (the caller builds in a temporary folder). Returns counts."""
    import onnx
    from onnx import helper, numpy_helper

    path = Path(folder) / "model.onnx"
    model = onnx.load(str(path))  # with its external data
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    groups: dict[tuple[str, int], list] = {}  # (input, block) -> [(node, grid)], in graph order
    off = 0
    for node in graph.node:
        if node.op_type == "MatMul" and BODY.match(node.name) and node.input[1] in inits:
            g = q4_grid(numpy_helper.to_array(inits[node.input[1]]).T)  # the builder stores W^T (K, N)
            if g is None:
                off += 1
            else:
                groups.setdefault((node.input[0], g.block), []).append((node, g))
    first = {id(members[0][0]): key for key, members in groups.items()}
    replaced = {id(n) for members in groups.values() for n, _ in members}
    nodes, added = [], {}
    for node in graph.node:
        if id(node) not in replaced:
            nodes.append(node)
        elif id(node) in first:  # the whole group at its first member: they all read the same input
            (x, block), members = first[id(node)], groups[first[id(node)]]
            built, inits_ = _fused(x, block, members, accuracy_level)
            nodes += built
            added |= {t.name: t for t in inits_ if t.name not in added}  # the block-ones matrices are shared
    dead = {n.input[1] for members in groups.values() for n, _ in members}
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [t for t in graph.initializer if t.name not in dead]
    del graph.initializer[:]
    graph.initializer.extend(keep + list(added.values()))
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    data = path.with_name(path.name + ".data")
    for f in (path, data):
        f.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=1024)
    return {"on_grid": len(dead), "off_grid": off}


def _fused(x: str, block: int, members: list, accuracy_level: int) -> tuple[list, list]:
    """Nodes and initializers computing every member MatMul's output (names kept) from input `x`:
    MatMulNBits(x) + blocksum(x) @ M over the members' rows stacked, then Split back."""
    import onnx
    from onnx import helper, numpy_helper

    q = np.concatenate([g.q for _, g in members])  # (N, K): the members' output rows one after another
    d = np.concatenate([g.d for _, g in members])
    m = np.concatenate([g.m for _, g in members])
    n, k = q.shape
    name = members[0][0].name if len(members) == 1 else members[0][0].name.rsplit("/", 2)[0] + "/" + \
        "_".join(mm.name.rsplit("/", 2)[1] for mm, _ in members) + "/MatMul"  # e.g. /model/layers.0/attn/q_proj_k_proj_v_proj/MatMul
    key = name[1:].replace("/", ".")
    m16 = m.astype(np.float16)
    exact16 = np.array_equal(m16.astype(np.float32), m)  # GGUF and slimtune's int4 keep m in fp16
    # blocksum(x) as x @ P, P (K, K / block) of ones on each block: one node where Reshape + ReduceSum were two
    # (measured: ~4 us per node per token at batch 1)
    ones = f"grid.block_ones.{k}x{block}"  # shared by every MatMul of that shape (rewrite keeps one)
    inits = [numpy_helper.from_array(np.kron(np.eye(k // block, dtype=np.float32), np.ones((block, 1), dtype=np.float32)), ones),
             numpy_helper.from_array(_pack_nibbles(q, block), f"{key}.grid_q"),
             numpy_helper.from_array(d.reshape(-1), f"{key}.grid_scales"),
             numpy_helper.from_array(np.zeros(n * ((k // block + 1) // 2), dtype=np.uint8), f"{key}.grid_zero"),
             numpy_helper.from_array((m16 if exact16 else m).T.copy(), f"{key}.grid_m")]  # (K / block, N)
    m_name = f"{key}.grid_m"
    nodes = [helper.make_node("MatMul", [x, ones], [f"{name}/BlockSum/output_0"],
                              name=f"{name}/BlockSum")]  # (batch, seq, K / block)
    if exact16:
        nodes.append(helper.make_node("Cast", [m_name], [f"{name}/GridM/output_0"], name=f"{name}/GridM",
                                      to=onnx.TensorProto.FLOAT))
        m_name = f"{name}/GridM/output_0"
    outputs = [mm.output[0] for mm, _ in members]
    summed = outputs[0] if len(members) == 1 else f"{name}/GridAdd/output_0"
    nodes += [helper.make_node("MatMulNBits", [x, f"{key}.grid_q", f"{key}.grid_scales", f"{key}.grid_zero"],
                               [f"{name}NBits/output_0"], name=f"{name}NBits", domain="com.microsoft",
                               K=k, N=n, bits=4, block_size=block, accuracy_level=accuracy_level),
              helper.make_node("MatMul", [f"{name}/BlockSum/output_0", m_name], [f"{name}/GridMin/output_0"],
                               name=f"{name}/GridMin"),
              helper.make_node("Add", [f"{name}NBits/output_0", f"{name}/GridMin/output_0"], [summed], name=f"{name}/GridAdd")]
    if len(members) > 1:
        sizes = f"{key}.split_sizes"
        inits.append(numpy_helper.from_array(np.array([g.q.shape[0] for _, g in members], dtype=np.int64), sizes))
        nodes.append(helper.make_node("Split", [summed, sizes], outputs, name=f"{name}/Split", axis=-1))
    return nodes, inits


def export_int4(p: Int4Plan, out: Path, cache: Path, options: dict) -> dict:
    """`genai-int4` at `out` keeping the grid of `p.source` (and `p.adapter` unmerged, fp32): the
    facts the export's metrics carry."""
    from ..errors import SlimtuneError
    from .genai import export_genai

    counts = {}

    def finish(tmp: Path) -> None:
        counts.update(rewrite(tmp, int(options.get("accuracy_level", 4))))
        if counts["off_grid"]:
            raise SlimtuneError(f"genai-int4 of {p.source}: {counts['off_grid']} layer MatMul(s) of the built graph are "
                                f"off the 4-bit grid its weights were read on; set int4.grid: requantize")

    export_genai(p.source, "genai-int4", out, cache, builder_options(p, options), finish)
    facts = {"grid": "kept", "on_grid_matmuls": counts["on_grid"]}
    return facts | ({"lora": "unmerged fp32", "lora_base": str(p.source)} if p.adapter else {})
