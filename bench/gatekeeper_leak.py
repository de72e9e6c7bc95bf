"""The gatekeeper's leak on the hopeless-class benchmark (issue 20), from the saved runs: no training.

After a class is excluded, the round's model no longer answers it (its head masks the class), so
the images of that class would be misread as active classes and, being uncertain, favoured by
the ranking. The gatekeeper (the latest model that still trained the class, engine.plan
.gatekeepers) keeps out of the queue the images it recognises as an excluded class. Its leak is
what it misses: the share of each batch selected after an exclusion that comes from the excluded
classes.

Per run of bench/exclusion_balancing.py (protocol variant × seed) and per selection round after
an exclusion, this reads the run's JSON (`runs/<protocol>_<variant>_seed<k>.json`) and reports:

* the batch's images from the classes excluded at that point, as a count and a share;
* the share those classes have in the unlabeled pool at that point (what a batch drawn at
  random would give; with no gate at all the ranking would likely give them more, as their
  images fit no active class: the next column suggests how much);
* the same classes' share of the same round's batch in the `excl-off` run of the same seed (the
  classes still active: what the ranking gives them when a model answers them);
* `kept_out_as_excluded` (the unlabeled images the gatekeeper kept out) beside the unlabeled
  images of the excluded classes (kept out ÷ unlabeled is an upper bound of the gate's recall:
  the files do not say how many kept-out images were of other classes).

Where the classes come from: a round's record holds the selected images' names (`selected`,
`pool/<index>`) but not their classes; it holds the labels per class (`per_class[c]["labeled"]`)
at each training. The simulation labels every selected image before the next training (the
oracle, reserve 0 in these runs), so the batch of round r per class is labeled(r + 1) −
labeled(r). The excluded classes at round r's selection are the classes whose status is
"excluded" in round r + 1's record (the status when it trained, i.e. after round r's decision).
The pool's size per class follows the hopeless protocol's construction (pool // 11 per real
class, the rest "Other"). When the Fashion-MNIST files are present (CAMLOOP_FASHION_MNIST, or
the Debian package's path), the pool is regenerated (seconds, no training) and every batch's
composition is checked item by item against the `selected` names, and the pool counts too.

    .venv/bin/python bench/gatekeeper_leak.py \\
        [--runs-dir bench/results/exclusion_balancing/seeds3 ...] [--out bench/results/gatekeeper_leak]

Prints the markdown tables of docs/benchmarks.md ("Gatekeeper leak") and writes summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's code, not an installed copy's
from workers.provenance import provenance  # noqa: E402

OTHER = "Other"
DEFAULT_RUN_DIRS = ("bench/results/exclusion_balancing/seeds3", "bench/results/exclusion_balancing/seeds3-imb")


def hopeless_pool_counts(pool_size: int, names: list[str]) -> dict[str, int]:
    """Pool images per class as bench/exclusion_balancing.make_protocol("hopeless") builds them."""
    per_real = pool_size // 11
    return {n: (pool_size - 10 * per_real if n == OTHER else per_real) for n in names}


def batch_per_class(run: dict) -> list[dict[str, int]]:
    """The batch selected at each round (all but the last record), per class: labeled(r+1) − labeled(r)."""
    names = run["config"]["classes"]
    rounds = run["rounds"]
    return [{n: b["per_class"][n]["labeled"] - a["per_class"][n]["labeled"] for n in names}
            for a, b in zip(rounds, rounds[1:])]


def excluded_at_selection(run: dict) -> list[list[str]]:
    """The classes excluded when round r selected: "excluded" in round r+1's record."""
    names = run["config"]["classes"]
    return [[n for n in names if b["per_class"][n].get("status") == "excluded"] for b in run["rounds"][1:]]


