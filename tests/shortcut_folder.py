"""`camloop simulate` on a tiny `sample-photos --shortcut` folder with the simulated expert's votes
and 2 counterexamples a flagged image (small CNN, 32 px, 20 + 10 + 10 labels): the run the
feedback tests read."""
from __future__ import annotations

import json

from typer.testing import CliRunner

runner = CliRunner()


def simulate_shortcut_folder(tmp_path, feedback: dict, extra: tuple[str, ...] = ()) -> dict:
    """The run's JSON; `feedback` is the config's feedback section, `extra` more options."""
    from service.cli import app

    folder = tmp_path / "photos"
    assert runner.invoke(app, ["sample-photos", str(folder), "--per-class", "8", "--side", "32",
                               "--shortcut"]).exit_code == 0
    out = tmp_path / "run.json"
    r = runner.invoke(app, ["simulate", "--folder", str(folder), "--model", "small-cnn", "--image-size", "32",
                            "--channels", "3", "--initial", "20", "--budget", "10", "--rounds", "2", "--epochs", "1",
                            "--mc-samples", "2", "--threads", "1", "--expert-votes", "--counterexamples", "2",
                            "--config", json.dumps({"pretrained": False, "frozen_blocks": 0, "first_batch": "random",
                                                    "feedback": feedback}),
                            *extra, "--out", str(out)])
    assert r.exit_code == 0, r.output
    return json.loads(out.read_text())
