"""Exit codes that agree across commands: every invalid option value is a usage error (exit 2)
before any work, and an input that cannot be read is bad input (one line, exit 1)."""

import pytest

from conftest import amir

MISSING = "MISSING"  # a path that does not exist: any command that got past its options would exit 1 on it

INVALID = [
    ["train", MISSING, "--config", "huge"],
    ["train", MISSING, "--batch-size", "0"],
    ["train", MISSING, "--lr", "nan"],
    ["train", MISSING, "--seed", "-1"],
    ["train", MISSING, "--patch-size", "30"],
    ["train", MISSING, "--checkpoint-minutes", "-1"],
    ["train", MISSING, "--ct-dose", "much"],
    ["train", MISSING, "--device", "tpu"],
    ["train", MISSING, "--export", "no spaces"],
    ["train", "--resume", MISSING, "--iterations", "0"],
    ["train", "--iterations", "5"],  # neither DATA nor --resume
    ["degrade", MISSING, "--task", "huge"],
    ["degrade", MISSING, "--task", "ct-denoise", "--seed", "-1"],
    ["degrade", MISSING, "--task", "ct-denoise", "--dose", "nan"],
    ["restore", MISSING, "--batch-size", "0"],
    ["restore", MISSING, "--passes", "0"],
    ["restore", MISSING, "--precision", "fp64"],
    ["benchmark", MISSING, "--precision", "fp64"],
    ["benchmark", MISSING, "--device", "gpu"],
    ["benchmark", MISSING, "--seed", "-1"],
    ["weights", "import", MISSING, "--name", "no spaces"],
    ["weights", "add", MISSING, "--name", "no spaces"],
]


@pytest.mark.parametrize("args", INVALID, ids=lambda a: " ".join(a))
def test_invalid_option_values_exit_2_before_any_work(args, tmp_path):
    code, out, err = amir(*(str(tmp_path / "missing") if a == MISSING else a for a in args))
    assert code == 2 and err.count("\n") == 1 and err.startswith("amir: error: ") and err.endswith(" --help')\n"), (code, err)


USAGE_ERRORS = [
    (["restore"], "Missing argument 'INPUT' (see 'amir restore --help')"),
    (["restore", MISSING, "--no-such-option"], "No such option: --no-such-option (see 'amir restore --help')"),
    (["restore", MISSING, "--precision", "fp64"], "Invalid value for --precision: 'fp64' is not one of fp32, bf16, fp16 (see 'amir restore --help')"),
    (["weights", "add"], "Missing argument 'RUN_DIR' (see 'amir weights add --help')"),
    (["weights", "list", "--no-such-option"], "No such option: --no-such-option (see 'amir weights list --help')"),
    (["weights", "no-such-command"], "No such command 'no-such-command' (see 'amir weights --help')"),
]


@pytest.mark.parametrize("args, line", USAGE_ERRORS, ids=[" ".join(args) for args, _ in USAGE_ERRORS])
def test_a_usage_error_is_one_line(args, line, tmp_path):
    """Missing arguments, unknown options and commands, invalid values: one line naming the help to
    read, exit 2, not click's usage block."""
    code, out, err = amir(*(str(tmp_path / "missing") if a == MISSING else a for a in args))
    assert (code, out, err) == (2, "", f"amir: error: {line}\n")


@pytest.mark.parametrize("args, code", [([], 2), (["weights"], 2), (["--help"], 0), (["weights", "--help"], 0)])
def test_help_is_still_printed_in_full(args, code):
    """`amir` and `amir weights` alone print their help on stderr (exit 2), --help on stdout (exit 0)."""
    got, out, err = amir(*args)
    assert got == code and "Usage: amir" in (err if code else out) and "Commands:" in (err if code else out)


def test_a_reference_that_cannot_be_read_is_bad_input(tmp_path):
    image = tmp_path / "ct.nii.gz"
    image.write_bytes(b"")
    code, _, err = amir("restore", image, "--reference", tmp_path / "hq.nii.gz")
    assert code == 1 and err == f"amir: error: {tmp_path / 'hq.nii.gz'}: no such file or folder (--reference)\n"
