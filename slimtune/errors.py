"""User-facing errors.

Anything a user can cause (a missing file, a wrong column, a typo in a recipe) is raised as a
`SlimtuneError` with one line that names what and where. The CLI prints that line to stderr and
exits with code 2; everything else is a bug and keeps its traceback.
"""


class SlimtuneError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""

    exit_code = 2
