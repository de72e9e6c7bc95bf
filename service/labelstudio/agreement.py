"""Agreement between annotators, overall and per class (Label Studio Community has none).

Per class c, over items with at least two votes (n_i votes, n_ic of them for c):
  * specific agreement   Σ n_ic(n_ic−1) / Σ n_ic(n_i−1): given one annotator said c, how
    often another said c too (the per-class percent agreement);
  * Fleiss' category kappa  1 − Σ n_ic(n_i−n_ic)/(n_i−1) / (Σ n_i · p_c(1−p_c)), which is
    Fleiss (1971) eq. for κ_j generalised to a varying number of annotators per item;
  * wrong-region rate: share of votes for c flagged "model looked at the wrong region".
Overall: mean observed agreement, Fleiss' kappa (varying annotators), and Cohen's kappa
averaged over annotator pairs that share at least two items.
Undefined statistics (e.g. kappa when only one class was ever used) are None, not 0.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from itertools import combinations

from service.labelstudio.events import AnnotationUpserted
from service.labelstudio.resolve import one_per_annotator


def fleiss_kappa(counts: Sequence[Mapping[str, int]]) -> float | None:
    """Fleiss' kappa over items given as {class: number of annotators}; items with < 2 votes ignored."""
    rows = [c for c in counts if sum(c.values()) >= 2]
    if not rows:
        return None
    total = sum(sum(r.values()) for r in rows)
    p_bar = sum(sum(v * (v - 1) for v in r.values()) / (sum(r.values()) * (sum(r.values()) - 1)) for r in rows) / len(rows)
    marg: Counter = Counter()
    for r in rows:
        marg.update(r)
    p_e = sum((v / total) ** 2 for v in marg.values())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1 - p_e)


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    n = len(a)
    if n == 0 or n != len(b):
        return None
    p_o = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1 - p_e)


def agreement_report(by_item: Mapping[int, Iterable[AnnotationUpserted]], classes: Sequence[str]) -> dict:
    votes_by_item = {i: [a for a in one_per_annotator(anns) if a.counts] for i, anns in by_item.items()}
    counts = {i: Counter(a.label for a in v) for i, v in votes_by_item.items()}
    multi = {i: c for i, c in counts.items() if sum(c.values()) >= 2}
    total_votes_multi = sum(sum(c.values()) for c in multi.values())
    per_class: dict[str, dict] = {}
    for cls in classes:
        all_votes = [a for v in votes_by_item.values() for a in v if a.label == cls]
        num = sum(c[cls] * (c[cls] - 1) for c in multi.values())
        den = sum(c[cls] * (sum(c.values()) - 1) for c in multi.values())
        p = sum(c[cls] for c in multi.values()) / total_votes_multi if total_votes_multi else 0.0
        dis = sum(c[cls] * (sum(c.values()) - c[cls]) / (sum(c.values()) - 1) for c in multi.values())
        kden = total_votes_multi * p * (1 - p)
        per_class[cls] = {
            "votes": len(all_votes),
            "items_with_overlap": sum(1 for c in multi.values() if c[cls]),
            "percent_agreement": num / den if den else None,
            "kappa": 1 - dis / kden if kden else None,
            "wrong_region_rate": (sum(a.wrong_region for a in all_votes) / len(all_votes)) if all_votes else None,
        }
    # Pairwise Cohen's kappa over annotators who labeled the same items.
    by_annotator: dict[object, dict[int, str]] = {}
    for i, v in votes_by_item.items():
        for a in v:
            by_annotator.setdefault(a.annotator, {})[i] = a.label
    pairs = []
    for (u, du), (w, dw) in combinations(sorted(by_annotator.items(), key=lambda kv: str(kv[0])), 2):
        shared = sorted(set(du) & set(dw))
        if len(shared) >= 2:
            k = cohen_kappa([du[i] for i in shared], [dw[i] for i in shared])
            pairs.append({"annotators": [u, w], "items": len(shared), "kappa": k})
    defined = [p["kappa"] for p in pairs if p["kappa"] is not None]
    observed = [sum(v * (v - 1) for v in c.values()) / (sum(c.values()) * (sum(c.values()) - 1)) for c in multi.values()]
    return {
        "items": len(counts),
        "items_with_overlap": len(multi),
        "percent_agreement": sum(observed) / len(observed) if observed else None,
        "fleiss_kappa": fleiss_kappa(list(multi.values())),
        "mean_cohen_kappa": sum(defined) / len(defined) if defined else None,
        "pairs": pairs,
        "per_class": per_class,
    }
