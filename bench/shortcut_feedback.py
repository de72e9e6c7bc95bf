"""Explanatory feedback on the shortcut benchmark (issue 25): does a wrong-region vote that trains
move the model off the shortcut?

`fashion-shortcut` (engine.shortcut_fashion): the colour benchmark's garments with a solid colour
over everything outside the garment's box; for the cue-bearing classes (seven by default: all but
the three footwear classes) the colour is the class's own colour in every pool and validation
image (--cue-rate, default 1.0), the other classes get one of the ten colours at random in every
split; in the test split every colour is random. Until 2026-12-07 (second session) the default
was five cue-bearing classes (0, 2, 4, 6, 8) at 0.9 (`--cue-rate 0.9 --cue-classes 0,2,4,6,8`
reproduces it): the cue cost plain about 3 points. --side sets the images' side and the model's
input size. The colour benchmark's settings (pretrained Lite0 at 96 px, 7 blocks frozen, the
trunk cache, the typical first batch of 50), pool 5,000, validation 1,000, test 2,000, +50 labels
a round for 6 rounds (50 → 350 labels), 10 epochs, `hybrid` (docs/benchmarks.md reduces it with
--config: pool 2,000, validation 500, test 1,000, 5 rounds, 50 → 300 labels). --base colour runs
the shortcut-free colour benchmark (engine.colour_fashion) with each garment's box (its mask's
bounding box): what feedback costs where there is no shortcut.

Conditions (one run of `workers.simulate.run_simulation` each, what `camloop simulate` runs):

  plain      no votes (what camloop did before)
  votes      --expert-votes: the simulated expert flags a queued image by engine.regions'
             rule (the share of the guess's Grad-CAM mass inside the garment's box under 0.8 of
             the box's share of the image); the votes move the class budget, as the service's
             do, and train nothing
  no-cue     the ceiling: the same garments and boxes with the background's colour random in
             every split (no shortcut to learn), plain: what a model that never saw the cue
             reaches on the test split, so what feedback could at most win back
  feedback   --expert-votes --counterexamples K (--k, default 2): each flagged image adds K
             copies with everything outside the box replaced (--fill noise: uniform noise;
             shuffle: the outside of another training image) to the next rounds' training
  feedback-swap  feedback, and feedback.swap_suspects: every labeled image of a class the
             background-swap test (engine.swap_test) has named suspect adds K copies too
             (feedback.swap_scope, via --config: all, the default since 2026-12-07, every class
             once any is named; named, the runs before it; always, every class from the first
             round)
  swap       no votes: only the swap test's feedback (swap_suspects, K copies, --fill)
  bare       --expert-votes --bare-votes, feedback.bare peak: the expert flags by the same rule
             but the training gets only the vote, no box (a bare vote); each flagged image adds
             K copies with the inside of the box of its map's peak cell randomised (--fill),
             the map being the one the expert judged; swap feedback off
  penalty    --expert-votes and the attribution penalty instead of copies: each flagged image's
             share of input-gradient energy outside its box, × --penalty (feedback.penalty,
             workers.attribution), added to the loss of every later round; no copies, no swap
             feedback; --penalty-at pixels takes the gradients at the pixels (through the frozen
             trunk) instead of the cached trunk output

Every run (plain included) does the background-swap test after each round's training on 300
pool images with their boxes (feedback.swap_images; it trains nothing unless swap_suspects):
its suspect classes are in the JSON's `shortcut_report` (`suspect_by_swap`, `swap`) and in each
round's `swap_test`.

    python bench/shortcut_feedback.py run --condition feedback --seed 0 --out-dir bench/results/shortcut \
        --trunk-cache-dir /tmp/trunk-shortcut
    python bench/shortcut_feedback.py summary bench/results/shortcut

The summary: per run (its file name), the run's strategy and condition, test accuracy (cue random)
and validation accuracy (cue at the cue rate) at 300 labels and at the end (350), the test AULC,
the votes' flagged share, the classes the shortcut report calls suspect against the cue-bearing
ones, and the mean test accuracy at 300 labels over the cue-bearing classes and over the others.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

PRESET = dict(dataset="fashion-shortcut", pool_limit=5000, val_limit=1000, test_limit=2000, initial=50, budget=50,
              rounds=6, epochs=10, strategy="hybrid")
# The swap test's feedback is on by default since 2026-12-07 (fourth session: `swap_suspects`,
# `swap_scope` all, `swap_copies` 4): the conditions without it turn it off.
_OFF = {"feedback": {"swap_suspects": False}}
CONDITIONS = {"plain": _OFF, "no-cue": {"dataset": "fashion-shortcut-no-cue", **_OFF}, "votes": {"expert_votes": True, **_OFF},
              "feedback": {"expert_votes": True, "feedback": {"counterexamples": 2, "swap_suspects": False}},
              "feedback-swap": {"expert_votes": True, "feedback": {"counterexamples": 2, "swap_suspects": True}},
              "swap": {"feedback": {"counterexamples": 2, "swap_suspects": True}},
              "bare": {"expert_votes": True, "bare_votes": True,
                       "feedback": {"counterexamples": 2, "swap_suspects": False, "bare": "peak"}},
              "penalty": {"expert_votes": True, "feedback": {"counterexamples": 0, "swap_suspects": False, "penalty": 1.0}}}
_COPIES = ("feedback", "feedback-swap", "swap", "bare")  # the conditions --k and --fill act on


def run(args) -> None:
    from engine.config import SimulationConfig, merge_config
    from engine.datasets import COLOUR_MODEL, register_dataset
    from engine.colour_fashion import DEFAULT_SIDE
    from engine.shortcut_fashion import CUE_CLASSES, DEFAULT_CUE_RATE, load_fashion_shortcut
    from workers.simulate import run_simulation

    if args.swap_rule:  # a naming rule other than the shipped one (engine.swap_test.named): "confirm,report_only"
        from engine import swap_test
        swap_test.CONFIRM, swap_test.REPORT_ONLY = (int(v) for v in args.swap_rule.split(","))
    cue_classes = tuple(int(c) for c in args.cue_classes.split(","))
    default = (args.cue_rate == DEFAULT_CUE_RATE and args.side == DEFAULT_SIDE and cue_classes == CUE_CLASSES)
    register_dataset("fashion-shortcut-no-cue", lambda seed: load_fashion_shortcut(seed, cue_rate=None, side=args.side))
    # Another setting of the benchmark (cue rate, side, cue-bearing classes) is a data set of its
    # own name, simulated with the colour default's model at the data's side.
    register_dataset("fashion-shortcut-bench", lambda seed: load_fashion_shortcut(
        seed, cue_rate=args.cue_rate, side=args.side, cue_classes=cue_classes))

    register_dataset("fashion-colour-regions", lambda seed: _colour_with_regions(seed, args.side))
    if args.base == "colour":  # the shortcut-free colour benchmark: what feedback costs without a shortcut
        if args.condition not in ("plain", "votes", "feedback", "feedback-swap", "swap", "bare"):
            raise SystemExit("--base colour: the conditions are plain, votes, feedback, feedback-swap, swap and bare")
        default = False

    cfg = merge_config({**PRESET, "seed": args.seed, "threads": args.threads,
                        **({} if default else {"dataset": "fashion-shortcut-bench"}),
                        **({"dataset": "fashion-colour-regions"} if args.base == "colour" else {}),
                        **({"trunk_cache_dir": args.trunk_cache_dir} if args.trunk_cache_dir else {}),
                        **({"device": args.device} if args.device else {})}, CONDITIONS[args.condition])
    if args.condition in _COPIES:
        # --k: the votes' copies and, once the swap test's feedback acts, its copies (always
        # `shuffle`: engine.step; the runs before 2026-12-07's fourth session had one K for both)
        cfg = merge_config(cfg, {"feedback": {"counterexamples": args.k, "fill": args.fill, "swap_copies": args.k}})
    if args.condition == "no-cue" or not default:  # the named default model is fashion-shortcut's: give it
        cfg = merge_config(cfg, {**COLOUR_MODEL, "image_size": args.side})
    if args.condition == "penalty":
        cfg = merge_config(cfg, {"feedback": {"penalty": args.penalty, "penalty_at": args.penalty_at}})
    cfg = merge_config(cfg, json.loads(args.config or "{}"))
    fb = args.condition in _COPIES
    name = args.condition + (f"-k{args.k}" if fb and args.k != 2 else "") \
        + (f"-{args.fill}" if fb and args.fill != "noise" else "") \
        + (f"-w{args.penalty:g}{'-px' if args.penalty_at == 'pixels' else ''}" if args.condition == "penalty" else "") \
        + args.tag
    out = Path(args.out_dir) / f"{name}_seed{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = run_simulation(SimulationConfig(**cfg), progress=lambda r: print(
        f"round {r['round']}: {r['labeled']} labels, test {r['accuracy']:.4f}, val {r['val_accuracy']:.4f}, "
        f"votes {({k: v for k, v in r.get('expert_votes', {}).items() if k != 'flagged_images'})}, "
        f"swap suspect {(r.get('swap_test') or {}).get('suspect')}, "
        f"copies {r.get('counterexamples_trained')}"
        + (f", penalised {r['penalty_images']}" if "penalty_images" in r else ""), flush=True))
    shortcut = args.base == "shortcut"
    result["bench"] = {"condition": name, "seed": args.seed, "base": args.base, "side": args.side,
                       "cue_rate": args.cue_rate if shortcut and args.condition != "no-cue" else None,
                       "cue_classes": list(cue_classes) if shortcut else []}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def _colour_with_regions(seed: int, side: int):
    """The colour benchmark (engine.colour_fashion, no shortcut) with each garment's region: the
    bounding box of its mask (x1/y1 exclusive), so that the simulated expert can vote and
    counterexamples can be made on it."""
    import numpy as np

    from engine.colour_fashion import load_fashion_colour

    parts = []
    for d, masks in load_fashion_colour(seed, side=side, with_masks=True):
        ys, xs = masks.any(axis=2), masks.any(axis=1)
        d.regions = np.array([[x.argmax(), y.argmax(), len(x) - x[::-1].argmax(), len(y) - y[::-1].argmax()]
                              for x, y in zip(xs, ys)], np.int64)
        parts.append(d)
    return tuple(parts)


def aulc(rounds: list[dict]) -> float:
    """Area under test accuracy by labels, trapezoids, divided by the labels' span."""
    x = [r["labeled"] for r in rounds]
    y = [r["accuracy"] for r in rounds]
    area = sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1))
    return area / (x[-1] - x[0]) if x[-1] > x[0] else y[0]


