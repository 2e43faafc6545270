"""The one CLI surface: a user error is one line naming the file, exit 2; --debug re-raises it."""

import pytest

from sfd import cli
from sfd.errors import UserError


def test_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    assert cli.main(["validate-config", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sfd validate-config: error: ") and str(missing) in err
    assert "\n" not in err and "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(UserError):
        cli.main(["--debug", "validate-config", str(tmp_path / "nope.yaml")])
