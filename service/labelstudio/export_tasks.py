"""The labeled data set as Label Studio tasks (the `label-studio` export format), and the experts'
votes behind each label (the export's votes source), from the bridge's annotation ledger.

Each task carries what camloop's labeling config shows (the image and heatmap as signed URLs,
valid for CAMLOOP_LABEL_STUDIO_URL_TTL_S; the guess's words) and camloop's ids, its label as an
annotation and, when the expert was shown a guess, the guess as a prediction: imported into a
Label Studio project with camloop's config (or any with an `image` Image and a `label` Choices),
the tasks come back labeled.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

from sqlalchemy import select

from service.core.export import Format, Snapshot
from service.core.signing import UrlSigner
from service.labelstudio import config as cfg
from service.labelstudio.client import guess_text
from service.labelstudio.ledger import _row_to_event, annotations
from service.labelstudio.resolve import one_per_annotator
from service.labelstudio.routes import file_url, heatmap_url


def task(row: dict, signer: UrlSigner, ttl: int, pid: int) -> dict:
    image = file_url(signer, row["uri"], ttl)
    guess = row["model_guess"]
    t = {"data": {cfg.IMAGE: image,
                  cfg.HEATMAP: heatmap_url(signer, pid, row["item_id"], ttl) if guess else image,
                  cfg.GUESS: guess_text(guess, row["model_probability"]),
                  cfg.ITEM_ID: row["item_id"], cfg.ROUND: row["picked_round"] or 0, cfg.RANK: row["picked_rank"] or 0,
                  "uri": row["uri"], "split": row["split"], "camloop_class_status": row["class_status"],
                  "camloop_quarantined": row["quarantined"], "camloop_labeled_by": row["who"],
                  "camloop_label_source": row["source"]},
         "annotations": [{"result": [{"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices",
                                      "value": {"choices": [row["class"]]}}],
                          "ground_truth": False}]}
    if guess:
        t["predictions"] = [cfg.prediction(guess, row["model_probability"], f"camloop-v{row['guess_model_version']}")]
    return t


def tasks(snap: Snapshot) -> Iterator[bytes]:
    """A JSON array of tasks, streamed."""
    settings = snap.settings
    signer, ttl = UrlSigner.from_settings(settings), settings.label_studio.url_ttl_s
    yield b"["
    sep = b"\n"
    for row in snap.rows():
        yield sep + json.dumps(task(row, signer, ttl, snap.pid), ensure_ascii=False).encode()
        sep = b",\n"
    yield b"\n]\n"


FORMAT = Format("label-studio", "application/json", "label-studio.json", tasks,
                "Label Studio tasks (JSON array) with the labels as annotations and the guesses as predictions")


def votes(s, project_id: int, item_ids: list[int]) -> dict[int, dict[str, int]]:
    """{item: {class: experts who chose it}} (one vote per annotator, their latest answer)."""
    by_item: dict[int, list] = {}
    for r in s.execute(select(annotations).where(annotations.c.project_id == project_id,
                                                 annotations.c.item_id.in_(item_ids))):
        by_item.setdefault(r.item_id, []).append(_row_to_event(r))
    return {iid: dict(Counter(a.label for a in one_per_annotator(anns) if a.counts))
            for iid, anns in by_item.items()}
