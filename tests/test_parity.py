"""One round, one engine: the service (camloop demo: the API, the embedded Redis, a real
`camloop worker`, the ground truth posted as labels over REST) and `camloop simulate` on the
demo's exported folder select the same images in every round and report the same accuracy.

Identity, not closeness, is what holds: both write the same manifests, run the same jobs and
decide with the same code; the worker and the simulation use one torch thread each (results
depend on the thread count). An exclusion rule that fires at round 2 is on, so the evidence,
the decision, the gatekeeper and the smaller head are compared too."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from rich.console import Console

from service.demo.run import DemoOptions, run_demo
from tests.worker_proc import REPO

pytestmark = pytest.mark.slow

# Every class fails this rule (accuracy < 1.0, gain < 1.0 over one round) from round 2 on; the
# five best stay (min_active): deterministic, whatever the models learned.
FIRES = {"exclusion": {"enabled": True, "rule": "threshold", "exclude_after": 2, "exclude_below": 1.0, "patience": 1, "min_gain": 1.0,
                       "min_active": 5}}
RUN = dict(rounds=3, initial=60, budget=30, epochs=5, seed=0)  # 5 epochs: models good enough to gate


@pytest.mark.parametrize("strategy", ["hybrid", "hybrid-cam"])
def test_service_and_simulate_select_the_same_images_and_report_the_same_accuracy(tmp_path, strategy):
    data = tmp_path / "demo"
    run_demo(DemoOptions(dataset="digits", pool=400, val=150, test=150, strategy=strategy, data_dir=data,
                         config=FIRES, threads=1, **RUN), Console(file=io.StringIO(), width=200))
    service = json.loads((data / "report" / "rounds.json").read_text())

    out = tmp_path / "sim.json"
    args = ["simulate", "--folder", str(data / "images" / "digits"), "--strategy", strategy, "--threads", "1",
            "--config", json.dumps(FIRES), "--out", str(out)] + [f"--{k}={v}" for k, v in RUN.items()]
    res = subprocess.run([sys.executable, "-c", "from service.cli import app; app()", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    sim = json.loads(out.read_text())

    assert [r["round"] for r in service] == [r["round"] for r in sim["rounds"]] == [1, 2, 3, 4]
    for a, b in zip(service, sim["rounds"]):
        assert a["labeled"] == b["labeled"], a["round"]
        assert a.get("selected", []) == b.get("selected", []), f"round {a['round']} picked other images"
        assert a.get("reserve", []) == b.get("reserve", []), f"round {a['round']} reserved other images"
        assert a["accuracy"] == b["accuracy_active"], a["round"]
        assert a["accuracy_all"] == pytest.approx(b["accuracy"], abs=1e-9), a["round"]
    assert [len(r.get("selected", [])) for r in service] == [30, 30, 30, 0]
    assert [len(r.get("reserve", [])) for r in service] == [15, 15, 15, 0]  # half the budget, by default
    # The rule fired at round 2 in both, on the same classes; round 3 trained without them.
    fired = {e["class"] for e in sim["exclusions"] if e["round"] == 2}
    assert len(fired) == 5 and set(service[1]["excluded_after"]) == fired == set(service[2]["excluded"])
    # The excluded classes' images stop reaching the queue (the gatekeeper: round 2's model, which
    # still knew them, keeps out what it recognises as theirs): half the pool is theirs, and the
    # uncertainty ranking would favour them (they fit no active class), yet the gate kept some out
    # in both rounds and under half of each batch is theirs (what the 5-epoch gatekeeper misread;
    # the misread ones stay unlabeled and uncertain, so round 3's share is not smaller than round
    # 2's: 0.23 then 0.30 with hybrid-cam). Paths are pool/<class>/<file>.
    kept_out = [r.get("kept_out_as_excluded", 0) for r in sim["rounds"][1:3]]
    assert all(k > 0 for k in kept_out), kept_out
    share = [sum(u.split("/")[1] in fired for u in r["selected"]) / len(r["selected"]) for r in service[:3]]
    assert share[1] < 0.5 and share[2] < 0.5, share
