"""The packaging metadata is what current setuptools wants: installing prints no
setuptools deprecation warnings (project.license an SPDX expression, license-files)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_applies_without_setuptools_warnings() -> None:
    code = ("from setuptools.dist import Distribution\n"
            "from setuptools.config.pyprojecttoml import apply_configuration\n"
            "d = apply_configuration(Distribution(), 'pyproject.toml')\n"
            "print(d.metadata.license_expression, d.metadata.license_files)\n")
    done = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[0] == "Apache-2.0"
    assert "LICENSE" in done.stdout
    assert "Apache License" in (ROOT / "LICENSE").read_text()
