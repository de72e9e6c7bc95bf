"""Signed, expiring URLs for images and heatmaps, and the safe join that serves them.

Label Studio shows camloop's images in the expert's browser, which has no camloop API key,
so each URL carries its own permission: ``?exp=<unix seconds>&sig=<HMAC-SHA256>`` over the
URL path and the expiry. A URL cannot be steered to another file (the path is signed), nor
used after it expires; signatures are compared in constant time.

The URL names a file only by a path *relative to the data root*; ``safe_join`` is what turns
it back into a file and refuses anything that leaves the root (``..``, absolute paths,
symlinks pointing out), so even a leaked signing key cannot read outside the data dir.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urlencode

from service.settings import Settings


class SignatureError(ValueError):
    """The URL is not signed by us, was altered, or has expired."""


class UnsafePath(ValueError):
    """A path that would leave the data root."""


KEY_FILE = ".url_signing_key"


def signing_key(settings: Settings) -> bytes:
    """settings.url_signing_key, or a random key kept in the state folder (created on first use).

    Kept in a file so every process of one installation (API, workers, restarts) signs and
    checks with the same key without the operator having to configure one; beside the data
    folder, never in it (an install from before keeps reading its key where it is)."""
    configured = settings.url_signing_key.get_secret_value()
    if configured:
        return configured.encode()
    path = settings.state_file(KEY_FILE)
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    try:
        # O_EXCL: if two processes race, exactly one writes and both read the winner's key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class UrlSigner:
    def __init__(self, key: bytes, base_url: str, ttl_s: int = 3600):
        if not key:
            raise ValueError("empty signing key")
        self._key = key
        self.base_url = base_url.rstrip("/")
        self.ttl_s = ttl_s

    @classmethod
    def from_settings(cls, settings: Settings) -> "UrlSigner":
        return cls(signing_key(settings), settings.public_base_url, settings.signed_url_ttl_s)

    def _sig(self, path: str, exp: int) -> str:
        msg = f"{path}\n{exp}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def sign(self, path: str, *, now: float | None = None, ttl_s: int | None = None) -> str:
        """Absolute URL for `path` (an URL path starting with /, not yet percent-encoded)."""
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/': {path!r}")
        exp = int((time.time() if now is None else now) + (self.ttl_s if ttl_s is None else ttl_s))
        return f"{self.base_url}{quote(path)}?{urlencode({'exp': exp, 'sig': self._sig(path, exp)})}"

    def verify(self, path: str, exp: str | int | None, sig: str | None, *, now: float | None = None) -> None:
        """Raise SignatureError unless `sig` signs (`path`, `exp`) and `exp` is in the future.

        `path` is the decoded URL path as the web framework hands it over.
        """
        if exp is None or sig is None:
            raise SignatureError("missing signature (exp and sig query parameters)")
        try:
            exp_i = int(exp)
        except (TypeError, ValueError):
            raise SignatureError("malformed expiry") from None
        # Compare before checking expiry so both failures take the same time.
        ok = hmac.compare_digest(self._sig(path, exp_i).encode(), str(sig).encode())
        if not ok:
            raise SignatureError("bad signature")
        if exp_i < (time.time() if now is None else now):
            raise SignatureError("signed URL expired")


def safe_join(root: Path | str, rel: str) -> Path:
    """root/rel resolved, refusing absolute paths, `..`, NUL and symlinks that leave root."""
    if not rel or "\x00" in rel or "\\" in rel:
        raise UnsafePath(f"refused path {rel!r}")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or any(p in ("..", "") for p in parts):
        raise UnsafePath(f"refused path {rel!r}: outside the data root")
    root_r = Path(root).resolve()
    target = (root_r / Path(*parts)).resolve()  # resolves symlinks, so a link out is caught below
    if target != root_r and root_r not in target.parents:
        raise UnsafePath(f"refused path {rel!r}: outside the data root")
    return target
