"""The packaged prompt/response data (chatterbot): `chatterbot_qa` (English) and `chatterbot_qa_zh`
(Chinese, 17 topic files, 467 conversations). The packaged decoders themselves are
`model/convert_smollm2.py` and `model/convert_gemma3.py`: resolving a model name is the model layer's job.
"""

from __future__ import annotations

from ..errors import SlimtuneError
from ..model import assets

CHATTERBOT = assets.Asset("chatterbot-corpus", "1.3.3", "data/english", module="chatterbot_corpus")


def chatterbot_pairs(language: str = "english") -> list[tuple[str, str, str]]:
    """(prompt, response, category) from chatterbot-corpus's conversations in `language` (a folder
    of its `data/`): each turn and the one after it (some conversations run longer than two turns)."""
    import yaml

    root = assets.locate(CHATTERBOT).parent / language
    rows = []
    for path in sorted(root.glob("*.yml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise SlimtuneError(f"{path}: invalid YAML ({e})") from None
        for turns in doc.get("conversations") or []:
            turns = [str(t).strip() for t in turns]
            rows += [(a, b, path.stem) for a, b in zip(turns, turns[1:])]
    return rows
