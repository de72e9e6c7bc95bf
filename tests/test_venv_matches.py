"""scripts/venv-matches, the set-up scripts' "is it installed" check, on a throwaway virtualenv
whose packages are hand-made metadata (no pip, nothing downloaded): it passes only when every
pinned version is installed and the stamp holds the hash of the constraints and the --inputs."""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "venv-matches"


@pytest.fixture
def venv(tmp_path):
    root = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)})
    return root, Path(purelib)


def _install(site: Path, name: str, version: str) -> None:
    """What an installed distribution leaves for importlib.metadata to read."""
    for old in site.glob(f"{name.replace('-', '_')}-*.dist-info"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def _check(root: Path, constraints: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(root / "bin" / "python"), str(SCRIPT), str(constraints), *args],
                          capture_output=True, text=True, timeout=60)


def test_it_passes_only_for_the_pinned_versions_installed_from_these_files(venv, tmp_path):
    root, site = venv
    constraints, inputs = tmp_path / "c.txt", tmp_path / "pyproject.toml"
    constraints.write_text("# header\nsentry-sdk==2.76.0\nLabel_Studio==1.23.2  # a comment\n")
    inputs.write_text("[project]\n")
    _install(site, "sentry-sdk", "2.76.0")
    _install(site, "label-studio", "1.23.2")

    # The versions match, but nothing installed from these files yet: no stamp.
    r = _check(root, constraints, "--inputs", str(inputs))
    assert r.returncode == 1 and "camloop-constraints.sha256" in r.stderr, r.stderr
    assert _check(root, constraints, "--inputs", str(inputs), "--stamp").returncode == 0
    assert _check(root, constraints, "--inputs", str(inputs)).returncode == 0

    # A release installed by hand (yesterday's sentry-sdk 3.0): named, with both versions.
    _install(site, "sentry-sdk", "3.0.0")
    r = _check(root, constraints, "--inputs", str(inputs))
    assert r.returncode == 1 and "sentry-sdk: 3.0.0, pinned 2.76.0" in r.stderr, r.stderr
    # --stamp writes nothing while the versions differ.
    assert _check(root, constraints, "--inputs", str(inputs), "--stamp").returncode == 1
    _install(site, "sentry-sdk", "2.76.0")
    assert _check(root, constraints, "--inputs", str(inputs)).returncode == 0

    # A pinned package missing, or an input changed (a new dependency in pyproject.toml).
    constraints.write_text(constraints.read_text() + "django==5.1.9\n")
    r = _check(root, constraints, "--inputs", str(inputs))
    assert r.returncode == 1 and "django: not installed, pinned 5.1.9" in r.stderr, r.stderr
    constraints.write_text("sentry-sdk==2.76.0\nlabel-studio==1.23.2\n")
    assert _check(root, constraints, "--inputs", str(inputs), "--stamp").returncode == 0
    inputs.write_text("[project]\ndependencies = ['x']\n")
    r = _check(root, constraints, "--inputs", str(inputs))
    assert r.returncode == 1 and "does not hold the hash" in r.stderr, r.stderr


def test_editable_means_from_this_checkout(venv, tmp_path):
    root, site = venv
    constraints = tmp_path / "c.txt"
    constraints.write_text("")
    r = _check(root, constraints, "--editable", "camloop", "--stamp")
    assert r.returncode == 1 and "camloop: not installed" in r.stderr, r.stderr
    _install(site, "camloop", "0.1.0")
    info = next(site.glob("camloop-*.dist-info"))
    (info / "direct_url.json").write_text('{"url": "file:///elsewhere", "dir_info": {"editable": true}}')
    r = _check(root, constraints, "--editable", "camloop", "--stamp")
    assert r.returncode == 1 and "not installed in editable mode from" in r.stderr, r.stderr
    here = SCRIPT.parents[1].as_uri()
    (info / "direct_url.json").write_text(f'{{"url": "{here}", "dir_info": {{"editable": true}}}}')
    assert _check(root, constraints, "--editable", "camloop", "--stamp").returncode == 0


def test_a_line_that_is_not_a_pin_is_an_error_naming_it(venv, tmp_path):
    root, _ = venv
    constraints = tmp_path / "c.txt"
    constraints.write_text("numpy>=1.26\n")
    r = _check(root, constraints)
    assert r.returncode != 0 and "c.txt:1" in r.stderr and "numpy>=1.26" in r.stderr, r.stderr
