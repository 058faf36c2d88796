"""Issue 25 items 2 and 9: a model folder is data, never code. A folder that brings its own Python
(auto_map, an unknown model_type) is refused before anything is imported, even with "y" waiting on
stdin; pickled weights are refused in one clean line; every transformers load in slimtune/ goes
through `model.folders.from_pretrained` / `from_config` (trust_remote_code=False)."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimtune.errors import SlimtuneError
from test_cli import assert_one_line_error

CUSTOM_CODE = "the model needs its own Python code, which slimtune never runs"
SAFETENSORS_ONLY = "slimtune loads safetensors only"


def slimtune_with_stdin(*args, stdin: str = "y\n"):
    """The CLI with an answer waiting on stdin: a prompt that read it would run the folder's code."""
    exe = shutil.which("slimtune", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "slimtune.cli"]
    return subprocess.run([*cmd, *map(str, args)], input=stdin, capture_output=True, text=True, timeout=1800)


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | changes))


@pytest.fixture
def evil_dir(tmp_path, tiny_clf_dir):
    """The tiny classifier with config.json pointing at its own modeling_evil.py, which leaves a
    marker file when imported."""
    folder = tmp_path / "evil"
    shutil.copytree(tiny_clf_dir, folder)
    marker = tmp_path / "MARKER"
    (folder / "modeling_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('the folder code ran')\n"
        "from transformers import BertConfig, BertForSequenceClassification\n\n"
        "class EvilConfig(BertConfig):\n    model_type = 'evil_bert'\n\n"
        "class EvilModel(BertForSequenceClassification):\n    config_class = EvilConfig\n")
    edit_json(folder / "config.json", model_type="evil_bert",
              auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                        "AutoModelForSequenceClassification": "modeling_evil.EvilModel"})
    return folder, marker


@pytest.mark.parametrize("command", ["predict", "export"])
def test_custom_code_folder_is_refused_without_prompt(command, evil_dir, tmp_path):
    folder, marker = evil_dir
    out = tmp_path / "out"
    args = [folder, "a text"] if command == "predict" else [folder, "--out", out]
    proc = slimtune_with_stdin(command, *args)
    assert_one_line_error(proc, f"{folder}: its config.json has an auto_map: {CUSTOM_CODE}")
    assert "[y/N]" not in proc.stdout + proc.stderr  # transformers' prompt never appeared
    assert not marker.exists()
    assert not out.exists()


def test_pickled_weights_one_clean_line(tmp_path, tiny_clf_dir):
    """A folder with pytorch_model.bin only (here a pickle that leaves a marker when unpickled):
    refused before torch.load, in one line without colour codes or torch's weights_only advice."""
    import torch

    folder, marker = tmp_path / "pickled", tmp_path / "UNPICKLED"
    shutil.copytree(tiny_clf_dir, folder)
    (folder / "model.safetensors").unlink()

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, folder / "pytorch_model.bin")
    proc = slimtune_with_stdin("predict", folder, "a text")
    assert_one_line_error(proc, f"{folder / 'pytorch_model.bin'}: pickled weights (loading a pickle can run code); "
                                f"{SAFETENSORS_ONLY}: if you trust the file, convert it yourself")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "\x1b" not in proc.stderr and "weights_only" not in proc.stderr
    assert not marker.exists()


# --- in-process: the other ways a folder can ask for its own code or a pickle ------------------

def refused(path) -> str:
    from slimtune.artifacts import load_predictor

    with pytest.raises(SlimtuneError) as e:
        load_predictor(path)
    return str(e.value)


def test_unknown_model_type_is_refused(tmp_path, tiny_clf_dir):
    folder = tmp_path / "unknown"
    shutil.copytree(tiny_clf_dir, folder)
    edit_json(folder / "config.json", model_type="evil_bert")
    assert refused(folder) == f"{folder}: model_type 'evil_bert' is not one transformers knows: {CUSTOM_CODE}"