def _class_means(record: dict, names: list[str], cue_classes) -> dict:
    """Mean test accuracy over the cue-bearing classes and over the others (one round's record)."""
    pc = record.get("per_class") or {}
    bearing = [n for i, n in enumerate(names) if i in cue_classes]
    others = [n for n in names if n not in bearing]
    mean = lambda ns: round(sum(pc[n]["accuracy"] for n in ns) / len(ns), 4) if ns and all(n in pc for n in ns) else None
    return {"cue_bearing": mean(bearing), "others": mean(others)}


def summarise(folder: Path) -> dict:
    from engine.shortcut_fashion import FIVE_CUE_CLASSES

    out = {}
    for p in sorted(folder.glob("*_seed*.json")):
        r = json.loads(p.read_text())
        # runs from before the bench recorded its setting had the five cue-bearing classes
        cue_classes = r.get("bench", {}).get("cue_classes", FIVE_CUE_CLASSES)
        rounds = r["rounds"]
        at = {x["labeled"]: x for x in rounds}
        rep = r.get("shortcut_report") or {}
        votes = [x.get("expert_votes") for x in rounds if x.get("expert_votes")]
        judged = sum(v["judged"] for v in votes)
        out[p.stem] = {
            "strategy": r["config"].get("strategy"), "condition": r.get("bench", {}).get("condition"),
            "test_300": at.get(300, {}).get("accuracy"), "val_300": at.get(300, {}).get("val_accuracy"),
            "test_end": rounds[-1]["accuracy"], "val_end": rounds[-1]["val_accuracy"], "labels_end": rounds[-1]["labeled"],
            "test_aulc": round(aulc(rounds), 4),
            "flagged_share": round(sum(v["flagged"] for v in votes) / judged, 4) if judged else None,
            "flagged_by_round": [round(v["flagged"] / v["judged"], 3) if v["judged"] else None for v in votes],
            "test_300_by_cue": _class_means(at[300], r["config"]["classes"], cue_classes) if 300 in at else None,
            "counterexamples": r.get("counterexamples"), "bare_votes": r.get("bare_votes"),
            # per round: [bare votes, peak boxes wholly off the garment's box, mean share of a peak box on it]
            "bare_by_round": [[v["bare"]["votes"], v["bare"]["peak_off_object"], v["bare"]["peak_on_object"]]
                              for v in votes if "bare" in v],
            "suspect": rep.get("suspect"),
            "suspect_by_swap": rep.get("suspect_by_swap"), "suspect_by_votes": rep.get("suspect_by_votes"),
            "swap_named_in_round": (rep.get("swap") or {}).get("named_in_round"),
            # the last model's swap test per guessed class: [flip share, follow share, its Wilson low, images]
            "swap_by_guess": {n: [v.get("flip_share"), v.get("follow_share"), v.get("follow_low"), v.get("images")]
                              for n, v in ((rep.get("swap") or {}).get("per_class") or {}).items()},
            "swap_suspect_by_round": [(x.get("swap_test") or {}).get("suspect") for x in rounds],
            "counterexamples_trained": [x.get("counterexamples_trained") for x in rounds],
            "suspect_by_true_class": rep.get("suspect_by_true_class"),
            "flagged_share_by_guess": {n: v.get("flagged_share") for n, v in (rep.get("per_class") or {}).items()},
            "cue_bearing": [n for i, n in enumerate(r["config"]["classes"]) if i in cue_classes],
            "setting": {k: r.get("bench", {}).get(k) for k in ("cue_rate", "side", "cue_classes")},
            "seconds": r["config"].get("seconds"),
        }
    return out


