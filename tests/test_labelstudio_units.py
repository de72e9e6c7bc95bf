"""The bridge's pure parts: signing, safe join, config, parsing, idempotent apply, resolution, agreement."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sklearn.metrics import cohen_kappa_score

from service.labelstudio import config as cfg
from service.labelstudio.agreement import agreement_report, cohen_kappa, fleiss_kappa
from service.labelstudio.apply import MemorySink, apply_events
from service.labelstudio.events import AnnotationDeleted, AnnotationError, AnnotationUpserted, parse_annotation
from service.labelstudio.resolve import resolve_item
from service.labelstudio.webhook import (SECRET_HEADER, WebhookError, check_project_secret, check_secret,
                                         parse_payload, project_secret, webhook_key)
from service.settings import Settings
from service.core.signing import SignatureError, UnsafePath, UrlSigner, safe_join, signing_key

CLASSES = ["cat", "dog", "bird"]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


# --- signing ---------------------------------------------------------------------------------

def _split(url: str) -> tuple[str, str, str]:
    from urllib.parse import parse_qs, unquote, urlsplit
    u = urlsplit(url)
    q = parse_qs(u.query)
    return unquote(u.path), q["exp"][0], q["sig"][0]


def test_signed_url_roundtrip_expiry_and_tamper():
    s = UrlSigner(b"k" * 32, "http://camloop.test/", ttl_s=60)
    url = s.sign("/api/v1/media/images/a b.png", now=1000)
    assert url.startswith("http://camloop.test/api/v1/media/images/a%20b.png?exp=1060&sig=")
    path, exp, sig = _split(url)
    s.verify(path, exp, sig, now=1059)
    with pytest.raises(SignatureError, match="expired"):
        s.verify(path, exp, sig, now=1061)
    with pytest.raises(SignatureError, match="bad signature"):
        s.verify("/api/v1/media/images/other.png", exp, sig, now=1000)
    with pytest.raises(SignatureError, match="bad signature"):  # extending the expiry breaks the signature
        s.verify(path, "99999", sig, now=1000)
    with pytest.raises(SignatureError, match="bad signature"):
        UrlSigner(b"other-key", "http://camloop.test").verify(path, exp, sig, now=1000)
    with pytest.raises(SignatureError, match="missing"):
        s.verify(path, None, None)
    with pytest.raises(SignatureError, match="malformed"):
        s.verify(path, "soon", sig)


def test_signing_key_generated_once_per_data_dir(tmp_path):
    st = Settings(data_dir=tmp_path)
    k1 = signing_key(st)
    assert len(k1) == 64 and signing_key(st) == k1
    # In the state folder beside the data folder, never inside what the API serves.
    assert (st.state_path / ".url_signing_key").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / ".url_signing_key").exists()
    assert signing_key(Settings(data_dir=tmp_path, url_signing_key="configured")) == b"configured"


def test_safe_join_refuses_escapes(tmp_path):
    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    (root / "img" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", root / "img" / "link.png")
    os.symlink(root / "img" / "a.png", root / "inside-link.png")
    assert safe_join(root, "img/a.png") == (root / "img" / "a.png").resolve()
    assert safe_join(root, "inside-link.png") == (root / "img" / "a.png").resolve()
    for bad in ["../secret.txt", "img/../../secret.txt", "/etc/passwd", "img/link.png", "", "a\x00b", "img\\..\\x"]:
        with pytest.raises(UnsafePath):
            safe_join(root, bad)


# --- labeling config -------------------------------------------------------------------------

def test_labeling_config_escapes_and_contains_the_parts():
    xml = cfg.labeling_config(["cat", 'say "hi" & <bye>'])
    import xml.etree.ElementTree as ET
    root = ET.fromstring(xml)
    images = {e.get("name"): e.get("value") for e in root.iter("Image")}
    assert images == {cfg.IMAGE: "$image", cfg.HEATMAP: "$heatmap"}
    choices = {e.get("name"): [c.get("value") for c in e.iter("Choice")] for e in root.iter("Choices")}
    assert choices[cfg.CLASS_FROM] == ["cat", 'say "hi" & <bye>']
    assert choices[cfg.WRONG_FROM] == [cfg.WRONG_VALUE]
    for bad in (["only"], ["a", "a"], ["a", " b"]):
        with pytest.raises(ValueError):
            cfg.labeling_config(bad)


# --- parsing ---------------------------------------------------------------------------------

def ann(aid, label=None, *, task=7, user=1, wrong=False, cancelled=False, at=T0, extra=None):
    result = []
    if label is not None:
        result.append({"from_name": cfg.CLASS_FROM, "to_name": cfg.IMAGE, "type": "choices", "value": {"choices": [label]}})
    if wrong:
        result.append({"from_name": cfg.WRONG_FROM, "to_name": cfg.HEATMAP, "type": "choices", "value": {"choices": [cfg.WRONG_VALUE]}})
    return {"id": aid, "task": task, "project": 3, "completed_by": user, "result": result + (extra or []),
            "was_cancelled": cancelled, "updated_at": at.isoformat().replace("+00:00", "Z")}


def task(tid=7, item=42, rnd=2):
    return {"id": tid, "project": 3, "data": {cfg.ITEM_ID: item, cfg.ROUND: rnd, cfg.IMAGE: "u"}}


def test_parse_annotation_cases():
    e = parse_annotation(ann(1, "dog", wrong=True), task(), CLASSES)
    assert (e.annotation_id, e.ls_task_id, e.item_id, e.annotator, e.label, e.wrong_region, e.skipped, e.problem, e.round) == \
        (1, 7, 42, 1, "dog", True, False, None, 2)
    assert e.counts and e.updated_at == T0
    skip = parse_annotation(ann(2, cancelled=True), task(), CLASSES)
    assert skip.skipped and not skip.counts and skip.problem is None and skip.label is None
    zebra = parse_annotation(ann(3, "zebra"), task(), CLASSES)
    assert zebra.label is None and "'zebra' is not in the project" in zebra.problem and not zebra.counts
    empty = parse_annotation(ann(4), task(), CLASSES)
    assert empty.problem == "no class chosen"
    with pytest.raises(AnnotationError, match="camloop_item_id"):
        parse_annotation(ann(5, "dog"), {"id": 7, "data": {}}, CLASSES)
    with pytest.raises(AnnotationError, match="not an integer"):
        parse_annotation(ann(5, "dog"), {"id": 7, "data": {cfg.ITEM_ID: "x"}}, CLASSES)


def body(action, **kw):
    return json.dumps({"action": action, **kw}).encode()


def test_webhook_payloads_and_errors():
    action, evs = parse_payload(body("ANNOTATION_CREATED", annotation=ann(1, "cat"), task=task(), project={"id": 3}), CLASSES)
    assert action == "ANNOTATION_CREATED" and evs[0].label == "cat"
    _, evs = parse_payload(body("ANNOTATIONS_DELETED", annotations=[{"id": 1}, {"id": 9}], project={"id": 3}), CLASSES)
    assert evs == [AnnotationDeleted(1), AnnotationDeleted(9)]
    assert parse_payload(body("PROJECT_UPDATED", project={"id": 3}), CLASSES) == ("PROJECT_UPDATED", [])
    _, evs = parse_payload(body("ANNOTATION_UPDATED", annotation=ann(1, "cat"), task=task(), project={"id": 3}),
                           lambda pid: CLASSES if pid == 3 else None)
    assert evs[0].label == "cat"
    cases = [
        (b"{not json", 400, "malformed JSON"),
        (b"[1]", 400, "action"),
        (body("ANNOTATION_CREATED", annotation=ann(1, "cat")), 400, "send_payload"),
        (body("ANNOTATIONS_DELETED", annotations=[{"x": 1}]), 400, "integer id"),
        (body("ANNOTATION_CREATED", annotation=ann(1, "cat"), task={"id": 7, "data": {}}), 422, "camloop_item_id"),
    ]
    for raw, status, msg in cases:
        with pytest.raises(WebhookError, match=msg) as ei:
            parse_payload(raw, CLASSES)
        assert ei.value.status == status
    with pytest.raises(WebhookError, match="not connected") as ei:
        parse_payload(body("ANNOTATION_CREATED", annotation=ann(1, "cat"), task=task(), project={"id": 99}),
                      lambda pid: CLASSES if pid == 3 else None)
    assert ei.value.status == 404


def test_secret_header_checks():
    check_secret({SECRET_HEADER.lower(): "s3cret"}, "s3cret")
    for headers, status in (({}, 401), ({SECRET_HEADER: "nope"}, 403), ({SECRET_HEADER: ""}, 403)):
        with pytest.raises(WebhookError) as ei:
            check_secret(headers, "s3cret")
        assert ei.value.status == status
    with pytest.raises(WebhookError) as ei:
        check_secret({SECRET_HEADER: ""}, "")
    assert ei.value.status == 503  # an unset secret never means "accept anything"


def test_each_label_studio_project_has_its_own_webhook_secret():
    import hashlib
    import hmac

    key = webhook_key(b"server-signing-key", "s3cret")
    assert key == hmac.new(b"server-signing-key", b"camloop-label-studio-webhook\ns3cret", hashlib.sha256).digest()
    a, b = project_secret(key, 1), project_secret(key, 2)
    assert a == hmac.new(key, b"ls-project:1", hashlib.sha256).hexdigest() and len(a) == 64 and a != b
    # Neither the configured secret nor the signing key alone gives them.
    assert project_secret(webhook_key(b"other-key", "s3cret"), 1) != a
    assert project_secret(webhook_key(b"server-signing-key", "rotated"), 1) != a
    check_project_secret({SECRET_HEADER.lower(): a}, "s3cret", key, 1)
    for headers, pid, status in (({}, 1, 401), ({SECRET_HEADER: b}, 1, 403), ({SECRET_HEADER: a}, 2, 403),
                                 ({SECRET_HEADER: "s3cret"}, 1, 403), ({SECRET_HEADER: a[:-1]}, 1, 403),
                                 ({SECRET_HEADER: a}, None, 403)):
        with pytest.raises(WebhookError) as ei:
            check_project_secret(headers, "s3cret", key, pid)
        assert ei.value.status == status, (headers, pid)
        assert "s3cret" not in ei.value.message and a not in ei.value.message
    # A body naming no project (nothing it could change) is checked against the configured secret.
    check_project_secret({SECRET_HEADER: "s3cret"}, "s3cret", key, None)
    with pytest.raises(WebhookError) as ei:
        check_project_secret({SECRET_HEADER: a}, "", key, 1)
    assert ei.value.status == 503


# --- idempotent apply ------------------------------------------------------------------------

def ev(aid, label="cat", *, item=42, user=1, at=T0, skipped=False, wrong=False, problem=None):
    return AnnotationUpserted(aid, 7, 3, item, user, None if (skipped or problem) else label, wrong, skipped, problem, at, 1)


def test_apply_is_idempotent_update_replaces_delete_removes():
    sink = MemorySink()
    r = apply_events(sink, [ev(1), ev(1), ev(2, "dog", user=2)])
    assert (r.created, r.unchanged) == (2, 1)
    r = apply_events(sink, [ev(1, at=T0 + timedelta(seconds=5))])  # replay with a newer timestamp only
    assert r.unchanged == 1
    r = apply_events(sink, [ev(1, "bird", at=T0 + timedelta(seconds=9))])
    assert r.updated == 1 and sink.get(1).label == "bird"
    r = apply_events(sink, [ev(1, "cat", at=T0)])  # a stale webhook arriving after the poll saw the edit
    assert r.unchanged == 1 and sink.get(1).label == "bird"
    r = apply_events(sink, [AnnotationDeleted(2), AnnotationDeleted(2), AnnotationDeleted(77)])
    assert r.deleted == 1 and set(sink.rows) == {1} and r.changed_items == {42}
    r = apply_events(sink, [ev(5, problem="class 'zebra' is not in the project")])
    assert r.created == 1 and "zebra" in r.problems[0]


# --- resolution ------------------------------------------------------------------------------

def test_resolution_majority_tie_skip_and_pending():
    r = resolve_item(1, [ev(1, "cat", user=1), ev(2, "cat", user=2), ev(3, "dog", user=3)], required=3)
    assert (r.label, r.status, r.needs_review, r.complete, r.votes) == ("cat", "majority", True, True, {"cat": 2, "dog": 1})
    r = resolve_item(1, [ev(1, "cat", user=1), ev(2, "dog", user=2), ev(3, "bird", user=3)], required=3)
    assert (r.label, r.status, r.needs_review) == (None, "tie", True)
    r = resolve_item(1, [ev(1, "cat", user=1), ev(2, "cat", user=2), ev(3, skipped=True, user=3)], required=3)
    assert (r.label, r.status, r.needs_review, r.skips, r.complete) == ("cat", "agreed", False, 1, True)
    r = resolve_item(1, [ev(1, "cat", user=1)], required=3)
    assert (r.label, r.complete) == ("cat", False)
    assert resolve_item(1, [], required=1).status == "pending"
    assert resolve_item(1, [ev(1, skipped=True)]).status == "skipped"
    r = resolve_item(1, [ev(1, problem="x")])
    assert (r.status, r.needs_review, r.label) == ("unusable", True, None)
    # an annotator who answers twice votes once, with their latest answer
    r = resolve_item(1, [ev(1, "dog", user=1, at=T0), ev(2, "cat", user=1, at=T0 + timedelta(1)), ev(3, "cat", user=2)])
    assert (r.status, r.votes) == ("agreed", {"cat": 2})
    r = resolve_item(1, [ev(1, "cat", user=1, wrong=True), ev(2, "cat", user=2, wrong=True), ev(3, "cat", user=3)])
    assert r.wrong_region and r.wrong_region_votes == 2


# --- agreement -------------------------------------------------------------------------------

def test_fleiss_kappa_matches_the_wikipedia_worked_example():
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa = 0.210
    rows = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    counts = [{str(j): v for j, v in enumerate(r) if v} for r in rows]
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)


def test_cohen_kappa_matches_sklearn():
    a = ["cat", "dog", "cat", "bird", "dog", "cat", "bird", "bird"]
    b = ["cat", "dog", "dog", "bird", "dog", "cat", "cat", "bird"]
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    assert cohen_kappa(["cat", "cat"], ["cat", "cat"]) is None  # undefined, not a perfect 1 or a 0


def test_agreement_report_per_class():
    by_item = {
        1: [ev(1, "cat", user=1), ev(2, "cat", user=2), ev(3, "cat", user=3, wrong=True)],
        2: [ev(4, "dog", user=1), ev(5, "dog", user=2), ev(6, "cat", user=3)],
        3: [ev(7, "dog", user=1), ev(8, "bird", user=2), ev(9, "cat", user=3)],
        4: [ev(10, "bird", user=1)],   # single vote: no overlap, but counts for the wrong-region rate
    }
    by_item = {i: [AnnotationUpserted(**{**a.__dict__, "item_id": i}) for a in v] for i, v in by_item.items()}
    rep = agreement_report(by_item, CLASSES)
    assert rep["items"] == 4 and rep["items_with_overlap"] == 3
    # observed agreement per item: 1, 1/3, 0 → mean 4/9
    assert rep["percent_agreement"] == pytest.approx(4 / 9)
    counts = [{"cat": 3}, {"dog": 2, "cat": 1}, {"dog": 1, "bird": 1, "cat": 1}]
    assert rep["fleiss_kappa"] == pytest.approx(fleiss_kappa(counts))
    # cat: pairs agreeing Σ n(n-1) = 6 + 0 + 0, pairs involving a cat vote Σ n(N-1) = 6 + 2 + 2
    assert rep["per_class"]["cat"]["percent_agreement"] == pytest.approx(6 / 10)
    assert rep["per_class"]["dog"]["percent_agreement"] == pytest.approx(2 / 6)
    assert rep["per_class"]["bird"]["percent_agreement"] == pytest.approx(0.0)
    assert rep["per_class"]["cat"]["wrong_region_rate"] == pytest.approx(1 / 5)
    assert rep["per_class"]["bird"]["votes"] == 2
    # per-class kappa: with 2 categories it equals the overall Fleiss kappa
    two = {1: [ev(1, "cat", user=1), ev(2, "cat", user=2)], 2: [ev(3, "dog", user=1), ev(4, "cat", user=2)],
           3: [ev(5, "dog", user=1), ev(6, "dog", user=2)]}
    two = {i: [AnnotationUpserted(**{**a.__dict__, "item_id": i}) for a in v] for i, v in two.items()}
    r2 = agreement_report(two, ["cat", "dog"])
    assert r2["per_class"]["cat"]["kappa"] == pytest.approx(r2["fleiss_kappa"])
    assert r2["per_class"]["dog"]["kappa"] == pytest.approx(r2["fleiss_kappa"])
    assert r2["pairs"][0]["kappa"] == pytest.approx(cohen_kappa_score(["cat", "dog", "dog"], ["cat", "cat", "dog"]))


# --- what the expert sees ----------------------------------------------------------------------

def test_the_header_says_the_guess_and_its_probability_and_nothing_internal():
    from service.labelstudio.client import BatchItem, guess_text, task_payload

    assert guess_text("Shirt", 0.6234) == "Shirt, 62 %"
    assert guess_text("Shirt", 1.0) == "Shirt, 100 %" and guess_text("Shirt", None) == "Shirt"
    assert "no model" in guess_text(None, None)
    task = task_payload(BatchItem(7, "http://i", "http://h", "Shirt", 0.62), round_no=3, rank=0)
    assert task["data"][cfg.GUESS] == "Shirt, 62 %" and "round" not in task["data"][cfg.GUESS]
    (pred,) = task["predictions"]
    # Label Studio sorts and filters by the score: the real probability; one version for all rounds.
    assert pred["score"] == 0.62 and pred["model_version"] == cfg.MODEL_VERSION
    unscored = task_payload(BatchItem(7, "http://i", "http://h", "Shirt", None), round_no=3, rank=0)
    assert "score" not in unscored["predictions"][0]  # not a made-up 0.0
    with pytest.raises(ValueError, match="probability"):
        cfg.prediction("Shirt", 1.7, cfg.MODEL_VERSION)


def test_both_pictures_are_shown_at_their_own_size_without_smoothing():
    xml = cfg.labeling_config(CLASSES)
    for name in (cfg.IMAGE, cfg.HEATMAP):
        tag = next(line for line in xml.splitlines() if f'<Image name="{name}"' in line)
        assert 'defaultZoom="original"' in tag and 'smoothing="false"' in tag, tag


def test_cors_origins_are_origins_and_default_to_label_studios():
    assert Settings(label_studio_url="http://127.0.0.1:8080").cors_origins_effective == {
        "http://127.0.0.1:8080", "http://localhost:8080"}
    assert Settings(label_studio_url="https://LS.example.com:443/sub/").cors_origins_effective == {
        "https://ls.example.com"}
    assert Settings().cors_origins_effective == frozenset()  # no Label Studio: nobody
    s = Settings(label_studio_url="http://label-studio:8080", cors_origins=" http://localhost:8080/,https://a.b:9 ")
    assert s.cors_origins_effective == {"http://localhost:8080", "https://a.b:9"}
    for bad in ("*", "localhost:8080", "ftp://a.b", "http://a.b/path", "http://user@a.b", "http://a.b:99999"):
        with pytest.raises(ValueError, match="not an origin"):
            Settings(cors_origins=bad)


def test_an_announcement_is_one_marked_block_beside_the_engineers_instructions():
    from service.labelstudio.announce import preparing_text, with_note

    text = preparing_text(2, 350, 170)
    assert text == ("Batch 2 is being prepared: the model is retraining on 350 labels; "
                    "the next images arrive in about 3 minutes. Reload this page then.")
    assert "less than a minute" in preparing_text(3, 10, 20) and "shortly" in preparing_text(3, 10)
    mine = "<p>Label the digit, not the background.</p>"
    once = with_note(mine, text)
    assert once.endswith(mine) and text in once
    assert with_note(once, text) == once  # the same note again changes nothing
    other = with_note(once, "Batch 3 <soon> & more")
    assert text not in other and "Batch 3 &lt;soon&gt; &amp; more" in other and other.endswith(mine)
    assert with_note(other, None) == mine and with_note(with_note("", text), "") == ""


def test_what_the_experts_are_told_for_each_state_of_a_round():
    from service.labelstudio.announce import note_for_state, preparing_text
    from service.labelstudio.plugin import LabelStudioPlugin

    assert note_for_state(2, "training", labels=350, eta_s=170) == preparing_text(2, 350, 170)
    assert "Batch 3 is being prepared" in note_for_state(3, "created")
    assert "could not be prepared" in note_for_state(2, "failed") and "saved" in note_for_state(2, "failed")
    assert note_for_state(2, "closed") is False      # the batch is done: the note goes
    assert note_for_state(2, "labeling") is None     # the push clears it once the batch is in
    LabelStudioPlugin(Settings()).announce_round_state(1, 2, "training", labels=5)  # no Label Studio: nothing, no error