def test_tokenizer_auto_map_is_refused(tmp_path, tiny_clf_dir):
    folder = tmp_path / "tok"
    shutil.copytree(tiny_clf_dir, folder)
    edit_json(folder / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    assert refused(folder) == f"{folder}: its tokenizer_config.json has an auto_map: {CUSTOM_CODE}"
    from slimtune.model.folders import load_tokenizer  # the path ONNX / TFLite folders take

    with pytest.raises(SlimtuneError, match="tokenizer_config.json has an auto_map"):
        load_tokenizer(folder)


def test_slimtune_own_model_type_is_known(tmp_path, tiny_clf_dir):
    from slimtune.model.folders import load_config
    from slimtune.model.slim_bert import MODEL_TYPE, SlimBertConfig

    folder = tmp_path / "slim"
    shutil.copytree(tiny_clf_dir, folder)
    edit_json(folder / "config.json", model_type=MODEL_TYPE)
    assert isinstance(load_config(folder), SlimBertConfig)


def test_pickle_file_and_pickle_pointers_are_refused(tmp_path, tiny_clf_dir):
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04N.")  # pickle of None
    assert refused(pt).startswith(f"{pt}: pickled weights (loading a pickle can run code); {SAFETENSORS_ONLY}")

    pointer = tmp_path / "pointer"  # config.json naming a pickle, which transformers would read as named
    shutil.copytree(tiny_clf_dir, pointer)
    edit_json(pointer / "config.json", transformers_weights="adapter_model.bin")
    assert refused(pointer).startswith(f"{pointer / 'adapter_model.bin'}: pickled weights")


def test_pickled_peft_adapter_is_refused(tmp_path, tiny_clf_dir):
    from slimtune.artifacts import load_model
    from slimtune.artifacts.peft_adapter import ADAPTER_DIR, MARKER

    folder = tmp_path / "adapted"
    shutil.copytree(tiny_clf_dir, folder)
    (folder / ADAPTER_DIR).mkdir()
    (folder / ADAPTER_DIR / MARKER).write_text(json.dumps({"merged": False, "source": "x"}))
    (folder / ADAPTER_DIR / "adapter_config.json").write_text("{}")
    (folder / ADAPTER_DIR / "adapter_model.bin").write_bytes(b"\x80\x04N.")
    with pytest.raises(SlimtuneError, match=f"adapter_model.bin: pickled weights .*; {SAFETENSORS_ONLY}"):
        load_model(folder)


# --- every transformers load goes through the helper -------------------------------------------

def test_helpers_pass_trust_remote_code_false():
    from slimtune.model.folders import from_config, from_pretrained

    class Recorder:
        @classmethod
        def from_pretrained(cls, path, **kw):
            return kw

        @classmethod
        def from_config(cls, config, **kw):
            return kw

    class AutoModelLike(Recorder):
        _model_mapping = {}

    assert from_pretrained(Recorder, "x", foo=1) == {"trust_remote_code": False, "foo": 1}
    assert from_pretrained(AutoModelLike, "x") == {"trust_remote_code": False, "use_safetensors": True}
    assert from_config(AutoModelLike, object()) == {"trust_remote_code": False}


LOADERS = {"from_pretrained", "from_config"}  # as methods: `AutoModel.from_pretrained(...)`
HELPERS = ("slimtune/model/loading.py", {"from_pretrained", "from_config"})  # the only places they are called
PEFT = ("slimtune/artifacts/peft_adapter.py", "PeftModel")  # peft's loader (no remote code); its pickle is refused first


def test_every_load_goes_through_the_helper():
    """No `X.from_pretrained(...)`, `X.from_config(...)` or `pipeline(...)` call in slimtune/ except
    inside the helpers in model/loading.py (which pass trust_remote_code=False)."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted((root / "slimtune").rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        inside_helper = set()
        if rel == HELPERS[0]:
            inside_helper = {id(n) for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in HELPERS[1]
                             for n in ast.walk(f)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or id(node) in inside_helper:
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in LOADERS:
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if owner == "folders" or (rel, owner) == PEFT:
                    continue
            elif not (getattr(func, "id", None) == "pipeline" or getattr(func, "attr", None) == "pipeline"):
                continue
            found.append(f"{rel}:{node.lineno}: {ast.unparse(func)}(...)")
    assert not found, "transformers loads outside model/loading.py's helpers:\n" + "\n".join(found)
