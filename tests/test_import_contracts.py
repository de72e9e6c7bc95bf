"""The import rules of pyproject.toml ([tool.importlinter]) hold for the tree, and they bite: a
module that breaks one makes `lint-imports` fail, naming the contract it broke. (scripts/test
runs the same check before the suite; docs/architecture.md says why each rule holds.)"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("service", "engine", "workers", "strategies")


def _lint(root: Path) -> subprocess.CompletedProcess:
    # COLUMNS: the report is wrapped to the terminal's width; wide, a contract's name is one line.
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "400"}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_import_contract():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and " 7 kept" in out.stdout, out.stdout[-2000:]


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The four packages and pyproject.toml, copied: the probes below add modules to the copy."""
    root = tmp_path_factory.mktemp("tree")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


PROBES = [
    ({"service/core/probe.py": "import service.labelstudio.plugin\n"},
     "the core and the rounds never import the Label Studio bridge"),
    ({"service/api/probe.py": "import workers.jobs\n"},
     "the service imports the workers only in its CLI"),
    ({"workers/probe.py": "from service.settings import Settings\n"},
     "the workers never import the service"),
    ({"engine/probe.py": "import service.settings\n"},
     "strategies below the engine, the engine below the service and the workers"),
    ({"service/runtime/probe.py": "import service.rounds.state\n"},
     "the service's parts, top to bottom"),
    # A function-level import is an import all the same: hiding one in a function breaks the rule.
    ({"service/rounds/probe.py": "def load():\n    import torch\n    return torch\n"},
     "torch stays out of the API process"),
    ({"workers/probe_a.py": "import workers.probe_b\n", "workers/probe_b.py": "def f():\n    import workers.probe_a\n"},
     "no import circles between the modules of any package"),
]


@pytest.mark.parametrize("files, contract", PROBES, ids=[c.split(" (")[0][:40] for _, c in PROBES])
def test_a_module_that_breaks_a_rule_fails_the_check_naming_it(tree_copy, files, contract):
    for rel, text in files.items():
        (tree_copy / rel).write_text(text)
    try:
        out = _lint(tree_copy)
    finally:
        for rel in files:
            (tree_copy / rel).unlink()
    assert out.returncode != 0, out.stdout[-2000:]
    broken = out.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken, out.stdout[-3000:]
