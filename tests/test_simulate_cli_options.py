"""`camloop simulate` option plumbing and refusals (test_simulate_cli.py covers a full hybrid run).

Cheap on purpose: the runs use the random strategy (no pool scoring), digits, one epoch; the
refusals stop before any data is loaded or any model is trained.
"""
from __future__ import annotations

import json

from typer.testing import CliRunner

from service.cli import app
from tests.conftest import cli_text

runner = CliRunner()


def _simulate(*args: str):
    return runner.invoke(app, ["simulate", "--model", "small-cnn", *args])


def _run(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    res = _simulate("--dataset", "digits", "--strategy", "random", "--epochs", "1", "--seed", "3",
                    "--out", str(out), *args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads(out.read_text())


def test_ablation_flags_and_defaults_reach_the_loop(tmp_path):
    off = _run(tmp_path, "off", "--initial", "100", "--budget", "50", "--rounds", "1",
               "--duplicate-new", "1", "--no-exclusion")
    on = _run(tmp_path, "on", "--initial", "100", "--budget", "50", "--rounds", "0", "--exclusion")
    old = _run(tmp_path, "old", "--initial", "100", "--budget", "50", "--rounds", "0", "--exclusion",
               "--exclusion-rule", "threshold", "--exclude-below", "0.3")
    assert on["config"]["exclusion"]["rule"] == "evidence"
    assert (old["config"]["exclusion"]["rule"], old["config"]["exclusion"]["exclude_below"]) == ("threshold", 0.3)
    # --duplicate-new 1 means each new label enters training once, not zero times.
    assert (off["config"]["duplicate_new"], off["config"]["exclusion"]["enabled"]) == (1, False)
    assert (on["config"]["duplicate_new"], on["config"]["exclusion"]["enabled"]) == (2, True)
    assert [r["labeled"] for r in off["rounds"]] == [100, 150]
    assert [r["round"] for r in on["rounds"]] == [1]  # --rounds 0: the initial training only
    for r in off["rounds"]:
        pcs = r["per_class"].values()
        assert sum(pc["labeled"] for pc in pcs) == r["labeled"]
        assert sum(pc["support"] for pc in pcs) == off["config"]["test_size"]
        # Nothing can be excluded with --no-exclusion.
        assert all(pc["status"] == "active" for pc in pcs)
    # The seed alone draws the initial labels, so runs with one seed start from the same set.
    assert {c: pc["labeled"] for c, pc in off["rounds"][0]["per_class"].items()} == \
        {c: pc["labeled"] for c, pc in on["rounds"][0]["per_class"].items()}


def test_a_wrong_config_value_is_named(tmp_path):
    out = tmp_path / "x.json"
    res = _simulate("--dataset", "digits", "--channels", "2", "--out", str(out))
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "channels" in res.output
    assert not out.exists()
    res = _simulate("--dataset", "digits", "--exclusion-rule", "fancy", "--out", str(out))
    assert res.exit_code == 2 and "exclusion.rule" in res.output, res.output


def test_config_settings_of_a_section_left_off_are_refused(tmp_path):
    """--config's exclusion or relabel keys without `enabled`, the section off: refused naming
    the switch (they would not act), as --exclude-after without --exclusion is."""
    out = tmp_path / "x.json"
    for cfg, switch in (('{"exclusion": {"exclude_after": 2}}', "exclusion.enabled"),
                        ('{"relabel": {"share": 0.2}}', "relabel.enabled")):
        res = _simulate("--dataset", "digits", "--config", cfg, "--out", str(out))
        assert res.exit_code == 2 and switch in res.output and "--config" in res.output, res.output
    assert not out.exists()
    assert not out.exists()


def test_unknown_dataset_is_a_message_not_a_traceback(tmp_path):
    out = tmp_path / "x.json"
    res = _simulate("--dataset", "cifar-10", "--out", str(out))
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert "unknown data set" in res.output
    assert not out.exists()


def test_missing_compare_file_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x.json"
    res = _simulate("--dataset", "digits", "--out", str(out), "--plot", str(tmp_path / "c.png"),
                    "--compare", str(tmp_path / "absent.json"))
    assert res.exit_code == 2
    assert "does not exist" in cli_text(res.output)
    assert not out.exists() and not (tmp_path / "c.png").exists()


def test_zero_initial_labels_is_refused(tmp_path):
    res = _simulate("--dataset", "digits", "--initial", "0", "--out", str(tmp_path / "x.json"))
    assert res.exit_code == 2
    assert "initial" in res.output
