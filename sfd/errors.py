"""The one error type a user can act on.

Every input a user can get wrong (a file, a config key, a setting, a full disk) raises a subclass
of `UserError` whose message names the file or key and what to do. `sfd.cli.main` catches it once
for every command and prints it as one line (exit 2); anything else is a bug and keeps its
traceback. Torch-free and TensorFlow-free: the evaluator process imports it too.
"""


class UserError(Exception):
    """Bad input the user can fix; `sfd` prints the message as one line and exits 2."""