def main(argv=None) -> None:
    from engine.colour_fashion import DEFAULT_SIDE
    from engine.shortcut_fashion import CUE_CLASSES, DEFAULT_CUE_RATE

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--condition", choices=sorted(CONDITIONS), required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--k", type=int, default=2, help="counterexamples per flagged image (feedback)")
    r.add_argument("--fill", default="noise", choices=("noise", "shuffle"))
    r.add_argument("--penalty", type=float, default=1.0, help="the attribution penalty's weight (condition penalty)")
    r.add_argument("--penalty-at", default="trained", choices=("trained", "pixels"),
                   help="where the penalty's gradients are taken (feedback.penalty_at)")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--swap-rule", default=None, help="CONFIRM,REPORT_ONLY: the swap test names a class once suspect "
                   "on CONFIRM consecutive tests after the first REPORT_ONLY (default: engine.swap_test's)")
    r.add_argument("--device", default=None)
    r.add_argument("--config", default=None, help="more config as JSON, over the preset")
    r.add_argument("--cue-rate", type=float, default=DEFAULT_CUE_RATE, help="share of a cue-bearing class's pool "
                   "and validation images with their own class's colour (default %(default)s; until 2026-12-07: 0.9)")
    r.add_argument("--side", type=int, default=DEFAULT_SIDE, help="the images' side, pixels (the model's input size)")
    r.add_argument("--cue-classes", default=",".join(map(str, CUE_CLASSES)), help="the cue-bearing classes, "
                   "comma-separated (default %(default)s; until 2026-12-07: 0,2,4,6,8)")
    r.add_argument("--base", default="shortcut", choices=("shortcut", "colour"),
                   help="colour: the shortcut-free colour benchmark with the garments' boxes (feedback's cost)")
    r.add_argument("--tag", default="")
    r.add_argument("--trunk-cache-dir", default=None)
    r.add_argument("--out-dir", required=True)
    s = sub.add_parser("summary")
    s.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        run(args)
    else:
        print(json.dumps(summarise(args.folder), indent=1))


if __name__ == "__main__":
    main()
