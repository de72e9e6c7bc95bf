"""Where artifacts live. One function per file kind, so the service and the manifests agree."""
from __future__ import annotations

from pathlib import Path

from service.settings import Settings


def project_dir(settings: Settings, pid: int) -> Path:
    return (settings.artifacts_path / f"p{pid}").resolve()


def cache_file(settings: Settings, pid: int, shard: int) -> Path:
    return project_dir(settings, pid) / "cache" / f"shard_{shard:05d}.npy"


def cache_files(settings: Settings, pid: int, shards) -> dict[int, str]:
    """{shard: cache file path} for many shards with one Path.resolve() (manifests list one
    path per image: resolving per image cost seconds on a 10k pool)."""
    base = project_dir(settings, pid) / "cache"
    return {int(k): str(base / f"shard_{int(k):05d}.npy") for k in set(shards) if k is not None}


def ingest_manifest(settings: Settings, pid: int, shard: int) -> Path:
    return project_dir(settings, pid) / "cache" / f"ingest_{shard:05d}.json"


def ingest_result(settings: Settings, pid: int, shard: int) -> Path:
    return project_dir(settings, pid) / "cache" / f"shard_{shard:05d}.json"


def round_dir(settings: Settings, pid: int, number: int) -> Path:
    return project_dir(settings, pid) / f"r{number:04d}"


def score_file(settings: Settings, pid: int, number: int, shard: int) -> Path:
    return round_dir(settings, pid, number) / f"scores_{shard:05d}.npz"
