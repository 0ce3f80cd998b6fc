"""Help texts a new user reads first (issue 16, item 16): every subcommand says what it does, and its
positional arguments say what they take."""

from __future__ import annotations

import pytest

from fastfeat.cli import build_parser


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return capsys.readouterr().out


def test_models_help_has_a_description(capsys):
    text = _help(capsys, "models")
    assert "default input size" in text and "fastfeat layers" in text


def test_layers_model_argument_is_explained(capsys):
    text = _help(capsys, "layers")
    assert "fastfeat models" in text and ".keras/.h5" in text


@pytest.mark.parametrize("command", ["models", "layers", "info", "export", "merge", "bench"])
def test_every_subcommand_describes_itself(capsys, command):
    text = _help(capsys, command)
    usage, _, rest = text.partition("\n\n")
    assert usage.startswith("usage:") and rest.split("\n")[0].strip() and not rest.startswith("positional")
