"""The project page (issue 22): the renderer (service.core.page) from a metrics dict with and
without the control slice and the audit, and the route: a key (a dashboard key is enough), a
signed link scoped to the project and expiring, nothing else."""
from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

from service.core import page
from service.core.signing import UrlSigner
from tests.conftest import DASHBOARD_KEY
from tests.test_api import new_project, register

CLASSES = ["cat", "dog", "<owl>"]


def _pc(acc, support=20, status="active"):
    return {"accuracy": acc, "precision": acc, "recall": acc, "f1": acc, "support": support, "labeled": 30,
            "status": status, "reason": None, "evidence": {"correct": round(acc * support), "total": support}}


def metrics(control: bool = False, audit: bool = False, state: str = "closed") -> dict:
    history = [{"round": r, "model_version_id": r, "labeled": 100 * r, "trained_on": 90 * r, "evaluated_on": "val",
                "accuracy": 0.5 + 0.1 * r, "macro_f1": 0.45 + 0.1 * r, "weighted_f1": None,
                "evidence_accuracy": 0.5 + 0.1 * r, "active": CLASSES,
                "per_class": {"cat": 0.4 + 0.15 * r, "dog": 0.6 + 0.1 * r, "<owl>": 0.2}} for r in (1, 2, 3)]
    m = {"project_id": 7, "round": 3, "round_state": state, "evaluated_on": "val",
         "evidence": {"source": "val", "n": 60, "note": "measured on 60 validation images"},
         "model_version_id": 3, "accuracy": 0.8, "macro_f1": 0.75, "weighted_f1": 0.78,
         "confusion": [[18, 2, 0], [1, 19, 0], [6, 10, 4]], "ece": 0.05, "labeled": 300, "skipped": 2,
         "per_class": {"cat": _pc(0.85), "dog": _pc(0.9), "<owl>": _pc(0.2, status="excluded")},
         "history": history,
         "stopping": {"kappa": 0.97, "kappas": [], "kappa_threshold": 0.99, "window": 3, "stop_set_size": 200,
                      "predictions_stable": False, "accuracy_plateaued": False, "labels": 300, "max_labels": None,
                      "budget_spent": False, "suggest_stop": False, "reason": "kappa 0.97 < 0.99",
                      "stop_when_stable": False, "stopped_after_round": None},
         "calibration": None, "label_issues": None, "experts": None}
    if control:
        est = {"n": 30, "correct": 21, "accuracy": 0.7, "low": 0.52, "high": 0.83}
        pcs = {"cat": {"n": 10, "correct": 8, "accuracy": 0.8, "low": 0.49, "high": 0.94},
               "dog": {"n": 12, "correct": 11, "accuracy": 0.917, "low": 0.65, "high": 0.99},
               "<owl>": {"n": 8, "correct": 2, "accuracy": 0.25, "low": 0.07, "high": 0.59}}
        rounds = [{"round": r, "model_version_id": r - 1 or None, **est, "per_class": pcs} for r in (2, 3)]
        m["control"] = {"share": 0.1, "rounds": rounds, "pooled": {**est, "n": 60, "correct": 42, "rounds": [2, 3],
                                                                     "per_class": pcs}}
        for h in history[1:]:
            h.update(control_accuracy=0.7, control_low=0.52, control_high=0.83, control_n=30)
    if audit:
        m["audit"] = {"labels_now": 300, "random_labels": 160,
                      "accuracy_now": {"value": 0.72, "low": 0.6, "high": 0.82, "on": "control"},
                      "random_curve": [{"labels": 100, "accuracy": 0.55, "low": 0.45, "high": 0.64},
                                       {"labels": 200, "accuracy": 0.62, "low": 0.53, "high": 0.7},
                                       {"labels": 300, "accuracy": 0.66, "low": 0.58, "high": 0.73}],
                      "random_would_need": {"labels": 420, "low": 340, "high": 560},
                      "labels_saved": {"labels": 120, "low": 40, "high": 260},
                      "verdict": "paying_off", "advice": "Keep going: <b>active learning</b> is ahead.",
                      "reset_at_round": None}
    return m


class _Check(HTMLParser):
    """Well-formed enough: tags balanced (void elements aside), no script, no style attribute."""
    VOID = {"meta", "img", "br", "input", "link", "hr", "line", "rect", "circle", "polyline", "polygon", "path"}

    def __init__(self):
        super().__init__()
        self.stack, self.problems, self.imgs = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" or "style" in a or any(k.startswith("on") for k in a):
            self.problems.append(f"<{tag}> {a}")
        if tag == "img":
            self.imgs.append(a.get("src"))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        if tag == "img":
            self.imgs.append(dict(attrs).get("src"))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(text: str) -> _Check:
    p = _Check()
    p.feed(text)
    assert not p.problems and not p.stack, (p.problems, p.stack)
    return p


