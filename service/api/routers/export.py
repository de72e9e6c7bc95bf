"""The labeled data set, streamed: GET /projects/{pid}/export?format=imagefolder|jsonl|csv|label-studio."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from service.api.deps import CallerDep, Pid, SettingsDep
from service.core import export as export_svc
from service.core import export_formats  # noqa: F401  (registers jsonl, csv, imagefolder)

router = APIRouter(tags=["export"])


@router.get("/projects/{pid}/export", response_class=StreamingResponse,
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}, "application/x-tar": {},
                                         "application/json": {}},
                             "description": "the export, streamed; X-Camloop-Export-Rows says how many labeled "
                                            "images it holds"},
                       409: {"description": "nothing labeled yet"},
                       422: {"description": "unknown format (the answer lists the formats)"}})
def export(pid: Pid, settings: SettingsDep, c: CallerDep,
           format: Annotated[str, Query(max_length=40, description="imagefolder (a tar stream), jsonl, csv, "
                                                                 "label-studio")] = "jsonl") -> StreamingResponse:
    """One row per labeled image, from one snapshot of the store: a label made while the export
    streams is wholly in it or wholly out (the headers give the cut-off). imagefolder is an
    uncompressed tar of `<split>/<class>/<file>` with `export.json` as its last member."""
    ex = export_svc.start(settings, pid, format)
    name = ex.fmt.filename + (".tar" if ex.fmt.name == "imagefolder" else "")
    snap = ex.facts["snapshot"]
    headers = {"Content-Disposition": f'attachment; filename="project-{pid}-{name}"',
               "X-Camloop-Export-Rows": str(ex.rows), "X-Camloop-Export-Format": ex.fmt.name,
               "X-Camloop-Export-Last-Label-Id": str(snap["last_label_id"]), "X-Camloop-Export-At": snap["at"]}
    return StreamingResponse(ex.body, media_type=ex.fmt.media_type, headers=headers)