def leak_rows(run: dict, pool_counts: dict[str, int], reference: dict | None = None) -> list[dict]:
    """One row per selection round after an exclusion (see the module docstring)."""
    names = run["config"]["classes"]
    pool_size = sum(pool_counts.values())
    ref_batches = batch_per_class(reference) if reference is not None else None
    rows = []
    for k, (batch, excl) in enumerate(zip(batch_per_class(run), excluded_at_selection(run))):
        if not excl:
            continue
        rec = run["rounds"][k]
        size = sum(batch.values())
        if rec.get("selected") is not None and len(rec["selected"]) != size:
            raise ValueError(f"round {rec['round']}: {len(rec['selected'])} selected, {size} labeled after it")
        labeled = {n: rec["per_class"][n]["labeled"] for n in names}
        unl_total = pool_size - sum(labeled.values())
        unl_excl = sum(pool_counts[n] - labeled[n] for n in excl)
        leak = sum(batch[n] for n in excl)
        row = {"round": rec["round"], "labels": rec["labeled"], "excluded": excl, "batch": size,
               "from_excluded": leak, "from_excluded_per_class": {n: batch[n] for n in excl},
               "share": round(leak / size, 4) if size else None,
               "pool_share": round(unl_excl / unl_total, 4) if unl_total else None,
               "unlabeled_of_excluded": unl_excl,
               "kept_out_as_excluded": rec.get("kept_out_as_excluded", 0),
               "per_class": {n: {"batch": batch[n], "share": round(batch[n] / size, 4) if size else None,
                                 "pool_share": round((pool_counts[n] - labeled[n]) / unl_total, 4) if unl_total
                                 else None, "unlabeled": pool_counts[n] - labeled[n]} for n in excl}}
        if ref_batches is not None and k < len(ref_batches):
            ref = ref_batches[k]
            ref_size = sum(ref.values())
            row["share_excl_off"] = round(sum(ref[n] for n in excl) / ref_size, 4) if ref_size else None
            for n in excl:
                row["per_class"][n]["share_excl_off"] = round(ref[n] / ref_size, 4) if ref_size else None
        rows.append(row)
    return rows


def check_items(run: dict, pool_labels, names: list[str]) -> None:
    """Each batch's classes from its `selected` names (pool/<index>) equal the label-count differences."""
    import numpy as np

    for rec, batch in zip(run["rounds"], batch_per_class(run)):
        idx = [int(u.rsplit("/", 1)[1]) for u in rec.get("selected", [])]
        got = np.bincount(pool_labels[idx], minlength=len(names))
        if [int(x) for x in got] != [batch[n] for n in names]:
            raise AssertionError(f"{run['variant']} seed {run['config']['seed']} round {rec['round']}: "
                                 f"items give {got.tolist()}, label counts {batch}")


def _regenerated_pool(run: dict):
    """The pool's labels, regenerated as the benchmark built them; None without Fashion-MNIST."""
    from engine.fashion_mnist import FASHION_MNIST_ROOT

    root = Path(os.environ.get("CAMLOOP_FASHION_MNIST", FASHION_MNIST_ROOT))
    if not (root / "train-labels-idx1-ubyte.gz").exists():
        return None
    sys.path.insert(0, str(ROOT / "bench"))
    from exclusion_balancing import make_protocol

    a = run["protocol_args"]
    pool, _, _ = make_protocol(run["protocol"], run["config"]["seed"], a["pool"], a["val_per_class"],
                               a["test_per_class"], a["ratio"], fashion_root=str(root))
    return pool.labels


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f} %"


