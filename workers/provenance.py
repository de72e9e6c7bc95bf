"""What produced a result: the code's commit, the packages' versions, the machine.

A simulation's figures move with the code and the libraries (a change in training order moves the
first round's accuracy by float noise, which active learning then amplifies through different
picks), so a run file that records neither cannot be compared with a later one. Recorded in every
`camloop simulate` result and so in every benchmark built on it."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

# The libraries whose versions move the figures: training, scoring, detection, clustering.
PACKAGES = ("camloop", "torch", "torchvision", "numpy", "scikit-learn", "cleanlab", "pillow")

_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def source_commit(root: Path = _SOURCE_ROOT) -> dict | None:
    """The git commit the running code was loaded from and whether its tracked files differ from
    it; None for an installed copy outside a git checkout (then the camloop version says what ran)."""
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "modified": bool(changed.strip())}


def processor() -> dict:
    """The processor's model and, where torch is loaded, the vector instructions its CPU kernels
    use: the same code and seeds can give other float results on another processor (torch picks
    its kernels by the vector instructions it finds, and they may sum in another order), which
    active learning then amplifies through other picks — a figure from another machine is not a
    comparison."""
    out: dict = {"model": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                out["model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        out["model"] = platform.processor() or None
    torch = sys.modules.get("torch")  # never imported here: a run without torch has no such kernels
    if torch is not None:
        try:
            out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except (AttributeError, RuntimeError):
            pass
    return out


def provenance() -> dict:
    """A JSON-ready record of the code, the library versions and the machine, at this moment."""
    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source_commit(),
        "packages": {name: _version(name) for name in PACKAGES},
        "python": platform.python_version(),
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "system": platform.system(),
                    "processor": processor()},
    }
