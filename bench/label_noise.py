"""Wrong labels found and fixed (issue 23): simulated experts who err, with and without second opinions.

One run = `workers.simulate.run_simulation` (what `camloop simulate` runs) with a named setting:

  clean                 perfect experts, no second opinions (the accuracy to be within 1 point of)
  <kind>-off            --oracle-noise N --noise-kind <kind>, no detection
  <kind>-detect         the same noise, relabel on (cleanlab on out-of-fold probabilities, second
                        opinions from an independent simulated expert with the same noise)

    python bench/label_noise.py run --dataset fashion-mnist --setting uniform-detect --seed 0 --out-dir DIR
    python bench/label_noise.py summary DIR          # the table of docs/benchmarks.md, from DIR/*.json

Presets (`--dataset`): fashion-mnist (small CNN, pool 10,000, 500 initial + 500 a round, 4 rounds,
8 epochs) and fashion-colour (pretrained Lite0 at 96 px on the cached trunk, pool 5,000, 200 + 100
a round, 4 rounds, 10 epochs). `--config` adds project settings (e.g. '{"relabel": {"share": 0.15}}').

The summary, per dataset and setting (mean over seeds, each seed beside it):
  fixed ≤ 2 rounds   wrong labels made in a round r with r + 2 ≤ the last acquisition round, whose
                     label was right again by round r + 2 (the goal: ≥ 70 %)
  fixed by the end   every wrong label made, fixed by the last round
  extra labels       second opinions ÷ first answers (the goal: ≤ 15 %)
  broken             right labels a second opinion turned wrong
  asked wrong        second opinions that reached a wrong label, of all asked (summary.json)
  accuracy           the last (train-only) round's test accuracy; Δ clean = against the clean run of
                     the same seed (the goal: within 1 point), Δ off = against the same noise undetected
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

PRESETS = {
    "fashion-mnist": dict(dataset="fashion-mnist", model="small-cnn", pool_limit=10000, initial=500, budget=500,
                          rounds=4, epochs=8, val_limit=1000, test_limit=5000),
    "fashion-colour": dict(dataset="fashion-colour", model="efficientnet-lite0", image_size=96, channels=3,
                           frozen_blocks=7, pool_limit=5000, initial=200, budget=100, rounds=4, epochs=10,
                           val_limit=1000, test_limit=2000),
}


def setting_config(setting: str, noise: float) -> dict:
    if setting == "clean":
        return {"oracle_noise": 0.0}
    kind, mode = setting.rsplit("-", 1)
    if kind not in ("uniform", "confusable") or mode not in ("off", "detect"):
        raise SystemExit(f"unknown setting {setting!r}: clean, uniform-off, uniform-detect, confusable-off, "
                         "confusable-detect")
    return {"oracle_noise": noise, "noise_kind": kind, "relabel": {"enabled": mode == "detect"}}


def run(args) -> None:
    from engine.config import SimulationConfig, merge_config
    from workers.simulate import run_simulation

    cfg = merge_config({**PRESETS[args.dataset], "seed": args.seed, "threads": args.threads,
                        **({"trunk_cache_dir": args.trunk_cache_dir} if args.trunk_cache_dir else {})},
                       setting_config(args.setting, args.noise))
    cfg = merge_config(cfg, json.loads(args.config or "{}"))
    out = Path(args.out_dir) / f"{args.dataset}_{args.setting}{args.tag}_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run_simulation(SimulationConfig(**cfg), progress=lambda r: print(
        f"round {r['round']}: {r['labeled']} labels, accuracy {r['accuracy']:.4f}, "
        f"{r.get('label_noise', '')}", flush=True))
    result["bench"] = {"dataset": args.dataset, "setting": args.setting + args.tag, "seed": args.seed}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def fixed_within(result: dict, window: int = 2) -> tuple[int, int, int, int]:
    """(fixed within `window` rounds, wrong labels with that many checks, fixed by the end, wrong made)."""
    last_acq = max(r["round"] for r in result["rounds"] if "selected" in r)
    labels = (result.get("label_noise") or {}).get("labels") or []
    wrong = [x for x in labels if x["votes"][0] != x["truth"]]
    eligible = [x for x in wrong if x["made_round"] is not None and x["made_round"] + window <= last_acq]
    fixed = [x for x in eligible if x["fixed_round"] is not None and x["fixed_round"] <= x["made_round"] + window]
    return len(fixed), len(eligible), sum(x["fixed_round"] is not None for x in wrong), len(wrong)


def summarise(folder: Path) -> dict:
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "summary.json"]
    by = {}
    for r in runs:
        b = r["bench"]
        by.setdefault((b["dataset"], b["setting"]), {})[b["seed"]] = r
    table = {}
    for (ds, setting), seeds in sorted(by.items()):
        rows = {}
        for seed, r in sorted(seeds.items()):
            last = r["rounds"][-1]
            noise = last.get("label_noise") or {}
            first_answers = sum(len(x.get("selected", [])) for x in r["rounds"]) + len(r.get("initial_labels", []))
            fw, elig, fe, made = fixed_within(r)
            clean = by.get((ds, "clean"), {}).get(seed)
            # Against the same noise undetected: `<kind>-off` (a tagged detect run, e.g.
            # uniform-detect-share15, is compared with the untagged off run of its kind).
            off = by.get((ds, setting.split("-")[0] + "-off"), {}).get(seed) if "-detect" in setting else None
            rows[seed] = {"accuracy": last["accuracy"], "wrong_made": made,
                          "fixed_2_rounds": fw / elig if elig else None, "eligible_2_rounds": elig,
                          "fixed_by_end": fe / made if made else None,
                          "extra_labels": noise.get("second_opinions", 0) / first_answers if first_answers else 0.0,
                          "broken": noise.get("broken", 0), "wrong_share_end": noise.get("wrong_share"),
                          # second opinions that reached a wrong label (the ranking's precision)
                          "asked_wrong": (noise.get("found", 0) / noise["second_opinions"]
                                          if noise.get("second_opinions") else None),
                          "delta_clean": last["accuracy"] - clean["rounds"][-1]["accuracy"] if clean else None,
                          "delta_off": last["accuracy"] - off["rounds"][-1]["accuracy"] if off else None,
                          "ece": [(x.get("calibration") or {}).get("test") for x in r["rounds"]][-1]}
        mean = {}
        for k in ("accuracy", "fixed_2_rounds", "fixed_by_end", "extra_labels", "delta_clean", "delta_off",
                  "wrong_share_end", "asked_wrong"):
            vals = [v[k] for v in rows.values() if v[k] is not None]
            mean[k] = statistics.fmean(vals) if vals else None
        table[f"{ds} {setting}"] = {"seeds": rows, "mean": mean}
    return table


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--dataset", choices=sorted(PRESETS), required=True)
    r.add_argument("--setting", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--noise", type=float, default=0.1)
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--config", default=None)
    r.add_argument("--tag", default="", help="appended to the setting's name (variants of a setting)")
    r.add_argument("--trunk-cache-dir", default=None)
    r.add_argument("--out-dir", required=True)
    s = sub.add_parser("summary")
    s.add_argument("folder", type=Path)
    m = sub.add_parser("markdown", help="the table rows of docs/benchmarks.md from DIR/*.json")
    m.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "markdown":
        pct = lambda v: "—" if v is None else f"{100 * v:.1f} %"  # noqa: E731
        pts = lambda v: "—" if v is None else f"{100 * v:+.2f}"  # noqa: E731
        for name, row in summarise(args.folder).items():
            for seed, r in row["seeds"].items():
                print(f"| {name} | {seed} | {r['wrong_made']} | {pct(r['fixed_2_rounds'])} ({r['eligible_2_rounds']}) | "
                      f"{pct(r['fixed_by_end'])} | {pct(r['extra_labels'])} | {r['broken']} | "
                      f"{pct(r['wrong_share_end'])} | {r['accuracy']:.4f} | {pts(r['delta_clean'])} | "
                      f"{pts(r['delta_off'])} |")
        return
    if args.cmd == "run":
        run(args)
    else:
        table = summarise(args.folder)
        (args.folder / "summary.json").write_text(json.dumps(table, indent=1))
        for name, row in table.items():
            m = row["mean"]
            fmt = lambda v: "—" if v is None else f"{v:.4f}"  # noqa: E731
            print(f"{name:40s} acc {fmt(m['accuracy'])}  fixed≤2 {fmt(m['fixed_2_rounds'])}  "
                  f"fixed end {fmt(m['fixed_by_end'])}  extra {fmt(m['extra_labels'])}  "
                  f"Δclean {fmt(m['delta_clean'])}  Δoff {fmt(m['delta_off'])}  seeds {sorted(row['seeds'])}")


if __name__ == "__main__":
    sys.exit(main())
