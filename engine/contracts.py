"""What the service and the workers say to each other: job manifests, job results, file names.

Both sides import this module — the service writes a manifest, the job reads it with the same
model — so a field cannot be renamed on one side only. Where artifacts live is defined once,
here (`Layout`, `RoundFiles`). numpy/pydantic only: the API process imports it.

Images travel by reference, never as pixels: `ImageRefs` names the decoded-image cache files
(each a uint8 `.npy` of shape (N, H, W, C)) and the row of each image in them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.files import atomic_write_bytes


class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# ----------------------------------------------------------------------------- where files live

class RoundFiles:
    """The files of one round, under its folder."""

    def __init__(self, folder: Path | str):
        self.dir = Path(folder)

    @property
    def train_manifest(self) -> Path:
        return self.dir / "train.json"

    @property
    def checkpoint(self) -> Path:
        return self.dir / "model.pt"

    @property
    def metrics(self) -> Path:
        """The train job's result file; written last, so its presence marks the job done."""
        return self.dir / "metrics.json"

    @property
    def resume_dir(self) -> Path:
        """Per-epoch checkpoints a retried train job resumes from."""
        return self.dir / "ckpt"

    @property
    def score_manifest(self) -> Path:
        return self.dir / "score.json"

    def score_file(self, shard: int) -> Path:
        return self.dir / f"scores_{int(shard):05d}.npz"

    @property
    def swap_manifest(self) -> Path:
        """The round's background-swap test (SwapTestManifest)."""
        return self.dir / "swap.json"

    @property
    def swap_result(self) -> Path:
        """Its report; written last, so its presence marks the job done."""
        return self.dir / "swap_report.json"

    @property
    def label_issues(self) -> Path:
        """Out-of-fold probabilities of the labeled images and cleanlab's suspects (workers.label_issues)."""
        return self.dir / "label_issues.npz"


class Layout:
    """Where a project's artifacts live under the artifacts root."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def project_dir(self, pid: int) -> Path:
        return (self.root / f"p{pid}").resolve()

    def cache_dir(self, pid: int) -> Path:
        return self.project_dir(pid) / "cache"

    def cache_file(self, pid: int, shard: int) -> Path:
        return self.cache_dir(pid) / f"shard_{int(shard):05d}.npy"

    def ingest_manifest(self, pid: int, shard: int) -> Path:
        return self.cache_dir(pid) / f"ingest_{int(shard):05d}.json"

    def ingest_result(self, pid: int, shard: int) -> Path:
        return self.cache_dir(pid) / f"shard_{int(shard):05d}.json"

    def round_dir(self, pid: int, number: int) -> Path:
        return self.project_dir(pid) / f"r{int(number):04d}"

    def round_files(self, pid: int, number: int) -> RoundFiles:
        return RoundFiles(self.round_dir(pid, number))

    def trunk_dir(self, pid: int) -> Path:
        """The project's frozen-trunk cache (workers.trunk_cache): kept across rounds."""
        return self.project_dir(pid) / "trunk"

    def model_files(self, pid: int, version: int) -> "ModelFiles":
        """A model version's converted files (TorchScript, ONNX), made by workers.jobs.convert_model."""
        return ModelFiles(self.project_dir(pid) / "models" / f"v{int(version):04d}")

    def predict_dir(self, pid: int, key: str) -> Path:
        """A prediction job's folder: the uploaded images, its manifest and its answer."""
        return self.project_dir(pid) / "predict" / key


class ModelFiles:
    """The files of one model version's conversions."""

    def __init__(self, folder: Path | str):
        self.dir = Path(folder)

    @property
    def manifest(self) -> Path:
        return self.dir / "convert.json"

    @property
    def torchscript(self) -> Path:
        return self.dir / "model.torchscript.pt"

    @property
    def onnx(self) -> Path:
        return self.dir / "model.onnx"

    @property
    def result(self) -> Path:
        """ConvertResult JSON; written last, so its presence marks both conversions done."""
        return self.dir / "converted.json"

    def path(self, fmt: str) -> Path:
        return {"torchscript": self.torchscript, "onnx": self.onnx}[fmt]


# ----------------------------------------------------------------------------- images by reference

