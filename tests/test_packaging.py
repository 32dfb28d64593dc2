"""The wheel built from the repository holds every file of derive/ and numeric/.

(CI also installs that wheel into a fresh environment and runs it: .ci/wheel-smoke.)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("derive", "numeric")


def test_the_wheel_holds_every_file_of_the_packages(tmp_path):
    pytest.importorskip("setuptools.command.bdist_wheel",
                        reason="building a wheel offline needs setuptools >= 70.1")
    src = tmp_path / "src"   # a clean copy: no build/ folder from an earlier build
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("dynorm-*.whl")
    held = set(zipfile.ZipFile(wheel).namelist())
    files = {p.relative_to(src).as_posix() for pkg in PACKAGES
             for p in (src / pkg).rglob("*") if p.is_file()}
    assert sorted(files - held) == []
