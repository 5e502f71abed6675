"""Holds the import boundaries of STYLE.md: which package may import which."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = {"minigpt_core", "training", "server", "tools"}
ALLOWED = {
    "minigpt_core": {"minigpt_core"},
    "tools": {"tools"},
    "training": {"training", "minigpt_core", "tools"},
    "server": {"server", "minigpt_core", "tools"},
}
# Third-party modules each package may use (stdlib is always allowed).
THIRD_PARTY = {
    # triton: part of torch's CUDA wheels, imported optionally by minigpt_core/kernels.py
    "minigpt_core": {"torch", "tokenizers", "safetensors", "numpy", "jinja2", "llguidance", "triton"},
    "tools": {"pydantic"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_packages_respect_the_boundary_table() -> None:
    import sys

    stdlib = set(sys.stdlib_module_names)
    problems = []
    for pkg, allowed in ALLOWED.items():
        files = list((ROOT / pkg).rglob("*.py"))
        assert files, f"package {pkg} has no modules"
        for f in files:
            for mod in imports_of(f):
                if mod in OURS and mod not in allowed:
                    problems.append(f"{f.relative_to(ROOT)} imports {mod}")
                if pkg in THIRD_PARTY and mod not in OURS | stdlib | THIRD_PARTY[pkg] | {"__future__"}:
                    problems.append(f"{f.relative_to(ROOT)} imports third-party {mod}")
    assert not problems, "\n".join(problems)
