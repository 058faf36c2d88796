"""User-facing errors.

Anything a user can cause (a missing file, a wrong column, a typo in a recipe) is raised as a
`SlimtuneError` with one line that names what and where. The CLI prints that line to stderr and
exits with code 2; everything else is a bug and keeps its traceback.
"""

import re


class SlimtuneError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""

    exit_code = 2


def one_of(key: str, value, allowed, where: str = "") -> None:
    """The one "must be one of" check every config uses: `key: 'x' is not one of a, b`, or with
    `where` (the method), `where: key 'x' is not one of a, b`."""
    if value not in allowed:
        what = f"{where}: {key}" if where else f"{key}:"
        raise SlimtuneError(f"{what} {value!r} is not one of {', '.join(map(str, allowed))}")


def check_file(path, what: str) -> None:
    """A path a user gave for a file (`what`: "data file", "recipe"): missing, a folder and a
    device such as /dev/null are three different mistakes, and each is said as itself."""
    from pathlib import Path

    path = Path(path)
    if path.is_file():
        return
    if path.is_dir():
        raise SlimtuneError(f"{path} is a directory, not a {what}")
    if path.exists():
        raise SlimtuneError(f"{path} is not a regular file (a device, pipe or socket), not a {what}")
    raise SlimtuneError(f"{what} not found: {path}")


_RULE = re.compile(r"^(?:(>=?) (-?[0-9.]+)|in ([\[(])(-?[0-9.]+), (-?[0-9.]+)([\])]))$")


def check_ranges(where: str, obj, **rules: str) -> None:
    """The numeric sanity every config checks in `__post_init__` (so a recipe is refused when it is
    read, not minutes into a stage): each named field meets its rule, `> 0`, `>= 1` or an interval
    such as `in [0, 1)`: `where: key must be in [0, 1), not 1.5`. None (an unset optional field)
    passes; a list is checked item by item. NaN meets no rule."""
    for key, rule in rules.items():
        value = getattr(obj, key)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not _meets(v, rule):
                what = f"{where}: {key}" if where else key
                raise SlimtuneError(f"{what} must be {rule}{' (each)' if isinstance(value, list) else ''}, not {value!r}")


def _meets(value, rule: str) -> bool:
    m = _RULE.match(rule)
    if m is None:
        raise ValueError(f"not a range rule: {rule!r}")  # a bug in a config, not the user's input
    op, low, left, lo, hi, right = m.groups()
    if op:
        return value > float(low) if op == ">" else value >= float(low)
    return (value > float(lo) if left == "(" else value >= float(lo)) and (value < float(hi) if right == ")" else value <= float(hi))
