"""The install the README describes: PyTorch's CPU build named with its index, the CUDA build with
its cost, a torch requirement that keeps the build already installed, a test script that does too."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_torch_requirement_is_a_lower_bound():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (torch,) = [d for d in deps if re.match(r"torch\b", d)]
    assert re.fullmatch(r"torch>=[\d.]+", torch.replace(" ", "")), torch


def test_readme_names_the_cpu_and_the_cuda_build():
    readme = (REPO / "README.md").read_text()
    quick = readme.split("## Quick start")[1].split("\n## ")[0]
    assert f"pip install torch==2.13.0 {CPU_INDEX}" in quick
    assert "pinned so that pip installs the CPU build" not in readme
    install = readme.split("### Install")[1].split("\n## ")[0]
    assert "CUDA" in install and "nvidia" in install and "6 GB" in install and "keeps it" in install


def test_test_script_keeps_an_installed_torch():
    script = (REPO / "scripts" / "test.sh").read_text()
    _, install = script.split('if ! python -c "import torch"')[1].split("fi")[0].split("then")
    assert CPU_INDEX in install and "torch" in install
