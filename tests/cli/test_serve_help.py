"""`simsearch serve --help` says which options have no SIMSEARCH_* variable: it claimed every one had."""
from __future__ import annotations

import pytest

from app import Settings
from cli import main


def test_serve_help_names_log_level_as_the_option_without_an_environment_variable(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Every option but --log-level is also a SIMSEARCH_* environment variable" in text
    assert "no SIMSEARCH_LOG_LEVEL is read" in text
    # what the help says is what the service does: it ignores SIMSEARCH_LOG_LEVEL, and says so
    assert any(line.startswith("SIMSEARCH_LOG_LEVEL is not a setting")
               for line in Settings.unknown_variables({"SIMSEARCH_LOG_LEVEL": "warning"}))