def test_the_page_without_control_or_audit_says_not_yet_and_does_not_reload_when_idle():
    batch = [page.BatchImage(item_id=5, rank=0, predicted="cat", label="dog", status="labeled",
                             image_url="../../signed/files/a.png?exp=1&sig=x", heatmap_url="../../signed/heatmaps/7/5.png"),
             page.BatchImage(item_id=6, rank=1, predicted="dog", label=None, status="queued", image_url="b.png")]
    html = page.render(page.PageInput(title="camloop · <p>", metrics=metrics(), batch=batch,
                                      queue=page.QueueProgress(3, "labeling", 12, 5, 4, 3, "labeling"),
                                      refresh_s=None))
    p = _parse(html)
    assert "&lt;p&gt;" in html and "<p>" in html and "&lt;owl&gt;" in html  # names are escaped
    assert 'http-equiv="refresh"' not in html
    assert 'id="audit-none"' in html and 'id="control-none"' in html and "not yet" in html
    assert re.search(r'id="accuracy">0\.800<', html) and re.search(r'id="labeled">300<', html)
    assert html.count("<svg") == 3  # learning curve, per class, confusion
    assert 'id="queue-answered">5<' in html and 'id="queue-batch">12<' in html
    assert p.imgs == ["../../signed/heatmaps/7/5.png", "b.png"]  # the overlay when there is one
    assert "✗" in html and "not yet" in html
    assert "excluded" in html
    assert "sha256-" in page.CSP and "script-src" not in page.CSP and "'unsafe-inline'" not in page.CSP


def test_the_page_with_control_and_audit_draws_the_random_curve_and_the_verdict():
    m = metrics(control=True, audit=True, state="training")
    html = page.render(page.PageInput(title="t", metrics=m, refresh_s=page.REFRESH_S if page.running(m) else None))
    _parse(html)
    assert f'http-equiv="refresh" content="{page.REFRESH_S}"' in html
    assert 'id="audit-verdict">paying off<' in html
    assert "Keep going: &lt;b&gt;active learning&lt;/b&gt; is ahead." in html  # advice is text
    assert "420 labels (340–560)" in html and "120 (40–260)" in html
    assert "random picking (audit)" in html and "control slice, 95 % interval" in html
    assert 'id="control-pooled"' in html and "0.700</b> (0.520–0.830) on 60 control images" in html
    # the per-class table carries the control's per-round intervals
    assert "control 0.80 (0.49–0.94)" in html
    assert html.count('stroke-dasharray="6 4"') >= 2  # the random curve and its legend
    assert "not yet" not in html.split('id="does-active-learning-pay-off-here"')[1].split("</section>")[0]


def test_running_states_refresh_and_idle_ones_do_not():
    assert page.running({"round_state": "labeling"}) and page.running({"round_state": "training"})
    assert not page.running({"round_state": "closed"}) and not page.running({"round_state": None})
    assert not page.running({"round_state": "failed"})


def test_an_empty_project_renders():
    m = {"project_id": 1, "round": None, "round_state": None, "evaluated_on": None, "evidence": None,
         "model_version_id": None, "accuracy": None, "macro_f1": None, "weighted_f1": None, "confusion": None,
         "ece": None, "labeled": 0, "skipped": 0, "per_class": {"a": {"accuracy": None, "support": None,
                                                                       "labeled": 0, "status": "active"}},
         "history": [], "stopping": None}
    html = page.render(page.PageInput(title="empty", metrics=m))
    _parse(html)
    assert "No trained model yet" in html and "No confusion matrix yet" in html and "No batch queued yet" in html


# ------------------------------------------------------------------------------------ the route

