"""`camloop simulate` end to end on digits with the small CNN: the JSON of docs/design.md, a learning
curve above chance, and the --plot/--compare picture."""
import json

from typer.testing import CliRunner

from service.cli import app


def test_simulate_writes_design_json_and_plot(tmp_path):
    out, plot = tmp_path / "run.json", tmp_path / "curve.png"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"config": {"strategy": "random", "seed": 1},
                                 "rounds": [{"round": 0, "labeled": 100, "accuracy": 0.3},
                                            {"round": 1, "labeled": 200, "accuracy": 0.5}]}))
    res = CliRunner().invoke(app, [
        "simulate", "--dataset", "digits", "--strategy", "hybrid-cam", "--initial", "120", "--budget", "80",
        "--rounds", "2", "--seed", "0", "--epochs", "5", "--mc-samples", "4", "--out", str(out),
        "--plot", str(plot), "--compare", str(other),
    ])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["config"]["strategy"] == "hybrid-cam" and data["config"]["dataset"] == "digits"
    rounds = data["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["labeled"] for r in rounds] == [120, 200, 280]
    for r in rounds:
        assert {"round", "labeled", "accuracy", "macro_f1", "per_class"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["macro_f1"] <= 1.0
        assert set(r["per_class"]) == {str(d) for d in range(10)}
        for pc in r["per_class"].values():
            assert set(pc) >= {"accuracy", "support", "labeled", "status"}
            assert pc["status"] in ("active", "excluded")
        assert sum(pc["labeled"] for pc in r["per_class"].values()) == r["labeled"]
    assert rounds[-1]["accuracy"] > 0.3  # chance is 0.1 on 10 balanced classes
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "round" in res.output and "per class" in res.output


def test_simulate_rejects_unknown_strategy(tmp_path):
    res = CliRunner().invoke(app, ["simulate", "--strategy", "nope", "--out", str(tmp_path / "x.json")])
    assert res.exit_code != 0 and "unknown strategy" in res.output
    assert not (tmp_path / "x.json").exists()
