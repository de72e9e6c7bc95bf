"""Where a project's artifacts live, for this installation (the layout is engine.contracts')."""
from __future__ import annotations

from pathlib import Path

from service.settings import Settings
from engine.contracts import Layout, RoundFiles


def layout(settings: Settings) -> Layout:
    return Layout(settings.artifacts_path)


def project_dir(settings: Settings, pid: int) -> Path:
    return layout(settings).project_dir(pid)


def cache_file(settings: Settings, pid: int, shard: int) -> Path:
    return layout(settings).cache_file(pid, shard)


def cache_files(settings: Settings, pid: int, shards) -> dict[int, str]:
    """{shard: cache file path} for many shards with one Path.resolve() (manifests list one
    path per image: resolving per image cost seconds on a 10k pool)."""
    lay = layout(settings)
    base = lay.cache_dir(pid)
    return {int(k): str(base / lay.cache_file(pid, int(k)).name) for k in set(shards) if k is not None}


def ingest_manifest(settings: Settings, pid: int, shard: int) -> Path:
    return layout(settings).ingest_manifest(pid, shard)


def ingest_result(settings: Settings, pid: int, shard: int) -> Path:
    return layout(settings).ingest_result(pid, shard)


def round_dir(settings: Settings, pid: int, number: int) -> Path:
    return layout(settings).round_dir(pid, number)


def round_files(settings: Settings, pid: int, number: int) -> RoundFiles:
    return layout(settings).round_files(pid, number)


def score_file(settings: Settings, pid: int, number: int, shard: int) -> Path:
    return round_files(settings, pid, number).score_file(shard)
