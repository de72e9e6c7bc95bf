"""Score files (.npz) read in place.

One mmap of the file, a member parsed only when asked for, its array a view of the mapping: the
columns a strategy uses and the few embedding rows diversity needs are all that is read of a 1M
pool's ~250 shards (np.load unzips every member it is asked for, whole, each time). A compressed
member falls back to np.load. numpy only: the API process selects from these files.
"""
from __future__ import annotations

import io
import mmap
import zipfile
from pathlib import Path

import numpy as np

_NPY_HEADERS: dict[bytes, tuple] = {}  # raw .npy header → (shape, fortran, dtype): shards repeat them


class ScoreFile:
    """One score shard; `sf[name]` is the member's array (a read-only view)."""

    def __init__(self, path: Path):
        self.path = path
        with zipfile.ZipFile(path) as z:
            self.members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
        self._stored = all(i.compress_type == zipfile.ZIP_STORED for i in self.members.values())
        self._mm = None
        self._npz = None

    def __getitem__(self, name: str) -> np.ndarray:
        if not self._stored:
            if self._npz is None:
                self._npz = np.load(self.path)
            return self._npz[name]
        if self._mm is None:
            with open(self.path, "rb") as f:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mm, info = self._mm, self.members[name]
        off = info.header_offset  # the member's local header; name and extra lengths at 26..30
        off += 30 + int.from_bytes(mm[off + 26:off + 28], "little") + int.from_bytes(mm[off + 28:off + 30], "little")
        size_len = 2 if mm[off + 6] == 1 else 4  # .npy format version 1.0: 2-byte header length
        raw = bytes(mm[off:off + 8 + size_len + int.from_bytes(mm[off + 8:off + 8 + size_len], "little")])
        parsed = _NPY_HEADERS.get(raw)
        if parsed is None:
            f = io.BytesIO(raw)
            major, _ = np.lib.format.read_magic(f)
            parsed = (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(f)
            if len(_NPY_HEADERS) < 256:
                _NPY_HEADERS[raw] = parsed
        shape, fortran, dtype = parsed
        if dtype.hasobject:
            return np.load(self.path, allow_pickle=False)[name]  # refuses, as np.load would
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype)
        a = np.frombuffer(mm, dtype=dtype, count=count, offset=off + len(raw))
        return a.reshape(shape, order="F" if fortran else "C")

