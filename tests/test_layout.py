"""Imports run one way (the layout of the package): checked on the source, so a new module is held to it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pocketrec"

#: package -> the pocketrec packages it must never import (at any place in a module, lazily or not)
FORBIDDEN = {
    "formats": ("backbones", "bench", "cli", "data", "device", "eval", "methods", "models", "tables", "train"),
    "tables": ("backbones", "bench", "cli", "device", "eval", "methods", "models", "train"),
}
#: the device runtime: numpy only (no torch, nothing of the torch side)
RUNTIME = ("device/runtime.py", "device/np_tables.py", "device/np_encoder.py", "device/np_users.py",
           "device/np_fastscan.py", "device/signing.py")


def imported(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute imports, anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(package):
    for path in sorted((SRC / package).glob("*.py")):
        bad = {name for name in imported(path)
               if any(name == f"pocketrec.{p}" or name.startswith(f"pocketrec.{p}.") for p in FORBIDDEN[package])}
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"


@pytest.mark.parametrize("module", RUNTIME)
def test_the_device_runtime_imports_no_torch_side(module):
    allowed = ("pocketrec.device.np_", "pocketrec.device.signing", "pocketrec.formats",
               "pocketrec.extras")  # extras: the standard library only
    for name in imported(SRC / module):
        assert not (name == "torch" or name.startswith("torch.")), f"{module} imports {name}"
        if name.startswith("pocketrec."):
            assert name.startswith(allowed), f"{module} imports {name}"
