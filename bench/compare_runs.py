"""One arm of bench/label_efficiency.py against another, seed by seed, from their run files.

For runs kept in different --out-dir folders (so a new arm's results never overwrite an
earlier table): AULC per seed and its difference, test accuracy per round and the per-round
differences, the rounds below the baseline and below a third arm (e.g. random), and what the
runs recorded per round besides (DropQuery's candidates). Markdown on stdout, or --out.

    .venv/bin/python bench/compare_runs.py \\
      --arm bench/results/label_efficiency_colour_i24/dropquery/runs/hybrid-typical-dropquery_seed{}.json \\
      --baseline bench/results/label_efficiency_colour_i24/runs/hybrid-typical_seed{}.json \\
      --random bench/results/label_efficiency_colour/runs/random_seed{}.json --seeds 0,1,2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from label_efficiency import aulc  # noqa: E402


def _load(pattern: str, seed: int) -> dict | None:
    p = Path(pattern.format(seed))
    return json.loads(p.read_text()) if p.exists() else None


def compare(arm: str, baseline: str, seeds: list[int], random: str | None = None) -> str:
    lines = []
    rows = []
    for s in seeds:
        a, b = _load(arm, s), _load(baseline, s)
        if a is None or b is None:
            lines.append(f"seed {s}: {'arm' if a is None else 'baseline'} not run")
            continue
        r = _load(random, s) if random else None
        xa = [x["labeled"] for x in a["rounds"]]
        ya = [x["accuracy"] for x in a["rounds"]]
        yb = [x["accuracy"] for x in b["rounds"]]
        if xa != [x["labeled"] for x in b["rounds"]]:
            raise SystemExit(f"seed {s}: the runs' label counts differ")
        yr = [x["accuracy"] for x in r["rounds"]] if r else None
        rows.append(dict(seed=s, labeled=xa, arm=ya, base=yb, rnd=yr, aulc_a=aulc(a["rounds"]),
                         aulc_b=aulc(b["rounds"]), secs=a.get("wall_seconds"),
                         cand=[x.get("dropquery_candidates") for x in a["rounds"]],
                         notes=[x.get("selection_note") for x in a["rounds"] if x.get("selection_note")]))
    if not rows:
        return "\n".join(lines) + "\n"
    lines += ["| seed | AULC arm | AULC baseline | difference (points) | arm − baseline per round, points "
              f"({rows[0]['labeled'][1]} → {rows[0]['labeled'][-1]} labels) | rounds below baseline | "
              "rounds below random | s/run |", "|---|---|---|---|---|---|---|---|"]
    for x in rows:
        d = 100 * (np.array(x["arm"]) - np.array(x["base"]))
        below_r = "—" if x["rnd"] is None else str(int((np.array(x["arm"][1:]) < np.array(x["rnd"][1:])).sum()))
        lines.append(f"| {x['seed']} | {x['aulc_a']:.4f} | {x['aulc_b']:.4f} | {100 * (x['aulc_a'] - x['aulc_b']):+.2f} | "
                     + ", ".join(f"{v:+.2f}" for v in d[1:]) + f" | {int((d[1:] < 0).sum())} of {len(d) - 1} | "
                     f"{below_r} | {x['secs'] or float('nan'):.0f} |")
    aa = [x["aulc_a"] for x in rows]
    ab = [x["aulc_b"] for x in rows]
    sd = (lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
    lines += ["", f"Mean AULC over {len(rows)} seed(s): arm {np.mean(aa):.4f} ± {sd(aa):.4f}, baseline "
              f"{np.mean(ab):.4f} ± {sd(ab):.4f}, difference {100 * (np.mean(aa) - np.mean(ab)):+.2f} points.", ""]
    labeled = rows[0]["labeled"]
    lines += ["| labels | " + " | ".join(str(v) for v in labeled) + " |", "|---|" + "---|" * len(labeled)]
    for x in rows:
        lines.append(f"| arm, seed {x['seed']} | " + " | ".join(f"{v:.4f}" for v in x["arm"]) + " |")
        lines.append(f"| baseline, seed {x['seed']} | " + " | ".join(f"{v:.4f}" for v in x["base"]) + " |")
    lines.append("| arm, mean | " + " | ".join(f"{v:.4f}" for v in np.mean([x["arm"] for x in rows], 0)) + " |")
    lines.append("| baseline, mean | " + " | ".join(f"{v:.4f}" for v in np.mean([x["base"] for x in rows], 0)) + " |")
    if any(c is not None for x in rows for c in x["cand"]):
        lines += ["", "DropQuery candidates (eligible images ≥ half the passes disagree on) per model-ranked round:"]
        for x in rows:
            lines.append(f"- seed {x['seed']}: " + ", ".join(str(c) for c in x["cand"] if c is not None))
    for x in rows:
        if x["notes"]:
            lines.append(f"- seed {x['seed']} selection notes: {x['notes']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", required=True, help="run file pattern with {} for the seed")
    ap.add_argument("--baseline", required=True, help="run file pattern with {} for the seed")
    ap.add_argument("--random", default=None, help="run file pattern of a third arm counted as 'below random'")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    text = compare(args.arm, args.baseline, [int(s) for s in args.seeds.split(",")], args.random)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