class ImageRefs(_M):
    """Images of one split: `files[file[i]]` row `row[i]` holds image i (item `item_ids[i]`,
    class index `labels[i]`, −1 where unknown). Parallel lists, not one object per image: a
    manifest lists every pool image (a path per image would make a 10k pool ~1 MB of JSON)."""

    files: list[str] = Field(default_factory=list)
    file: list[int] = Field(default_factory=list)
    row: list[int] = Field(default_factory=list)
    item_ids: list[int] = Field(default_factory=list)
    labels: list[int] = Field(default_factory=list)

    @model_validator(mode="after")
    def _parallel(self):
        n = len(self.item_ids)
        if not (len(self.file) == len(self.row) == len(self.labels) == n):
            raise ValueError("file, row, item_ids and labels must have one entry per image")
        if n and (min(self.file) < 0 or max(self.file) >= len(self.files)):
            raise ValueError("file index out of range")
        return self

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def build(cls, item_ids, cache_paths, rows, labels=None) -> "ImageRefs":
        """From one cache path per image (the repeated paths are folded into `files`)."""
        files: dict[str, int] = {}
        file = [files.setdefault(str(p), len(files)) for p in cache_paths]
        ids = [int(i) for i in item_ids]
        return cls(files=list(files), file=file, row=[int(r) for r in rows], item_ids=ids,
                   labels=[-1] * len(ids) if labels is None else [int(v) for v in labels])

    def take(self, idx) -> "ImageRefs":
        idx = [int(i) for i in idx]
        return ImageRefs(files=self.files, file=[self.file[i] for i in idx], row=[self.row[i] for i in idx],
                         item_ids=[self.item_ids[i] for i in idx], labels=[self.labels[i] for i in idx])

    def chunks(self, size: int) -> dict[str, "ImageRefs"]:
        """Consecutive pieces of `size` images, keyed "0", "1", … (the score shards)."""
        size = max(1, int(size))
        return {str(k // size): self.take(range(k, min(k + size, len(self)))) for k in range(0, len(self), size)}

    def gather(self) -> np.ndarray:
        """The pixels, (N, H, W, C) uint8, read from the cache files (memory-mapped)."""
        if not len(self):
            raise ValueError("no images")
        out = None
        file, row = np.asarray(self.file), np.asarray(self.row)
        for k in np.unique(file):
            arr = np.load(self.files[int(k)], mmap_mode="r")
            if out is None:
                out = np.empty((len(self),) + arr.shape[1:], dtype=np.uint8)
            sel = file == k
            out[sel] = arr[row[sel]]
        return out


# ----------------------------------------------------------------------------- ingest

class IngestManifest(_M):
    kind: Literal["ingest"] = "ingest"
    project_id: int
    shard: int
    data_root: str
    image_size: int
    channels: Literal[1, 3]
    max_pixels: int | None = None
    items: list[tuple[int, str]]  # (item id, path relative to data_root)
    out: str                      # the cache file (.npy) this shard decodes into
    result: str                   # IngestResult JSON; written last, so it marks the job done


class IngestResult(_M):
    shard: int
    ok: list[tuple[int, int]]     # (item id, row in the cache file)
    bad: list[tuple[int, str]]    # (item id, why it could not be decoded)


# ----------------------------------------------------------------------------- train

class TrainSettings(_M):
    """The workers.train.TrainConfig fields a round sets (the rest keep the engine's defaults)."""
    epochs: int
    batch_size: int
    duplicate_new: int
    balance: bool
    # plan.train_manifest always writes both; the defaults read a manifest written before they
    # existed as it was meant then (balanced to the largest class, no cap).
    balance_to: Literal["median", "max"] = "max"
    balance_max_repeats: int | None = None
    hflip: bool
    seed: int


class ModelSpec(_M):
    """What it takes to rebuild the round's network."""
    model: str
    class_names: list[str]
    image_size: int
    channels: Literal[1, 3]
    pretrained: bool | None = None  # None: the model's local weights when it has them installed
    frozen_blocks: int = 0


class ShadowSpec(_M):
    """The audit's shadow learner (strategies.audit, issue 22): the round's network trained again,
    from the same starting weights and settings, on the project's random labels only (a random
    first batch and the control slice), once for each of `sizes` (the first n of `train`, whose
    order is a seeded shuffle: each prefix is a random sample). Each is evaluated on the manifest's
    evidence when that is a validation split, else on `eval` (the random labels held out), which
    the round's own model is evaluated on too: the audit compares the two on the same images."""
    train: ImageRefs
    sizes: list[int]
    batch_sizes: list[int]            # the training batch of each size, as a round with that many labels
    eval: ImageRefs = Field(default_factory=ImageRefs)


class CounterexampleSpec(_M):
    """Explanatory feedback's counterexamples (engine.counterexamples, issue 25): for each source
    (a training image an expert flagged "wrong region", with the label it trains as), `copies`
    copies with everything outside its box [x0, y0, x1, y1] (pixels of the decoded image)
    replaced by `fill`, each image's copies seeded by (`seed`, its item id). `donors`: the images
    whose outsides `shuffle` pastes (the round's training images). `inside` (per source; empty:
    none): a bare vote's source, whose box is the map's wrong region and whose INSIDE is
    randomised instead (config feedback.bare). Made by the train job and trained on beside
    `train`, never counted as labels."""
    sources: ImageRefs
    boxes: list[list[int]]
    copies: int = Field(ge=1)
    fill: Literal["noise", "shuffle"] = "noise"
    seed: int = 0
    donors: ImageRefs = Field(default_factory=ImageRefs)
    inside: list[bool] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_box_each(self):
        if len(self.boxes) != len(self.sources):
            raise ValueError("boxes must have one entry per source image")
        if self.inside and len(self.inside) != len(self.sources):
            raise ValueError("inside must be empty or have one entry per source image")
        if self.fill == "shuffle" and len(set(self.donors.item_ids)) < 2:
            raise ValueError("fill 'shuffle' needs at least two donor images (one other than each source)")
        if any(len(b) != 4 or not (0 <= b[0] < b[2] and 0 <= b[1] < b[3]) for b in self.boxes):
            raise ValueError("each box is [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self

class PenaltySpec(_M):
    """The attribution penalty of explanatory feedback (engine.attribution_penalty, config
    feedback.penalty): for each listed training image, its object's box [x0, y0, x1, y1] (pixels
    of the decoded image); the train job adds `weight` × the share of the image's input-gradient
    energy outside the box to the loss (workers.attribution)."""
    item_ids: list[int]
    boxes: list[list[int]]
    weight: float = Field(gt=0.0)
    at: Literal["trained", "pixels"] = "trained"   # where the gradients are taken (config feedback.penalty_at)

    @model_validator(mode="after")
    def _one_box_each(self):
        if len(self.boxes) != len(self.item_ids) or not self.item_ids:
            raise ValueError("boxes must have one entry per image, and there must be at least one")
        if any(len(b) != 4 or not (0 <= b[0] < b[2] and 0 <= b[1] < b[3]) for b in self.boxes):
            raise ValueError("each box is [x0, y0, x1, y1] with 0 <= x0 < x1 and 0 <= y0 < y1")
        return self


class SemiSpec(_M):
    """A semi-supervised round (engine.semi, config `semi`): the unlabeled pool images the train
    job may give pseudo-labels to, their labels blanked (−1: a pseudo-label is never a label), and
    how it picks them."""
    method: Literal["propagation", "self-training"]
    pool: ImageRefs
    threshold: float
    weight: float
    max_ratio: float
    neighbours: int = 10
    alpha: float = 0.2
    seed: int = 0


class TrainManifest(_M):
    kind: Literal["train"] = "train"
    project_id: int
    round: int
    net: ModelSpec
    active: list[bool]            # per class: trained (and in the head) or excluded
    train: ImageRefs
    is_new: list[bool]            # per training image: labeled since the previous model trained
    evidence: ImageRefs           # what per-class accuracy (the exclusion rule, the class budget) is read on
    evidence_source: Literal["val", "holdout", "none"]
    test: ImageRefs
    settings: TrainSettings
    out_dir: str                  # RoundFiles(out_dir): checkpoint, metrics, resume checkpoints
    # A fixed sample of pool images (labeled or not) the trained model predicts on: the kappa
    # between successive models' predictions is the stopping signal (decisions.stopping_signal).
    stop_set: ImageRefs = Field(default_factory=ImageRefs)
    # The project's frozen-trunk cache folder: train the unfrozen blocks from it (None: pixels).
    trunk_cache: str | None = None
    # Cross-validation folds for out-of-fold probabilities of the labeled images (0: none), which
    # cleanlab reads for label issues (workers.label_issues; config relabel).
    relabel_folds: int = 0
    # Train without the suspects the folds find (config relabel.prune).
    relabel_prune: bool = False
    relabel_prune_max: float = 0.04  # at most this share of the training labels, most suspicious first
    # The order of suspicion (config relabel.ranking) and the kNN score's neighbours (relabel.knn_k).
    relabel_ranking: str = "self_confidence"
    relabel_knn_k: int = 25
    # Labels two or more experts agreed on, which no out-of-fold guess overrules: never pruned,
    # never a suspect asked again (a third expert would almost always agree once more).
    relabel_confirmed: list[int] = Field(default_factory=list)
    # The audit's shadow learner on random labels only (None: not this round).
    shadow: ShadowSpec | None = None
    # Explanatory feedback's counterexamples, trained on beside `train` (None: none this round).
    counterexamples: CounterexampleSpec | None = None
    # Explanatory feedback's attribution penalty on training images with a known region (None: none).
    penalty: PenaltySpec | None = None
    # Pseudo-labels for unlabeled pool images (None: a supervised round).
    semi: SemiSpec | None = None

    @model_validator(mode="after")
    def _lengths(self):
        if len(self.is_new) != len(self.train):
            raise ValueError("is_new must have one entry per training image")
        if len(self.active) != len(self.net.class_names):
            raise ValueError("active must have one entry per class")
        return self


class TrainResult(_M):
    checkpoint: str
    metrics: str
    cached: bool = False
    seconds: float | None = None
    batch_size: int | None = None
    oom_splits: int = 0


# ----------------------------------------------------------------------------- score

class Gatekeeper(_M):
    """The model of a round that excluded classes. It still knew them, so the pool images it
    predicts as one of them are kept out of the queue (the current model cannot name a class
    its head masks)."""
    checkpoint: str
    round: int
    active: list[bool]            # the classes active when it trained
    excluded: list[bool]          # the classes it saw excluded


class ScoreManifest(_M):
    kind: Literal["score"] = "score"
    project_id: int
    round: int
    net: ModelSpec
    checkpoint: str | None        # None: the model as built, its pretrained weights (a typical first batch's embeddings)
    active: list[bool]
    mc_samples: int
    seed: int
    batch_size: int = 256
    shards: dict[str, ImageRefs]  # shard number (as text: JSON keys) → its unlabeled pool images
    gatekeepers: list[Gatekeeper] = Field(default_factory=list)
    out_dir: str                  # RoundFiles(out_dir).score_file(shard)
    trunk_cache: str | None = None  # as TrainManifest's: score from the cached frozen trunk
    calibrated_scores: bool = False  # score columns from the checkpoint's temperature-scaled probabilities
    dropout_passes: int = 0       # selection.mode dropquery: passes of the head with dropout (0: no such column)
    dropout_rate: float = 0.0     # their dropout rate on the pooled features


class ScoreJobResult(_M):
    shard: int
    scores: str
    n: int
    cached: bool = False
    seconds: float | None = None
    batch_size: int | None = None
    oom_splits: int = 0


# ----------------------------------------------------------------------------- freeze report

class FreezeReportManifest(_M):
    """The freezing-depth report (workers.freeze_report) of a project's pretrained model, on its
    labeled images: per-block Grad-CAM, the picture, and the recommended `frozen_blocks`."""
    kind: Literal["freeze"] = "freeze"
    project_id: int
    net: ModelSpec                # pretrained weights, nothing frozen: the report reads the ImageNet blocks
    images: ImageRefs             # labeled images (labels = class indices)
    max_images: int = 32
    seed: int = 0
    out_png: str                  # the picture: one row of overlays per block
    result: str                   # the report as JSON; written last, so it marks the job done


# ----------------------------------------------------------------------------- model conversions

# The ONNX model's input and outputs, by name (what the model card documents and predict reads).
ONNX_INPUT = "input"              # float32 (N, C, S, S): (pixel / 255 − mean) / std
ONNX_LOGITS = "logits"            # float32 (N, classes), every class of the head (mask excluded ones)
ONNX_CAM = "cam"                  # float32 (N, classes, h, w): Σ_k head.weight[c, k] / (h·w) · A_k, the
                                  # Grad-CAM of each class at the last block (exact for GAP + linear)


class ConvertManifest(_M):
    """Convert a trained checkpoint to TorchScript and ONNX: the whole network from pixels (a
    cached frozen trunk included), in eval mode, the outputs checked against torch's."""
    kind: Literal["convert"] = "convert"
    project_id: int
    version: int
    checkpoint: str
    net: ModelSpec
    out_dir: str                  # ModelFiles(out_dir)
    opset: int = 17


class ConvertResult(_M):
    version: int
    torchscript: str
    onnx: str
    input_size: int
    channels: int
    mean: list[float]
    std: list[float]
    feature_map: list[int]        # (h, w) of the cam output
    max_abs_diff_onnx: float      # onnxruntime vs torch on the check images
    max_abs_diff_torchscript: float
    seconds: float | None = None


# ----------------------------------------------------------------------------- background-swap test

class SwapTestManifest(_M):
    """A round's background-swap test (engine.swap_test, workers.swap_job): the round's model
    guesses a fixed, seeded sample of the pool images with a known region, and copies of them
    with the outside of the region pasted from other tested images. The candidates' regions are
    in pixels of their files (the folder's regions.json, or a rectangle an expert drew); the job
    maps them onto the decoded frame (engine.regions.to_decoded) and draws the sample among those
    that leave something outside (engine.swap_test.sample), so the API process reads no file."""
    kind: Literal["swap"] = "swap"
    project_id: int
    round: int
    checkpoint: str
    net: ModelSpec
    active: list[bool]
    candidates: ImageRefs         # the decoded pool images with a known region, by item id
    uris: list[str]               # … their files, relative to data_root
    regions: list[list[int]]      # … their regions [x0, y0, x1, y1] in pixels of the file
    data_root: str
    pool_size: int                # the decoded pool images: those not tested are the report's `untestable`
    images: int                   # feedback.swap_images: the sample's size at most
    copies: int
    seed: int
    trunk_cache: str | None = None
    result: str                   # the report as JSON; written last, so it marks the job done


# ----------------------------------------------------------------------------- prediction jobs

class PredictManifest(_M):
    """Predict on images with a model version's checkpoint, in a worker (requests too large to
    answer at once on the API's CPU, or a model not converted yet)."""
    kind: Literal["predict"] = "predict"
    project_id: int
    version: int
    checkpoint: str
    net: ModelSpec
    active: list[bool]
    files: list[str]              # absolute paths of the images (uploads, or registered files)
    names: list[str]              # what each is called in the answer (file name, or uri)
    top_k: int = 3
    cam: bool = False             # also write a Grad-CAM overlay PNG per image
    max_pixels: int | None = None
    out_dir: str
    result: str                   # the answer JSON; written last, so it marks the job done


# Members of a score file (.npz): per image of the shard, in the manifest's order.
SCORE_ITEM_IDS = "item_ids"
SCORE_PRED = "pred"               # predicted class index (over active classes)
SCORE_PROBS = "probs"
SCORE_EMBEDDING = "embedding"
SCORE_CAM = "cam_lowres"          # Grad-CAM of the guess at feature resolution, float16
SCORE_GATED = "gated"             # True: a gatekeeper predicts an excluded class
SCORE_P_GUESS = "p_guess"         # calibrated probability of the guess (the round's temperature)
SCORE_COLUMN_PREFIX = "col_"      # col_<score key>, float32


def read_manifest(path: Path | str, model: type[_M]) -> _M:
    return model.model_validate_json(Path(path).read_bytes())


def write_manifest(path: Path | str, manifest: _M) -> None:
    """The manifest as JSON, atomically."""
    atomic_write_bytes(path, manifest.model_dump_json().encode())
