"""Which ranking of suspicious labels finds the wrong ones? An offline screen (issue 23).

The benchmark (bench/label_noise.py) found confusable flips (to the class the clean model
confuses most) half as often as uniform ones. This screen takes the labeled set a benchmark run
has at one round — `camloop simulate`'s own loop (`workers.simulate.run_simulation`), the
`<kind>-off` setting (the experts' noisy first answers, nothing asked again), stopped early —
and, at the rounds named, scores several rankings of its labels against the truth:

  oof k=K [rep R]   out-of-fold probabilities as the train job makes them
                    (`workers.label_issues.out_of_fold`: K fold models of the round's kind and
                    settings); `rep R`: R such sets with other fold splits and seeds, averaged
  knn               the round's model's penultimate features → cleanlab's Datalab label check
                    (k-nearest-neighbour probabilities, out of sample), not rewritten here; its
                    label score, and its mean with an out-of-fold score (a combination)
  rankings          cleanlab `find_label_issues(filter_by=…, return_indices_ranked_by=…)`, and
                    `get_label_quality_scores(method=…, adjust_pred_probs=…)` over every label

For each: the wrong labels among the top `ask` of all labels (what `relabel.share` × budget asks:
0.15 × 500 = 75), and among the top `ask` of the newest batch's labels (a wrong label made this
round, found this round), as precision and recall.

    python bench/label_issue_screen.py --dataset fashion-mnist --kind confusable --seed 0 --at 2 4 \
        --out bench/results/label_noise/issue_screen/fashion-mnist_confusable_seed0.json

    python bench/label_issue_screen.py table FILE.json … [--only RANKING …]   # markdown rows

Runs on the CPU in one process; the numbers are counts, never times.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def rankings(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """name → label indices, most suspicious first (an issue filter's ranking lists its issues only)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {}
    p = np.maximum(np.asarray(probs, np.float64), 1e-12)
    p /= p.sum(axis=1, keepdims=True)
    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        for adjust in ((False, True) if method != "confidence_weighted_entropy" else (False,)):
            q = get_label_quality_scores(labels, p, method=method, adjust_pred_probs=adjust)
            out[f"all/{method}{'/adj' if adjust else ''}"] = np.lexsort((np.arange(len(q)), q))
    for filter_by in ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"):
        for by in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
            idx = find_label_issues(labels, p, filter_by=filter_by, return_indices_ranked_by=by, n_jobs=1)
            out[f"{filter_by}/{by}"] = np.asarray(idx, np.int64)
    return out


def score(order: np.ndarray, wrong: np.ndarray, new: np.ndarray, ask: int) -> dict:
    top = order[:ask]
    top_new = order[new[order]][:ask]
    return {"flagged": int(len(order)),
            "top_wrong": int(wrong[top].sum()), "top_n": int(len(top)),
            "precision": round(float(wrong[top].mean()), 4) if len(top) else None,
            "recall": round(float(wrong[top].sum() / max(1, wrong.sum())), 4),
            "new_top_wrong": int(wrong[top_new].sum()), "new_top_n": int(len(top_new)),
            "new_precision": round(float(wrong[top_new].mean()), 4) if len(top_new) else None,
            "new_recall": round(float(wrong[top_new].sum() / max(1, (wrong & new).sum())), 4)}


def penultimate(model, images: np.ndarray, active, device) -> np.ndarray:
    """The pooled features the head reads (what the round's model embeds each image as)."""
    from workers.evaluate import predict_probs

    feats = []
    h = model.head.register_forward_hook(lambda mod, inp, out: feats.append(inp[0].detach().float().cpu()))
    try:
        predict_probs(model, images, active=active, device=device)
    finally:
        h.remove()
    import torch

    return torch.cat(feats).numpy()


def knn_scores(labels: np.ndarray, feats: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab Datalab's label check from features alone (its out-of-sample k-nearest-neighbour
    probabilities → confident learning): (label score, is issue) per label."""
    from cleanlab import Datalab

    lab = Datalab(data={"label": labels}, label_name="label", verbosity=0)
    lab.find_issues(features=feats, issue_types={"label": {"k": k}})
    issues = lab.get_issues("label")
    return np.asarray(issues["label_score"], np.float64), np.asarray(issues["is_label_issue"], bool)


def noise_posterior(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """P(the given label is the true one | the image, the given label), with cleanlab's estimate of
    the noise (`cleanlab.count.estimate_joint`: P(given = j, true = i)): a label j the image's
    probabilities give to a class i from which labels rarely turn into j is a hard image, not a
    flip; one they give to a class whose labels often turn into j is a likely flip."""
    from cleanlab.count import estimate_joint

    p = np.maximum(np.asarray(probs, np.float64), 1e-12)
    p /= p.sum(axis=1, keepdims=True)
    joint = estimate_joint(labels, p)                  # [given, true]
    flips = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)   # P(given = j | true = i)
    likelihood = flips[labels]                          # (N, C): P(given = label | true = i)
    evidence = (p * likelihood).sum(axis=1)
    return p[np.arange(len(labels)), labels] * likelihood[np.arange(len(labels)), labels] / np.maximum(evidence, 1e-12)


def by_score(q: np.ndarray, among: np.ndarray | None = None) -> np.ndarray:
    """Indices by ascending score (index breaks ties), `among` only when given."""
    order = np.lexsort((np.arange(len(q)), q))
    return order if among is None else order[among[order]]


def screen_round(m, truth: np.ndarray, args, record: dict) -> None:
    import torch

    from engine.contracts import RoundFiles
    from workers import jobs
    from workers.label_issues import out_of_fold

    names = m.net.class_names
    active = np.asarray(m.active, bool)
    dev = jobs._device()
    train = jobs._dataset(m.train, names)
    evidence = jobs._dataset(m.evidence, names) if len(m.evidence) else None
    base = {**m.settings.model_dump(), "device": str(dev)}
    is_new = np.asarray(m.is_new, bool)
    train_dig = jobs._digests(train.images) if m.trunk_cache else None
    evidence_dig = jobs._digests(evidence.images) if m.trunk_cache and evidence is not None else None
    cache_of = (lambda net: jobs._trunk_cache(m.trunk_cache, net, base["batch_size"])) if m.trunk_cache else None
    labels = np.asarray(train.labels, np.int64)
    ids = np.asarray(m.train.item_ids, np.int64)
    truth_train = truth[ids]
    wrong = labels != truth_train
    ask = int(args.ask)
    res = {"labels": int(len(labels)), "new": int(is_new.sum()), "wrong": int(wrong.sum()),
           "wrong_new": int((wrong & is_new).sum()), "ask": ask, "probs": {}}
    pairs: dict[str, int] = {}
    for i in np.flatnonzero(wrong):
        key = f"{names[truth[m.train.item_ids[i]]]}->{names[labels[i]]}"
        pairs[key] = pairs.get(key, 0) + 1
    res["wrong_pairs"] = dict(sorted(pairs.items(), key=lambda kv: -kv[1]))
    cached = Path(args.out).with_suffix(f".round{m.round}.npz")  # a rerun reuses the fold models' output
    probs: dict[str, np.ndarray] = {}
    if cached.is_file():
        with np.load(cached) as z:
            # Only for the same labeled set (other code picks other images: their probabilities would lie).
            if "item_ids" in z.files and np.array_equal(z["item_ids"], ids):
                probs = {k: z[k] for k in z.files if k.startswith("oof ")}
    t0 = time.perf_counter()
    for k in args.folds:
        for rep in range(args.repeats if k == 3 else 1):
            name = f"oof k={k} rep{rep}"
            if name in probs:
                continue
            mk = m.model_copy(update={"relabel_folds": k,
                                      "settings": m.settings.model_copy(update={"seed": m.settings.seed + 17 * rep})})
            probs[name] = out_of_fold(mk, train, is_new, evidence, active, {**base, "seed": m.settings.seed + 17 * rep},
                                      jobs._build, cache_of, train_dig, evidence_dig, dev)
            print(f"  folds k={k} rep {rep}: {time.perf_counter() - t0:.0f} s", flush=True)
            np.savez(cached, item_ids=ids, **probs)
    reps = [probs[f"oof k=3 rep{r}"] for r in range(args.repeats) if f"oof k=3 rep{r}" in probs]
    if len(reps) > 1:
        probs[f"oof k=3 mean of {len(reps)}"] = np.mean(reps, 0)
    # The round's model (trained on every label of the round, as the service's): its features.
    ckpt = torch.load(RoundFiles(m.out_dir).checkpoint, map_location="cpu", weights_only=False)
    model = jobs._build(m.net)
    model.load_state_dict(ckpt["state_dict"])
    feats = penultimate(model, train.images, active, dev)
    # The labeled set beside its probabilities: a later screen of another ranking reads them alone.
    np.savez(cached, item_ids=ids, features=feats, labels=labels, truth=truth_train, is_new=is_new, **probs)
    orders: dict[str, dict[str, np.ndarray]] = {}
    quality: dict[str, np.ndarray] = {}
    from cleanlab.rank import get_label_quality_scores

    for name, p in probs.items():
        acc = float((p.argmax(1) == truth_train).mean())
        res["probs"][name] = {"oof_accuracy_vs_truth": round(acc, 4), "rankings": {}}
        orders[name] = rankings(labels, p)
        pp = np.maximum(p.astype(np.float64), 1e-12)
        pp /= pp.sum(1, keepdims=True)
        quality[name + " sc"] = get_label_quality_scores(labels, pp, method="self_confidence")
        quality[name + " nm"] = get_label_quality_scores(labels, pp, method="normalized_margin")
        quality[name + " post"] = noise_posterior(labels, pp)
        orders[name]["all/noise_posterior"] = by_score(quality[name + " post"])
    for kn in (10, 25):
        q, issue = knn_scores(labels, feats, kn)
        name = f"knn k={kn} (round model features, Datalab)"
        res["probs"][name] = {"oof_accuracy_vs_truth": None, "rankings": {}}
        orders[name] = {"all/label_score": by_score(q), "issues/label_score": by_score(q, issue)}
        quality[name] = q
    for a in ("oof k=3 rep0 sc", "oof k=3 rep0 nm", f"oof k=3 mean of {len(reps)} sc", "oof k=3 rep0 post"):
        for b in ("knn k=10 (round model features, Datalab)", "knn k=25 (round model features, Datalab)"):
            if a in quality and b in quality:
                name = f"mean of scores: {a} + {b.split(' (')[0]}"
                res["probs"][name] = {"oof_accuracy_vs_truth": None, "rankings": {}}
                orders[name] = {"all/mean score": by_score((quality[a] + quality[b]) / 2)}
    for name, ords in orders.items():
        res["probs"][name]["rankings"] = {r: score(o, wrong, is_new, ask) for r, o in ords.items()}
    record.setdefault("rounds", {})[str(m.round)] = res
    Path(args.out).write_text(json.dumps(record, indent=1))
    print(f"  round {m.round}: written ({time.perf_counter() - t0:.0f} s)", flush=True)


def table(paths: list[str], rankings_shown: list[str] | None = None) -> None:
    """Markdown rows from screen JSONs, side by side (one column pair per file and round): for each
    probabilities and ranking, the wrong labels among the top `ask` of all labels and of the
    newest batch, as "found (precision, recall)"."""
    cols = []
    for path in paths:
        rec = json.loads(Path(path).read_text())
        for rnd, res in rec.get("rounds", {}).items():
            cols.append((f"{rec['kind']} seed {rec['seed']}, round {rnd} ({res['labels']} labels, {res['wrong']} "
                         f"wrong, {res['wrong_new']} of them new)", res))
    keys = []
    for _, res in cols:
        for pname, pr in res["probs"].items():
            keys += [(pname, r) for r in pr["rankings"] if (pname, r) not in keys]
    print("| probabilities | ranking | " + " | ".join(f"{h}: top {res['ask']} of all | top {res['ask']} of the new"
                                                   for h, res in cols) + " |")
    print("|---|---|" + "---|---|" * len(cols))

    def cell(sc, pre):
        return f"{sc[pre + 'top_wrong']} ({sc[pre + 'precision']:.2f}, {sc[pre + 'recall']:.2f})"

    for pname, rname in keys:
        if rankings_shown and rname not in rankings_shown:
            continue
        row = []
        for _, res in cols:
            sc = res["probs"].get(pname, {}).get("rankings", {}).get(rname)
            row += [cell(sc, ""), cell(sc, "new_")] if sc else ["", ""]
        print(f"| {pname} | {rname} | " + " | ".join(row) + " |")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "table":  # table FILE… [--only RANKING…]
        rest = argv[1:]
        only = rest[rest.index("--only") + 1:] if "--only" in rest else None
        return table(rest[:rest.index("--only")] if only else rest, only)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--kind", choices=("uniform", "confusable"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.1)
    ap.add_argument("--at", type=int, nargs="+", default=[2, 4], help="rounds whose training set is screened")
    ap.add_argument("--folds", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--repeats", type=int, default=3, help="3-fold sets with other splits and seeds")
    ap.add_argument("--ask", type=int, default=75, help="second opinions a round (relabel.share × budget)")
    ap.add_argument("--trunk-cache-dir", default=None)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from bench.label_noise import PRESETS, setting_config
    from engine.config import SimulationConfig, merge_config
    from engine.contracts import TrainManifest, read_manifest
    from workers import jobs, simulate

    cfg = merge_config({**PRESETS[args.dataset], "seed": args.seed, "threads": 1,
                        **({"trunk_cache_dir": args.trunk_cache_dir} if args.trunk_cache_dir else {})},
                       setting_config(f"{args.kind}-off", args.noise))
    cfg["rounds"] = max(args.at) - 1  # round r trains on the labels of rounds 0 … r−1: stop after the last screened
    config = SimulationConfig(**cfg)
    truth = np.asarray(simulate.load_data(simulate.model_from_images(config)[0]).pool.labels, np.int64)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    record = {"dataset": args.dataset, "kind": args.kind, "seed": args.seed, "noise": args.noise,
              "folds": args.folds, "repeats": args.repeats, "ask": args.ask}
    orig = jobs.train_round

    def hooked(path: str):
        result = orig(path)
        m = read_manifest(path, TrainManifest)
        if m.round in args.at and Path(path).parent.name != "clean_reference":
            print(f"round {m.round}: screening {len(m.train)} labels", flush=True)
            screen_round(m, truth, args, record)
        return result

    jobs.train_round = hooked
    simulate.run_simulation(config, progress=lambda r: print(
        f"round {r['round']}: {r['labeled']} labels, accuracy {r['accuracy']:.4f} {r.get('label_noise', '')}",
        flush=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
