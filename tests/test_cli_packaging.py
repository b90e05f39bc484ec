"""The distribution the ``fleetlog`` command is installed from builds without warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_license_is_an_spdx_expression() -> None:
    """A TOML table (``license = {text = ...}``) makes setuptools >= 77 warn on every
    build that the form is deprecated (and unsupported from 2027-02-18); an SPDX
    string is what it asks for, and needs setuptools >= 77 to build."""
    doc = tomllib.loads(PYPROJECT.read_text())
    assert doc["project"]["license"] == "Apache-2.0"
    (setuptools,) = [r for r in doc["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", setuptools)
    assert minimum is not None and int(minimum.group(1)) >= 77, setuptools
