"""engine/jobkinds.py: the one job-kind table names what exists on both sides."""
from __future__ import annotations

import importlib
import inspect

import pytest

from engine import contracts as c
from engine.jobkinds import JOB_KINDS, QUEUES, JobKind, job_kind


@pytest.mark.parametrize("kind", list(JobKind))
def test_each_kind_names_an_entry_point_its_manifest_and_a_queue(kind):
    spec = JOB_KINDS[kind]
    module, name = spec.entry_point.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)  # the worker's function, as RQ will import it
    params = list(inspect.signature(fn).parameters)
    assert params == (["manifest_path", "shard"] if spec.takes_shard else ["manifest_path"]), params
    assert spec.manifest.model_fields["kind"].default == kind.value  # the manifest says which job reads it
    assert spec.queue in QUEUES


def test_every_queue_has_a_kind_and_unknown_kinds_are_named():
    assert set(QUEUES) == {spec.queue for spec in JOB_KINDS.values()} and len(QUEUES) == len(set(QUEUES))
    assert job_kind("score") is JOB_KINDS[JobKind.SCORE]
    with pytest.raises(ValueError, match="unknown job kind 'paint'; known: ingest, train, score, freeze"):
        job_kind("paint")


def test_the_done_file_is_the_one_written_last(tmp_path):
    files = c.RoundFiles(tmp_path / "r1")
    train = JOB_KINDS[JobKind.TRAIN]
    m = c.TrainManifest.model_construct(out_dir=str(files.dir))
    assert train.done_file(m, None) is None  # no checkpoint yet: metrics alone do not mark it done
    files.dir.mkdir(parents=True)
    files.checkpoint.write_bytes(b"x")
    assert train.done_file(m, None) == files.metrics
    assert train.outputs(m, None) == {"checkpoint": str(files.checkpoint), "metrics": str(files.metrics)}
    score = JOB_KINDS[JobKind.SCORE]
    sm = c.ScoreManifest.model_construct(out_dir=str(files.dir))
    assert score.done_file(sm, 3) == files.score_file(3)
    assert score.outputs(sm, 3) == {"shard": 3, "scores": str(files.score_file(3))}
    ingest = JOB_KINDS[JobKind.INGEST]
    im = c.IngestManifest.model_construct(out=str(tmp_path / "cache.npy"), result=str(tmp_path / "result.json"))
    assert ingest.done_file(im, 0) is None  # the cache shard first
    (tmp_path / "cache.npy").write_bytes(b"x")
    assert ingest.done_file(im, 0) == tmp_path / "result.json"
