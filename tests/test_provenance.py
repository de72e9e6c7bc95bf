"""A simulation's result says what produced it: the commit (with a modified-tree flag), the library
versions and the machine, so that a figure can be traced when a later run differs."""
import subprocess
from pathlib import Path

from engine.config import SimulationConfig
from workers.provenance import source_commit
from workers.simulate import run_simulation

ROOT = Path(__file__).resolve().parents[1]


def test_simulate_result_records_commit_and_versions():
    out = run_simulation(SimulationConfig(dataset="digits", strategy="random", initial=60, budget=20, rounds=1,
                                          epochs=1, pool_limit=200, threads=1))
    rec = out["provenance"]
    import torch
    assert rec["packages"]["torch"] == torch.__version__.split("+")[0] or rec["packages"]["torch"] == torch.__version__
    assert rec["packages"]["camloop"] and rec["packages"]["cleanlab"] and rec["packages"]["numpy"]
    assert rec["machine"]["cpus"] >= 1 and rec["python"].count(".") == 2
    # The processor and torch's kernel level: figures from another processor differ by float noise.
    assert rec["machine"]["processor"]["model"]
    assert rec["machine"]["processor"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert rec["source"]["commit"] == head and isinstance(rec["source"]["modified"], bool)


def test_a_copy_outside_git_records_no_commit(tmp_path):
    # An installed copy (no .git beside it): no commit, and the camloop version says what ran.
    assert source_commit(tmp_path) is None
    (tmp_path / ".git").mkdir()  # not a repository: git fails, no commit rather than an error
    assert source_commit(tmp_path) is None
