"""Every command's --help reads well at 80 columns: nothing cut, no markup eaten, defaults shown, no
reference to a file that users do not have."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from amir_cli.cli import app

COMMANDS = [[], ["restore"], ["degrade"], ["train"], ["benchmark"], ["weights"], ["weights", "list"],
            ["weights", "verify"], ["weights", "path"], ["weights", "import"], ["weights", "add"], ["weights", "remove"]]


def _help(args):
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "amir")
def test_help_at_80_columns(args):
    text = _help(args)
    assert "…" not in text
    if "Commands:" in text:  # short help of the subcommands not cut either
        commands = text.split("Commands:")[1].split("\n\n")[0]
        assert not any(line.endswith("...") for line in commands.splitlines()), commands
    assert "SPEC" not in text
    assert "<bool>" not in text
    usage = text.splitlines()[0]
    assert usage.startswith("Usage: amir") and "{" not in usage
    assert all(len(line) <= 80 for line in text.splitlines()), [line for line in text.splitlines() if len(line) > 80]


def test_defaults_and_brackets_are_shown():
    text = _help(["restore"])
    assert "[default: <input" in text and "[default: auto]" in text and "[default: 1 on the" in text
    assert "--data-consistency / --no-data-consistency" in text
    train = _help(["train"])
    assert "[default: 4]" in train.split("--crops-per-slice")[1][:200]
    assert "64 on CPU" in train


def test_train_help_lists_the_configurations_that_exist():
    """The --config choices are read from CONFIGS (a configuration added there shows in the help), and
    reading them imports no torch."""
    code = ("import sys; from amir_cli.network.config import CONFIGS, AmirConfig; CONFIGS['amir-xl'] = AmirConfig(dim=64); "
            "from typer.testing import CliRunner; from amir_cli.cli import app; assert 'torch' not in sys.modules; "
            "print(CliRunner().invoke(app, ['train', '--help']).output)")
    text = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=60).stdout
    assert "--config amir|amir-s|amir-m|amir-w|amir-tiny|amir-xl\n" in text, text
