"""What a team takes away, from the command line: `camloop export`, `camloop predict`,
`camloop model list|download|pin|unpin`. Thin clients of the REST API (service.cli.client).

An export is written under a temporary name beside its destination and renamed only once it is
complete (the row count the server announced, and for imagefolder the tar's closing
`export.json`): a failure on the way — the connection cut, the disk full — leaves no file that
looks complete, and nothing at the destination.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import tarfile
import uuid
from pathlib import Path, PurePosixPath

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from service.cli.client import KEY, URL, _check, _client, console

model_app = typer.Typer(help="model versions of a project", no_args_is_help=True)

FILE_NAMES = {"jsonl": "labels.jsonl", "csv": "labels.csv", "label-studio": "label-studio.json"}


class ExportError(RuntimeError):
    pass


class _StreamReader:
    """A read(n) file over an HTTP response's byte stream (tarfile's streaming mode reads this)."""

    def __init__(self, chunks):
        self._it, self._buf = iter(chunks), b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if n < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:n], self._buf[n:]
        return data


def _detail(r: httpx.Response) -> str:
    r.read()
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text


def export_to(client: httpx.Client, pid: int, fmt: str, out: Path) -> dict:
    """Stream project `pid`'s export in `fmt` into `out` (imagefolder: the folder itself; other
    formats: a file inside it). Returns what was written; raises ExportError, leaving nothing."""
    out = Path(out)
    with client.stream("GET", f"/projects/{pid}/export", params={"format": fmt}, timeout=None) as r:
        if r.status_code != 200:
            raise ExportError(f"GET /projects/{pid}/export → {r.status_code}: {_detail(r)}")
        rows = int(r.headers["X-Camloop-Export-Rows"])
        if fmt == "imagefolder":
            return _extract_tree(r, out, rows)
        return _write_file(r, out / FILE_NAMES.get(fmt, f"export.{fmt}"), fmt, rows)


def _write_file(r: httpx.Response, target: Path, fmt: str, rows: int) -> dict:
    made = not target.parent.exists()
    tmp = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            for chunk in r.iter_bytes():
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        got = _count(tmp, fmt)
        if got != rows:
            raise ExportError(f"the export ended after {got} of {rows} rows")
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if made:  # the folder this export made, now empty: gone too
            shutil.rmtree(target.parent, ignore_errors=True)
        if isinstance(e, (OSError, httpx.HTTPError)):
            raise ExportError(f"export not written ({type(e).__name__}: {e}); nothing at {target}") from e
        raise
    return {"path": str(target), "rows": rows}


def _count(path: Path, fmt: str) -> int:
    with open(path, encoding="utf-8", newline="") as f:
        if fmt == "csv":
            return max(0, sum(1 for _ in csv.reader(f)) - 1)
        if fmt == "label-studio":
            text = f.read()
            if not text.rstrip().endswith("]"):
                return -1
            return sum(1 for line in text.splitlines() if line.startswith("{"))
        return sum(1 for line in f if line.strip())


def _safe_member(m: tarfile.TarInfo) -> PurePosixPath:
    p = PurePosixPath(m.name)
    if not m.isfile() or p.is_absolute() or ".." in p.parts or not p.parts:
        raise ExportError(f"refused tar member {m.name!r}")
    return p


def _extract_tree(r: httpx.Response, out: Path, rows: int) -> dict:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder: give a new one")
    tmp = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        meta = None
        with tarfile.open(fileobj=_StreamReader(r.iter_bytes()), mode="r|") as tar:
            for m in tar:
                rel = _safe_member(m)
                src = tar.extractfile(m)
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as f:
                    shutil.copyfileobj(src, f)
                if rel.as_posix() == "export.json":
                    meta = json.loads(dest.read_text())
        if meta is None:
            raise ExportError("the export ended before its export.json: incomplete")
        listed = meta["images"] + len(meta["quarantined"]) + len(meta["missing"])
        if listed != rows:
            raise ExportError(f"the export holds {listed} of {rows} rows")
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, (OSError, httpx.HTTPError, tarfile.TarError)):
            raise ExportError(f"export not written ({type(e).__name__}: {e}); nothing at {out}") from e
        raise
    return {"path": str(out), "rows": rows, "images": meta["images"], "quarantined": len(meta["quarantined"]),
            "missing": len(meta["missing"])}


def export(pid: int = typer.Argument(..., help="project id"),
           format: str = typer.Option("imagefolder", "--format", help="imagefolder | jsonl | csv | label-studio"),
           out: Path = typer.Option(..., "--out", help="imagefolder: the folder to create; other formats: the "
                                                      "folder to write labels.jsonl / labels.csv / label-studio.json in"),
           url: str | None = URL, key: str | None = KEY) -> None:
    """Export the labeled data set (a snapshot: a label made meanwhile is wholly in or out)."""
    with _client(url, key) as c:
        try:
            done = export_to(c, pid, format, out)
        except ExportError as e:
            console.print(f"[red]export failed[/red]: {escape(str(e))}")
            raise typer.Exit(1) from None
    extra = "" if format != "imagefolder" else \
        f" ({done['images']} images; {done['quarantined']} quarantined and {done['missing']} missing listed in export.json)"
    console.print(f"exported {done['rows']} labeled images to {escape(done['path'])}{extra}")


# ----------------------------------------------------------------------------- predict

def predict(pid: int = typer.Argument(..., help="project id"),
            files: list[Path] = typer.Argument(..., help="image files"),
            top_k: int = typer.Option(3, "--top-k", help="classes shown per image"),
            wait: bool = typer.Option(True, help="wait for a worker's answer when the request becomes a job"),
            url: str | None = URL, key: str | None = KEY) -> None:
    """The in-use model's top classes for each image, as a table."""
    import time

    with _client(url, key) as c:
        upload = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in files]
        r = c.post(f"/projects/{pid}/predict", params={"top_k": top_k}, files=upload, timeout=300)
        answer = _check(r)
        while answer.get("state") in ("queued", "started") and wait:
            time.sleep(1)
            answer = _check(c.get(f"/projects/{pid}/predict/{answer['job']}"))
    if answer.get("state") != "done":
        console.print(f"prediction job {answer.get('job')}: {answer.get('state')} {escape(str(answer.get('error') or ''))}")
        raise typer.Exit(0 if answer.get("state") in ("queued", "started") else 1)
    model = answer["model"]
    t = Table(title=f"model version {model['version']} (round {model['round']}, {model['why']})")
    t.add_column("image")
    for k in range(top_k):
        t.add_column(f"#{k + 1}")
    for p in answer["predictions"]:
        t.add_row(escape(p["name"]), *[f"{escape(x['class'])} {x['p']:.3f}" for x in p["top"]])
    console.print(t)


