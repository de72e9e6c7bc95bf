"""bench/label_efficiency.py: the config each run gets from the command line (no run trains here)."""
from __future__ import annotations


import pytest

from tests.bench_module import load_bench



def _bench():
    return load_bench("label_efficiency")


# The colour benchmark's model, where the trunk cache acts (a pretrained trunk with frozen blocks).
COLOUR = ["--model", "efficientnet-lite0", "--config", '{"image_size": 96, "channels": 3, "frozen_blocks": 7}']


@pytest.fixture(scope="module")
def bench():
    return _bench()


def test_trunk_cache_dir_reaches_every_run(bench, tmp_path):
    args = bench.parser().parse_args(["--dataset", "digits", "--trunk-cache-dir", str(tmp_path / "trunk")])
    for name in ("random", "hybrid", "hybrid-cam-excl"):
        for seed in (0, 1):
            assert bench.run_config(args, name, seed).trunk_cache_dir == str(tmp_path / "trunk")


def test_without_the_flag_each_run_keeps_its_own_cache_unless_config_names_one(bench, tmp_path):
    args = bench.parser().parse_args(["--dataset", "digits"])
    assert bench.run_config(args, "hybrid", 0).trunk_cache_dir is None
    # --config could already name it; the flag is the same setting, as in bench/shortcut_feedback.py.
    args = bench.parser().parse_args(["--dataset", "digits", "--config", f'{{"trunk_cache_dir": "{tmp_path}"}}'])
    assert bench.run_config(args, "hybrid", 0).trunk_cache_dir == str(tmp_path)


def test_a_run_file_made_with_another_cache_folder_is_reused(bench, tmp_path):
    """Where the cache lives changes no result: a cut-off benchmark resumed with another
    --trunk-cache-dir (or none) reuses its run files; another model setting is still refused."""
    made = bench.parser().parse_args([*COLOUR, "--trunk-cache-dir", str(tmp_path / "a")])
    stored = {"config": bench.run_config(made, "hybrid", 0).model_dump(mode="json"), "rounds": []}
    for again in (["--trunk-cache-dir", str(tmp_path / "b")], []):
        args = bench.parser().parse_args([*COLOUR, *again])
        assert bench._checked(stored, args, tmp_path / "hybrid_seed0.json") is stored
    other = bench.parser().parse_args([*COLOUR[:3], COLOUR[3].replace('"frozen_blocks": 7', '"frozen_blocks": 6')])
    with pytest.raises(SystemExit, match="frozen_blocks"):
        bench._checked(stored, other, tmp_path / "hybrid_seed0.json")


def test_exclusion_is_on_only_in_the_variant_that_asks_for_it(bench):
    args = bench.parser().parse_args(["--dataset", "digits", "--exclude-after", "2"])
    on = bench.run_config(args, "hybrid-cam-excl", 0).exclusion
    off = bench.run_config(args, "hybrid-cam", 0).exclusion
    assert on.enabled and not off.enabled
    assert on.rule == off.rule == "threshold" and on.exclude_after == off.exclude_after == 2


def test_config_may_name_the_model_a_flag_also_sets(bench):
    """--config '{"model": …}' used to raise "multiple values for keyword argument 'model'"."""
    args = bench.parser().parse_args(["--dataset", "digits", "--config", '{"model": "efficientnet-lite0", '
                                      '"image_size": 96, "channels": 3, "frozen_blocks": 7}'])
    assert bench.run_config(args, "hybrid", 0).model == "efficientnet-lite0"
    assert bench.run_config(bench.parser().parse_args(["--dataset", "digits"]), "hybrid", 0).model == "small-cnn"


def test_reference_trains_with_the_runs_settings_and_all_is_the_whole_pool(bench, tmp_path, monkeypatch):
    """--reference used to ignore --config (other epochs, augmentation, model than the runs it is
    read beside), and 'all' asked for more initial labels than SimulationConfig allows."""
    import workers.simulate

    seen = []

    def fake_run(cfg, **_):  # the configs the reference would train with; no training here
        seen.append(cfg)
        return {"rounds": [{"labeled": 5, "accuracy": 0.5, "macro_f1": 0.4, "per_class": {}}],
                "config": {"test_size": 1, "pool_size": 2}}

    monkeypatch.setattr(workers.simulate, "run_simulation", fake_run)
    args = bench.parser().parse_args(["--dataset", "digits", "--reference", "100,all", "--reference-epochs", "7",
                                      "--out-dir", str(tmp_path), "--config", '{"epochs": 3, "hflip": false}'])
    bench._reference(args)
    assert [(c.initial, c.epochs, c.hflip, c.rounds, c.strategy) for c in seen] == [
        (100, 3, False, 0, "random"), (10_000_000, 7, False, 0, "random")]


def test_the_dropquery_arms_ask_for_the_mode(bench):
    args = bench.parser().parse_args(["--dataset", "digits"])
    for name in ("hybrid-typical-dropquery", "margin-typical-dropquery"):
        sel = bench.run_config(args, name, 0).selection
        assert (sel.mode, sel.passes, sel.dropout) == ("dropquery", 3, 0.75)
    assert bench.run_config(args, "margin-typical", 0).selection.mode == "topk"


def test_compare_runs_per_seed_and_round(tmp_path):
    # bench/compare_runs.py: AULC and per-round differences of two arms' run files, seed by seed.
    import json

    compare = load_bench("compare_runs").compare
    for arm, accs in (("a", [0.4, 0.6, 0.7]), ("b", [0.4, 0.5, 0.72]), ("r", [0.4, 0.55, 0.71])):
        rounds = [{"labeled": n, "accuracy": x, "dropquery_candidates": 9 if arm == "a" else None}
                  for n, x in zip((50, 100, 150), accs)]
        (tmp_path / f"{arm}_seed0.json").write_text(json.dumps({"rounds": rounds, "wall_seconds": 10}))
    text = compare(str(tmp_path / "a_seed{}.json"), str(tmp_path / "b_seed{}.json"), [0, 1],
                   str(tmp_path / "r_seed{}.json"))
    # AULC a = (0.5 + 0.65) / 2 = 0.575, b = (0.45 + 0.61) / 2 = 0.53: +4.50 points.
    assert "| 0 | 0.5750 | 0.5300 | +4.50 | +10.00, -2.00 | 1 of 2 | 1 | 10 |" in text
    assert "seed 1: arm not run" in text and "- seed 0: 9, 9, 9" in text