def test_the_page_route_takes_a_dashboard_key_or_a_signed_link_and_nothing_else(api):
    c, settings = api
    pid = new_project(c)
    other = new_project(c, "other")
    url = f"/api/v1/projects/{pid}/page"
    dash = {"Authorization": f"Bearer {DASHBOARD_KEY}"}
    r = c.get(url, headers=dash)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "style-src 'sha256-" in r.headers["content-security-policy"]
    # the cached answer (service.api.cache.FastPolls): the same bytes and headers
    again = c.get(url, headers=dash)
    assert again.content == r.content and again.headers["content-security-policy"] == r.headers[
        "content-security-policy"] and again.headers["content-type"] == r.headers["content-type"]
    assert c.get(url, headers={"Authorization": ""}).status_code == 401
    assert c.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    # A dashboard key cannot mint a link; an engineer can.
    assert c.post(f"{url}/link", headers=dash).status_code == 403
    link = c.post(f"{url}/link", params={"ttl_s": 600}).json()
    parts = urlsplit(link["url"])
    assert parts.path == url and link["expires_at"]
    assert c.get(f"{parts.path}?{parts.query}", headers={"Authorization": ""}).status_code == 200
    # scoped to its project: the same signature does not open another project's page
    assert c.get(f"/api/v1/projects/{other}/page?{parts.query}", headers={"Authorization": ""}).status_code == 403
    # altered, or expired
    bad = parts.query.replace("sig=", "sig=0")
    assert c.get(f"{url}?{bad}", headers={"Authorization": ""}).status_code == 403
    signer = UrlSigner.from_settings(settings)
    old = urlsplit(signer.sign(url, now=time.time() - 7200, ttl_s=60))
    r = c.get(f"{url}?{old.query}", headers={"Authorization": ""})
    assert r.status_code == 403 and "expired" in r.json()["detail"]
    # a signed image URL is not a page link
    img = urlsplit(signer.sign("/api/v1/signed/files/pool/00000.png"))
    assert c.get(f"{url}?{img.query}", headers={"Authorization": ""}).status_code == 403
    assert c.post(f"/api/v1/projects/999999/page/link").status_code == 404
    assert c.post(f"{url}/link", params={"ttl_s": 10}).status_code == 422


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_page_of_a_trained_round_shows_what_get_metrics_says_and_its_batch(api):
    from tests.conftest import label_queue, round_reaches

    c, settings = api
    pid = new_project(c)
    truth = register(c, settings, pid, pool=40, val=20, seed_labels=20)
    assert c.post(f"/api/v1/projects/{pid}/rounds").status_code == 202
    round_reaches(c, settings, pid, 1, "labeling")
    dash = {"Authorization": f"Bearer {DASHBOARD_KEY}"}
    html = c.get(f"/api/v1/projects/{pid}/page", headers=dash).text
    m = c.get(f"/api/v1/projects/{pid}/metrics", headers=dash).json()
    assert f'id="accuracy">{m["accuracy"]:.3f}<' in html and f'id="labeled">{m["labeled"]}<' in html
    assert f'http-equiv="refresh" content="{page.REFRESH_S}"' in html  # labeling: it reloads
    imgs = _parse(html).imgs
    assert imgs and all(s.startswith("../../signed/heatmaps/") for s in imgs)
    for src in imgs[:3]:  # the relative URLs resolve to the signed heatmaps, which answer without a key
        r = c.get(urljoin(f"http://testserver/api/v1/projects/{pid}/page", src), headers={"Authorization": ""})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", src
    label_queue(c, pid, truth)
    assert c.post(f"/api/v1/projects/{pid}/rounds", json={"train_only": True}).status_code == 202  # a write: cache dropped
    html = c.get(f"/api/v1/projects/{pid}/page", headers=dash).text
    assert 'id="round">2<' in html


def test_camloop_project_page_prints_a_link_that_opens_the_page(api, monkeypatch, capsys):
    from typer.testing import CliRunner

    from service.cli import app
    from service.cli import client as cli_client
    from tests.conftest import ENGINEER_KEY

    c, _settings = api
    pid = new_project(c)

    class Through:  # the CLI's HTTP client, sent to the in-process app
        def __init__(self, *a, base_url, headers, **kw):
            self.base, self.headers = base_url, headers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def post(self, path, params=None):
            return c.post(urlsplit(self.base).path + path, params=params, headers=self.headers)

    monkeypatch.setattr(cli_client.httpx, "Client", Through)
    out = CliRunner().invoke(app, ["project", "page", str(pid), "--days", "1", "--key", ENGINEER_KEY,
                                   "--url", "http://testserver"])
    assert out.exit_code == 0, out.output
    link = urlsplit(out.output.strip().splitlines()[-1])
    assert link.path == f"/api/v1/projects/{pid}/page"
    assert c.get(f"{link.path}?{link.query}", headers={"Authorization": ""}).status_code == 200


def test_the_route_draws_control_and_audit_when_the_metrics_have_them(api, monkeypatch):
    """Once GET metrics carries "control" and "audit" (issue 22's other parts), the page shows
    them: the route hands the metrics dict to the renderer as it is."""
    from service.api.routers import page as page_route

    c, _settings = api
    pid = new_project(c)
    monkeypatch.setattr(page_route, "metrics_dict", lambda settings, p: {**metrics(control=True, audit=True),
                                                                         "project_id": p})
    html = c.get(f"/api/v1/projects/{pid}/page").text
    assert 'id="audit-verdict">paying off<' in html and 'id="control-pooled"' in html
    assert "random would need 420 (340–560)" in html


def test_open_ends_of_the_audit_read_as_words_not_none():
    from service.core.page import _labels_range

    assert _labels_range({"labels": 420, "low": 340, "high": 560}, "labels") == "420 labels (340–560)"
    assert _labels_range({"labels": None, "low": 54, "high": None}, "labels") == \
        "more than the random curve reaches (at least 54, no upper bound)"
    assert _labels_range({"labels": None, "low": -646, "high": None}, "", "not known") == \
        "not known (at least -646, no upper bound)"
    assert "None" not in _labels_range({"labels": None, "low": None, "high": None}, "labels")


def test_an_unbounded_random_would_need_draws_to_the_edge_and_says_or_more():
    """The demo of 2026-12-07 crashed drawing its report: random_would_need had high = null (some
    bootstrap refits never reach the current accuracy) and the curve tried float(None)."""
    m = metrics(control=True, audit=True)
    m["audit"].update(random_would_need={"labels": 420, "low": 340, "high": None},
                      labels_saved={"labels": 120, "low": 40, "high": None}, verdict="not_paying_off")
    html = page.render(page.PageInput(title="t", metrics=m, refresh_s=None))
    _parse(html)
    assert "random would need 420 (340 or more)" in html and "None" not in html
