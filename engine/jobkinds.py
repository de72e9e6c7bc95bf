"""The worker jobs, one row each: entry point, queue, manifest model, the file that marks it done.

The service enqueues a job by the entry point's dotted name (the API process never imports
`workers`, and so never torch), on the queue `<prefix>-<queue>`; the worker reads the manifest
the service wrote; the service knows the job finished when the file the job writes last exists
(the store and the files are the truth, Redis only carries the work).

    kind     entry point                         queue    manifest               done when this file exists
    ingest   workers.jobs.ingest                 ingest   IngestManifest         result (once out exists)
    train    workers.jobs.train_round            train    TrainManifest          metrics (once checkpoint exists)
    score    workers.jobs.score_shard (+ shard)  score    ScoreManifest          the shard's score file
    freeze   workers.jobs.freeze_report_job      train    FreezeReportManifest   result
    convert  workers.jobs.convert_model          score    ConvertManifest        the version's TorchScript + ONNX files
    predict  workers.jobs.predict_images         score    PredictManifest        result
    swap     workers.swap_job.swap_test_job      train    SwapTestManifest       result
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel

from engine import contracts as c


class JobKind(StrEnum):
    INGEST = "ingest"
    TRAIN = "train"
    SCORE = "score"
    FREEZE = "freeze"
    CONVERT = "convert"    # a model version's TorchScript and ONNX files (service.core.models)
    PREDICT = "predict"    # a prediction request too large to answer at once (service.core.predict)
    SWAP = "swap"          # a round's background-swap test (engine.swap_test; service.rounds.swap)


@dataclass(frozen=True)
class JobKindSpec:
    kind: JobKind
    entry_point: str                # workers.jobs.<function>, called as fn(manifest_path[, shard])
    queue: str                      # the queue's suffix: <prefix>-<queue>
    manifest: type[BaseModel]            # the manifest model the entry point reads
    takes_shard: bool               # the shard number is the call's second argument
    # (manifest, shard) → the file the job writes last (None while an earlier output is missing)
    done_file: Callable[[BaseModel, int | None], Path | None]
    # (manifest, shard) → where its outputs are: the store's Job.result once it finished
    outputs: Callable[[BaseModel, int | None], dict]


def _ingest_done(m: c.IngestManifest, shard: int | None) -> Path | None:
    return Path(m.result) if Path(m.out).is_file() else None


def _train_done(m: c.TrainManifest, shard: int | None) -> Path | None:
    files = c.RoundFiles(m.out_dir)
    return files.metrics if files.checkpoint.is_file() else None


def _train_outputs(m: c.TrainManifest, shard: int | None) -> dict:
    files = c.RoundFiles(m.out_dir)
    return {"checkpoint": str(files.checkpoint), "metrics": str(files.metrics)}


JOB_KINDS: dict[JobKind, JobKindSpec] = {spec.kind: spec for spec in (
    JobKindSpec(JobKind.INGEST, "workers.jobs.ingest", "ingest", c.IngestManifest, False,
                _ingest_done, lambda m, shard: {"shard": shard, "result": m.result}),
    JobKindSpec(JobKind.TRAIN, "workers.jobs.train_round", "train", c.TrainManifest, False,
                _train_done, _train_outputs),
    JobKindSpec(JobKind.SCORE, "workers.jobs.score_shard", "score", c.ScoreManifest, True,
                lambda m, shard: c.RoundFiles(m.out_dir).score_file(shard),
                lambda m, shard: {"shard": shard, "scores": str(c.RoundFiles(m.out_dir).score_file(shard))}),
    # Runs torch as training does: on the train queue, so the GPU workers take it.
    JobKindSpec(JobKind.FREEZE, "workers.jobs.freeze_report_job", "train", c.FreezeReportManifest, False,
                lambda m, shard: Path(m.result), lambda m, shard: {"result": m.result, "figure": m.out_png}),
    # Short, and a person waits for the answer: on the score queue, not behind a training job.
    JobKindSpec(JobKind.CONVERT, "workers.jobs.convert_model", "score", c.ConvertManifest, False,
                lambda m, shard: c.ModelFiles(m.out_dir).result,
                lambda m, shard: {"result": str(c.ModelFiles(m.out_dir).result)}),
    JobKindSpec(JobKind.PREDICT, "workers.jobs.predict_images", "score", c.PredictManifest, False,
                lambda m, shard: Path(m.result), lambda m, shard: {"result": m.result}),
    # A job of its own, not folded into the train or score job that has the round's model loaded:
    # both gate the experts' next batch (scoring waits for training, the batch for every score
    # shard), and the test's copies cost ~5 forward passes per tested image. Enqueued once the
    # round's batch is queued (service.rounds.swap), on the train queue: it runs torch, and a
    # single worker takes it before the next round's train job, which (feedback.swap_suspects)
    # reads its answer.
    JobKindSpec(JobKind.SWAP, "workers.swap_job.swap_test_job", "train", c.SwapTestManifest, False,
                lambda m, shard: Path(m.result), lambda m, shard: {"result": m.result}),
)}

# Every queue, in the order a worker takes their jobs (`camloop worker` listens to all three).
QUEUES: tuple[str, ...] = ("train", "score", "ingest")


def job_kind(kind: str) -> JobKindSpec:
    try:
        return JOB_KINDS[JobKind(kind)]
    except ValueError:
        raise ValueError(f"unknown job kind {kind!r}; known: {', '.join(JobKind)}") from None
