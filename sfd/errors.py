"""The one error type a user can act on.

Every input a user can get wrong (a file, a config key, a setting, a full disk) raises a subclass
of `UserError` whose message names the file or key and what to do. `sfd.cli.main` catches it once
for every command and prints it as one line (exit 2); anything else is a bug and keeps its
traceback. Torch-free and TensorFlow-free: the evaluator process imports it too.
"""


class UserError(Exception):
    """Bad input the user can fix; `sfd` prints the message as one line and exits 2."""


class InputError(UserError, ValueError):
    """An input file or directory that exists but cannot be used: corrupt, truncated, wrong format,
    or made by another run (the message names it and what to do)."""


class MissingInputError(UserError, FileNotFoundError):
    """A required input file or directory that does not exist (yet)."""


def first_line(err: BaseException) -> str:
    """The first line of a library's error message (torch's run to a paragraph), for a one-line
    UserError that quotes it."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
