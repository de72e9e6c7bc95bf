"""Export formats over a snapshot's rows (service.core.export): JSONL, CSV, and an ImageFolder tree
as an uncompressed tar stream. Each yields bytes as rows come, never the whole export at once.

ImageFolder (a tar: the images are compressed already, and a tar streams member by member):
  <split>/<class folder>/<item id>-<file name>   split = train (the pool's labels), val, test
  export.json                                     the last member: classes in the model's order
                                                  with their status and folder, counts per split,
                                                  quarantined and missing images, the snapshot
A quarantined image (it could not be decoded) is listed in export.json, never in a class folder,
where it would break a loader; an excluded class keeps its folder and is marked excluded there.
torchvision's ImageFolder(root/"train") and `datasets.load_dataset("imagefolder", data_dir=root)`
read the tree as it is. Their class indices are alphabetical; export.json's `classes` (and the
model card's) are the model's order.
"""
from __future__ import annotations

import csv
import io
import json
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterator

from service.core.export import COLUMNS, Format, Snapshot, file_name, register_format
from service.core.signing import safe_join


def jsonl(snap: Snapshot) -> Iterator[bytes]:
    buf = []
    for k, row in enumerate(snap.rows(), 1):
        buf.append(json.dumps(row, ensure_ascii=False))
        if k % 500 == 0:
            yield ("\n".join(buf) + "\n").encode()
            buf = []
    if buf:
        yield ("\n".join(buf) + "\n").encode()


def csv_rows(snap: Snapshot) -> Iterator[bytes]:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="raise")
    w.writeheader()
    for k, row in enumerate(snap.rows(), 1):
        w.writerow({**row, "votes": json.dumps(row["votes"], ensure_ascii=False) if row["votes"] else ""})
        if k % 500 == 0:
            yield out.getvalue().encode()
            out.seek(0)
            out.truncate()
    yield out.getvalue().encode()


# ----------------------------------------------------------------------------- ImageFolder

_UNSAFE = re.compile(r"[/\\\x00-\x1f]")


def class_folders(names: list[str]) -> dict[str, str]:
    """A folder name per class: the name itself where a file system takes it (no slashes or control
    characters, not '.' or '..'), made unique by the class index where two would collide."""
    out, used = {}, set()
    for i, n in enumerate(names):
        f = _UNSAFE.sub("_", n).strip() or f"class-{i}"
        if f in (".", ".."):
            f = f"class-{i}"
        if f in used:
            f = f"{f}-{i}"
        used.add(f)
        out[n] = f
    return out


class _Pipe(io.RawIOBase):
    """What tarfile writes into; the generator hands the bytes on as they accumulate."""

    def __init__(self):
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.chunks.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def imagefolder(snap: Snapshot) -> Iterator[bytes]:
    folders = class_folders(snap.names)
    pipe = _Pipe()
    tar = tarfile.open(fileobj=pipe, mode="w|", format=tarfile.PAX_FORMAT)
    counts: dict[str, Counter] = {}
    quarantined, missing = [], []
    now = time.time()
    for row in snap.rows():
        if row["quarantined"]:
            quarantined.append({k: row[k] for k in ("item_id", "uri", "split", "class", "quarantine_reason")})
            continue
        try:
            path = safe_join(snap.settings.data_dir, row["uri"])
            f = open(path, "rb")
        except (OSError, ValueError) as e:
            missing.append({"item_id": row["item_id"], "uri": row["uri"], "split": row["split"], "class": row["class"],
                            "reason": getattr(e, "strerror", None) or str(e)})
            continue
        with f:
            info = tarfile.TarInfo(f"{row['split']}/{folders[row['class']]}/{file_name(row['uri'], row['item_id'])}")
            info.size, info.mtime, info.mode = _size(f), now, 0o644
            tar.addfile(info, f)
        counts.setdefault(row["split"], Counter())[row["class"]] += 1
        data = pipe.take()
        if data:
            yield data
    facts = snap.facts()
    for cl in facts["classes"]:
        cl["folder"] = folders[cl["name"]]
        cl["images"] = {split: counts[split].get(cl["name"], 0) for split in sorted(counts)}
    meta = {"format": "imagefolder", **facts, "images": sum(sum(c.values()) for c in counts.values()),
            "quarantined": quarantined, "missing": missing,
            "layout": "<split>/<class folder>/<item id>-<file name>; split train = the pool's labels",
            "note": "loaders number classes alphabetically by folder; `classes` is the model's order"}
    data = json.dumps(meta, indent=2, ensure_ascii=False).encode()
    info = tarfile.TarInfo("export.json")  # last: a tar without it is not a complete export
    info.size, info.mtime, info.mode = len(data), now, 0o644
    tar.addfile(info, io.BytesIO(data))
    tar.close()
    yield pipe.take()


def _size(f) -> int:
    import os

    return os.fstat(f.fileno()).st_size


register_format(Format("jsonl", "application/x-ndjson", "labels.jsonl", jsonl,
                       "one JSON object per labeled image"))
register_format(Format("csv", "text/csv; charset=utf-8", "labels.csv", csv_rows,
                       "one row per labeled image (votes as JSON)"))
register_format(Format("imagefolder", "application/x-tar", "imagefolder", imagefolder,
                       "an uncompressed tar of <split>/<class>/<file> and export.json"))
