"""User-facing errors.

Anything a user can cause (a missing file, a wrong column, a typo in a recipe) is raised as a
`SlimtuneError` with one line that names what and where. The CLI prints that line to stderr and
exits with code 2; everything else is a bug and keeps its traceback.
"""


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