# ----------------------------------------------------------------------------- model versions

@model_app.command("list")
def model_list(pid: int = typer.Argument(..., help="project id"), url: str | None = URL,
               key: str | None = KEY) -> None:
    """Every model version with its round, labels, evidence accuracy and whether it is in use."""
    with _client(url, key) as c:
        res = _check(c.get(f"/projects/{pid}/models"))
    t = Table(title=f"in use: version {res['in_use']['version']} ({escape(res['in_use']['note'])})")
    for col in ("version", "round", "labels", "accuracy", "measured on", "pinned", "in use"):
        t.add_column(col)
    for v in res["versions"]:
        ev = (v["metrics"] or {}).get("evidence") or {}
        acc = ev.get("accuracy")
        t.add_row(str(v["version"]), str(v["round"]), str(sum((v["labels_per_class"].get("train") or {}).values())),
                  "—" if acc is None else f"{acc:.3f}", f"{ev.get('measured_on', '—')} ({ev.get('images', 0)})",
                  "yes" if v["pinned"] else "", "yes" if v["in_use"] else "")
    console.print(t)


@model_app.command("download")
def model_download(pid: int = typer.Argument(..., help="project id"),
                   version: str = typer.Argument("in-use", help="a version number, latest or in-use"),
                   format: str = typer.Option("onnx", "--format", help="state_dict | torchscript | onnx"),
                   out: Path = typer.Option(Path("."), "--out", help="folder for the file and its model card"),
                   url: str | None = URL, key: str | None = KEY) -> None:
    """The model file and its card (card.json, card.md), waiting while a worker converts it."""
    import time

    with _client(url, key) as c:
        for _ in range(600):
            r = c.get(f"/projects/{pid}/models/{version}/download", params={"format": format}, timeout=300)
            if r.status_code != 202:
                break
            time.sleep(float(r.headers.get("Retry-After", "2")))
        if r.status_code != 200:
            _check(r)
        v = r.headers["X-Camloop-Model-Version"]
        card = _check(c.get(f"/projects/{pid}/models/{v}/card"))
        md = c.get(f"/projects/{pid}/models/{v}/card.md").text
    out.mkdir(parents=True, exist_ok=True)
    name = {"state_dict": "model.pt", "torchscript": "model.torchscript.pt", "onnx": "model.onnx"}[format]
    for fname, data in ((name, r.content), ("card.json", json.dumps(card, indent=2).encode()), ("card.md", md.encode())):
        tmp = out / f".{fname}.partial"
        tmp.write_bytes(data)
        os.replace(tmp, out / fname)
    console.print(f"version {v}: {escape(str(out / name))}, card.json, card.md")


def _pin(pid: int, version: str, pinned: bool, url, key) -> None:
    with _client(url, key) as c:
        v = _check(c.patch(f"/projects/{pid}/models/{version}", json={"pinned": pinned}))
    console.print(f"version {v['version']} {'pinned: it scores the next rounds and predicts' if pinned else 'unpinned'}")


@model_app.command("pin")
def model_pin(pid: int = typer.Argument(...), version: str = typer.Argument(...), url: str | None = URL,
              key: str | None = KEY) -> None:
    """Pin a version: it scores the next rounds, pre-labels and predicts until unpinned."""
    _pin(pid, version, True, url, key)


@model_app.command("unpin")
def model_unpin(pid: int = typer.Argument(...), version: str = typer.Argument(...), url: str | None = URL,
                key: str | None = KEY) -> None:
    _pin(pid, version, False, url, key)
