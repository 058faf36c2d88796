"""Validated dataclasses from YAML mappings: what every recipe (classification, generation) is built with.

`load_yaml(path)` reads a user's YAML file (a key given twice is an error); `build(cls, mapping,
where)` instantiates a config dataclass, rejecting unknown keys and wrong types (nested blocks
recurse); `check_positions` holds every token length of a recipe against the model's position
table; `_nondefault` turns a config back into what a user wrote. Kept apart from `recipe.py` so
that the pieces a recipe is built from (the task plug-ins' configs) use them without importing
the parser. No torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import SlimtuneError

NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
FROM_MODEL = "model"  # `from: model`: a stage that starts from the recipe's model, not an earlier stage


@dataclass
class Stage:
    name: str
    method: str
    config: object  # the method's config dataclass
    source: str | None = None  # `from:` an earlier stage's model instead of the previous one

    def fields(self) -> dict:
        return dataclasses.asdict(self.config)


class _DuplicateKey(Exception):
    def __init__(self, key, line: int, first: int):
        super().__init__(key, line, first)
        self.key, self.line, self.first = key, line, first


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader where it is silent on a mistake: a key given twice in one mapping
    (PyYAML keeps the last one) is an error, and `1e-4` is a number (YAML 1.1 reads an exponent
    without a dot, which every paper writes, as a string)."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` then overriding a key is not a duplicate
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in first:
                    raise _DuplicateKey(key, line, first[key])
                first[key] = line
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_yaml(path: str | Path):
    """The contents of the YAML file a user wrote (a recipe), every mistake one line naming the file
    and line: invalid YAML, or `recipe.yaml line 7: duplicate key 'epochs' (first at line 6)`. The
    one reader of user YAML (both tasks' recipes come through `recipe.load`)."""
    path = Path(path)
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except _DuplicateKey as e:
        raise SlimtuneError(f"{path} line {e.line}: duplicate key {e.key!r} (first at line {e.first})") from None
    except UnicodeDecodeError as e:
        raise SlimtuneError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        raise SlimtuneError(f"{path}{at}: invalid YAML: {getattr(e, 'problem', None) or e}") from None


def _nondefault(obj) -> dict:
    """The fields that differ from their defaults, nested blocks as mappings (what a user wrote)."""
    out = {}
    for f in dataclasses.fields(obj):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        value = getattr(obj, f.name)
        if value != default:
            out[f.name] = _plain(value)
    return out


def _plain(value):
    if dataclasses.is_dataclass(value):
        return _nondefault(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def build(cls, values, where: str):
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise SlimtuneError(f"{where}: expected a mapping of fields, got {type(values).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in allowed:
            raise SlimtuneError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    hints = typing.get_type_hints(cls)
    values = {key: _nested(value, hints[key], f"{where}.{key}") for key, value in values.items()}
    for key, value in values.items():
        if not _type_ok(value, hints[key]):
            raise SlimtuneError(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # .nan passes every `x <= 0` check after it
            raise SlimtuneError(f"{where}.{key}: expected a finite number, got {value!r}")
    try:
        return cls(**values)
    except SlimtuneError as e:
        raise SlimtuneError(f"{where}: {e}") from None


def _nested(value, hint, where: str):
    """Build the dataclass blocks inside a field: `Block`, `dict[str, Block]` or `list[Block]`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return build(hint, value, where)
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]) and isinstance(value, dict):
        return {k: build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        return [build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _type_ok(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_type_ok(k, args[0]) and _type_ok(v, args[1]) for k, v in value.items()))
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def parse_stages(raw_stages, methods: dict, source: str, unknown: str) -> list[Stage]:
    """The `stages:` list of any task's recipe: unique names, a known method (`methods`: name ->
    Method with a `config_cls`), `from:` an earlier stage or `model`, fields typed by the method's
    config. `unknown` words the unknown-method error (`{method!r}` is filled in)."""
    stages, seen = [], set()
    for i, st in enumerate(raw_stages or []):
        where = f"{source}: stages[{i}]"
        if not isinstance(st, dict) or "method" not in st or "name" not in st:
            raise SlimtuneError(f"{where}: each stage needs `name` and `method`")
        name, method = str(st["name"]), st["method"]
        if not NAME_RE.match(name) or name in seen or name == FROM_MODEL:
            raise SlimtuneError(f"{where}: name {name!r} must be unique and use only letters, digits, _ . -")
        if method not in methods:
            raise SlimtuneError(f"{where}: {unknown.format(method=method)}; known: {', '.join(sorted(methods))}")
        origin = st.get("from")
        if origin is not None and origin != FROM_MODEL and origin not in seen:
            raise SlimtuneError(f"{where}: from {origin!r} is not an earlier stage ({', '.join(seen) or 'none'}) or `model`")
        fields = {k: v for k, v in st.items() if k not in ("name", "method", "from")}
        stages.append(Stage(name, method, build(methods[method].config_cls, fields, f"{where} ({method})"), origin))
        seen.add(name)
    return stages