def analyse(run_dirs: list[Path], check: bool = True) -> dict:
    runs = []
    for d in run_dirs:
        for p in sorted((d / "runs").glob("*.json")):
            run = json.loads(p.read_text())
            run["_file"] = str(p.relative_to(ROOT) if p.is_absolute() and p.is_relative_to(ROOT) else p)
            runs.append(run)
    off = {(r["protocol"], r["config"]["seed"]): r for r in runs if r["variant"] == "excl-off"}
    out_runs, checked = [], 0
    for run in runs:
        names = run["config"]["classes"]
        if not run.get("exclusions"):
            out_runs.append({"file": run["_file"], "protocol": run["protocol"], "variant": run["variant"],
                             "seed": run["config"]["seed"], "exclusions": [], "rounds": []})
            continue
        if run["protocol"] != "hopeless":
            raise ValueError(f"{run['_file']}: pool counts known for the hopeless protocol only")
        counts = hopeless_pool_counts(run["protocol_args"]["pool"], names)
        labels = _regenerated_pool(run) if check else None
        if labels is not None:
            import numpy as np

            got = dict(zip(names, np.bincount(labels, minlength=len(names)).tolist()))
            if got != counts:
                raise AssertionError(f"{run['_file']}: regenerated pool {got} ≠ {counts}")
            check_items(run, labels, names)
            checked += 1
        out_runs.append({"file": run["_file"], "protocol": run["protocol"], "variant": run["variant"],
                         "seed": run["config"]["seed"], "host": run.get("host"),
                         "torch_threads": run.get("torch_threads"),
                         "exclusions": [{"class": e["class"], "round": e["round"]} for e in run["exclusions"]],
                         "rounds": leak_rows(run, counts, off.get((run["protocol"], run["config"]["seed"])))})
    return {"run_dirs": [str(d) for d in run_dirs], "runs_checked_item_by_item": checked,
            "classes_from": "label counts per class by round (labeled(r+1) - labeled(r))"
                            + ("; checked item by item against the selected names on the regenerated pool"
                               if checked else ""),
            "runs": out_runs}


def markdown(summary: dict) -> str:
    rows = [(r, x) for r in summary["runs"] for x in r["rounds"]]
    lines = ["| variant | seed | round (labels) | excluded then | batch from excluded | share | "
             "pool share (random batch) | share with exclusion off | kept out / unlabeled of excluded |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, x in sorted(rows, key=lambda t: (t[0]["variant"], t[0]["seed"], t[1]["round"])):
        per = ", ".join(f"{n} {k}" for n, k in x["from_excluded_per_class"].items())
        lines.append(f"| {r['variant']} | {r['seed']} | {x['round']} ({x['labels']}) | {', '.join(x['excluded'])} | "
                     f"{x['from_excluded']}/{x['batch']} ({per}) | {_pct(x['share'])} | {_pct(x['pool_share'])} | "
                     f"{_pct(x.get('share_excl_off'))} | {x['kept_out_as_excluded']} / {x['unlabeled_of_excluded']} |")
    # The mean over runs and rounds: by excluded set, then by class within each set.
    groups: dict[str, list[dict]] = {}
    for r, x in rows:
        key = " + ".join(x["excluded"])
        groups.setdefault(key, []).append(x)
        if len(x["excluded"]) > 1:
            for n in x["excluded"]:
                groups.setdefault(f"{n} (of {key})", []).append(x["per_class"][n])

    def mean(xs, k):
        v = [x[k] for x in xs if x.get(k) is not None]
        return sum(v) / len(v) if v else None

    lines += ["", "| excluded classes | batches | mean share of the batch | mean pool share (random batch) | "
              "mean share with exclusion off |", "|---|---|---|---|---|"]
    for key, xs in groups.items():
        lines.append(f"| {key} | {len(xs)} | {_pct(mean(xs, 'share'))} | {_pct(mean(xs, 'pool_share'))} | "
                     f"{_pct(mean(xs, 'share_excl_off'))} |")
    none = [r["variant"] for r in summary["runs"] if not r["exclusions"]]
    if none:
        lines += ["", f"No exclusion (nothing to measure): {len(none)} runs ({', '.join(sorted(set(none)))})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, action="append",
                    help="a bench/exclusion_balancing.py --out-dir (repeatable); default: seeds3 and seeds3-imb")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gatekeeper_leak"))
    ap.add_argument("--no-check", action="store_true", help="skip the item-by-item check on the regenerated pool")
    args = ap.parse_args(argv)
    dirs = args.runs_dir or [ROOT / d for d in DEFAULT_RUN_DIRS]
    summary = analyse(dirs, check=not args.no_check)
    summary["run_dirs"] = [str(Path(d).resolve().relative_to(ROOT)) if Path(d).resolve().is_relative_to(ROOT)
                           else str(d) for d in dirs]
    print(markdown(summary))
    print(f"\nclasses from: {summary['classes_from']} ({summary['runs_checked_item_by_item']} runs checked)")
    args.out.mkdir(parents=True, exist_ok=True)
    summary["provenance"] = provenance()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
