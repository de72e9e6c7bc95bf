"""`camloop simulate`: the service's rounds in one process, the ground truth as the expert.

Not a second implementation of a round: each round writes the same manifests the service
writes (engine.plan), runs the same job functions in-process (workers.jobs.train_round,
score_shard), and decides with the same code (engine.decisions, .selection). What
differs is only where facts come from: arrays instead of the store, and the oracle's labels
instead of experts'. So a simulation's figures are the service's figures.

Rounds are numbered as the service numbers them: round r trains on the labels so far (round 1
on the initial random labels), is evaluated, may exclude classes, then scores the pool and
queues a batch, which the oracle labels. After the last acquisition round one more round
trains on every label and is evaluated (a train-only round, as the demo's last): its record
has no selection. `--rounds R` therefore gives R + 1 records.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from engine import contracts as c
from engine import plan, step
from engine.audit import round_audit
from engine.config import SimulationConfig
from engine.decisions import evidence_of, initial_labeled, stop_set_positions, stopping_signal
from strategies.audit import control_estimate, pool_estimates

log = logging.getLogger("camloop.simulate")

Progress = Callable[[dict], None]
PROJECT_ID = 0  # the simulation's one project, in its own artifacts folder


@dataclass
class SimData:
    """The pool, validation and test images of a run, and what names each pool image."""
    pool: object
    val: object
    test: object
    class_names: list[str]
    pool_uris: list[str]   # how a selected image is named in the output (a path under the folder)
    hflip_default: bool = True


def load_data(config: SimulationConfig) -> SimData:
    from engine.datasets import load_folder_splits, load_named, stratified_subset

    if config.folder is not None:
        pool, val, test, uris = load_folder_splits(config.folder, config.image_size, config.channels, seed=config.seed)
        data = SimData(pool, val, test, list(pool.class_names), uris)
    else:
        pool, val, test = load_named(config.dataset, seed=config.seed)
        # A mirrored digit is another glyph (or none); garments and photos are symmetric enough.
        data = SimData(pool, val, test, list(pool.class_names), [f"pool/{i}" for i in range(len(pool))],
                       hflip_default=config.dataset != "digits")
    rng = np.random.default_rng(config.seed)
    if config.pool_limit is not None and config.pool_limit < len(data.pool):
        keep = stratified_subset(data.pool.labels, config.pool_limit, rng)
        data.pool = data.pool.subset(keep)
        data.pool_uris = [data.pool_uris[i] for i in keep]
        # A quick run also gets a smaller validation split (read every epoch for early stopping
        # and every round as the evidence); the test split, which the curve is on, stays whole.
        val_cap = max(1000, config.pool_limit // 5)
        if val_cap < len(data.val):
            data.val = data.val.subset(stratified_subset(data.val.labels, val_cap, rng))
    if config.val_limit is not None and config.val_limit < len(data.val):
        data.val = data.val.subset(stratified_subset(data.val.labels, config.val_limit, rng))
    if config.test_limit is not None and config.test_limit < len(data.test):
        data.test = data.test.subset(stratified_subset(data.test.labels, config.test_limit, rng))
    return data


def model_from_images(config: SimulationConfig) -> tuple[SimulationConfig, dict | None]:
    """A --folder run's model settings as registering the folder chooses them (engine.model_choice):
    the model keys the run did not set (model, image_size, channels, pretrained, frozen_blocks)
    from a sample of the pool's images (the folder's pool/ when it has one, else every image), on
    the same device rule (only a `cuda` device counts as a GPU); the keys it set are kept and
    the others follow from them. Returns the run's config and the choice (None: nothing chosen)."""
    from engine.imageio import DEFAULT_MAX_PIXELS
    from engine.datasets import NAMED_MODEL_DEFAULTS
    from engine.model_choice import MODEL_KEYS, choose_model, cuda_named, folder_image_paths

    if config.folder is None:
        named = NAMED_MODEL_DEFAULTS.get(config.dataset or "")
        auto = [k for k in MODEL_KEYS if k not in config.model_fields_set and k in (named or {})]
        if not named or not auto:
            return config, None
        config = SimulationConfig.model_validate({**config.model_dump(), **{k: named[k] for k in auto}})
        return config, {"auto": auto, "chosen": {k: getattr(config, k) for k in MODEL_KEYS},
                        "why": f"the colour benchmark's model for the named data set {config.dataset}"}
    auto = [k for k in MODEL_KEYS if k not in config.model_fields_set]
    if not auto:
        return config, None
    root = Path(config.folder)
    paths = folder_image_paths(root / "pool" if (root / "pool").is_dir() else root)
    given = {k: getattr(config, k) for k in MODEL_KEYS if k not in auto}
    chosen = choose_model(paths, given, cuda_named(config.device), max_pixels=DEFAULT_MAX_PIXELS)
    config = SimulationConfig.model_validate({**config.model_dump(), **{k: chosen.config[k] for k in auto}})
    return config, {"auto": auto, "chosen": chosen.config, "why": chosen.why}


def _cache(folder: Path, name: str, images: np.ndarray, first_id: int, labels: np.ndarray) -> c.ImageRefs:
    """The split's pixels as one cache file, as ingest writes them; ids first_id, first_id+1, …"""
    path = folder / f"{name}.npy"
    np.save(path, np.ascontiguousarray(images, np.uint8))
    n = len(images)
    return c.ImageRefs.build(range(first_id, first_id + n), [path] * n, range(n), labels)


def run_simulation(config: SimulationConfig, progress: Progress | None = None, work_dir: Path | None = None) -> dict:
    """Run the loop; returns the simulate JSON (config, rounds, exclusions). `progress(record)`
    is called after each round with that round's record."""
    import torch

    from workers import jobs
    from workers.provenance import provenance

    if config.threads:
        torch.set_num_threads(config.threads)
    if config.device:
        jobs.DEVICE = config.device
    config, choice = model_from_images(config)
    data = load_data(config)
    project = config.project(hflip=data.hflip_default if config.hflip is None else config.hflip)
    names = data.class_names
    with tempfile.TemporaryDirectory(prefix="camloop-sim-", dir=work_dir) as tmp:
        layout = c.Layout(Path(tmp))
        cache = layout.cache_dir(PROJECT_ID)
        cache.mkdir(parents=True)
        n_pool = len(data.pool)
        pool = _cache(cache, "pool", data.pool.images, 0, data.pool.labels)
        val = _cache(cache, "val", data.val.images, n_pool, data.val.labels)
        test = _cache(cache, "test", data.test.images, n_pool + len(data.val), data.test.labels)
        trunk_dir = plan.trunk_cache(project, layout, PROJECT_ID)
        if trunk_dir and config.trunk_cache_dir:
            trunk_dir = config.trunk_cache_dir  # keyed by model, depth, weights and pixels: safe to share
        labeled = np.zeros(n_pool, bool)
        first = _first_labels(config, project, layout, pool, names, trunk_dir)
        labeled[first] = True
        # The audit's random labels: a random first batch (a typical one is not random) and every
        # control image; the rounds' shadow measurements (engine.audit).
        random_ids: list[int] = [] if project.typical_first_batch() else [int(i) for i in first]
        shadows: list[dict | None] = []
        # Experts who err, and second opinions (workers.noisy_oracle): None keeps the perfect oracle.
        book = _label_book(config, project, layout, pool, val, test, names, first, trunk_dir, data)
        # The reserve a round queues after its batch is with the experts while the next round
        # trains and scores: not a candidate then (the service scores unlabeled images only),
        # back in the pool once the next batch replaces it. The oracle answers batches only, as
        # the demo's does.
        reserved = np.zeros(n_pool, bool)
        status = {n: "active" for n in names}
        # The stopping signal's fixed sample of pool images, chosen as the service chooses it.
        stop_set = pool.take(stop_set_positions(pool.item_ids, None, project.stopping.stop_set_size, project.seed))
        stop_history: list[dict] = []
        # The simulated expert's votes, and the flagged images with a known region (item id → box
        # in decoded pixels): the counterexamples of every later round (engine.counterexamples).
        votes, flagged = _feedback_state(config, names)
        # With --bare-votes the expert's flags reach training without their box (bare votes):
        # item id → the box of the peak of the map the expert judged (engine.counterexamples.peak_box),
        # which feedback.bare peak trains on; the flagged images with a box stay empty.
        bare: dict[int, list[int]] | None = {} if votes is not None and config.bare_votes else None
        # The background-swap test (engine.swap_test) on a fixed sample of pool images with a
        # known region; with feedback.swap_suspects, its suspect classes' labeled images train
        # on counterexamples too (None: no regions, or feedback.swap_images 0).
        swap = _swap_state(project, data)
        history, models, records, exclusions = [], [], [], []
        control: list[dict] = []  # each round's control estimate (strategies.audit), for the evidence and the JSON
        previous: list[int] | None = None
        t_run = time.perf_counter()
        for number in range(1, config.rounds + 2):
            timings: dict[str, float] = {}
            files = layout.round_files(PROJECT_ID, number)
            files.dir.mkdir(parents=True)
            active = [status[n] == "active" for n in names]
            answered = pool if book is None else pool.model_copy(update={"labels": book.given.tolist()})
            planned = step.training(project, PROJECT_ID, step.TrainingFacts(
                number=number, class_names=names, active=active, labeled=answered.take(np.flatnonzero(labeled)),
                val=val, test=test, previous_train_ids=previous, files=files, stop_set=stop_set, trunk_dir=trunk_dir,
                random_ids=[i for i in random_ids if labeled[i]] if project.audit.enabled else None,
                shadow_history=shadows, flagged=dict(flagged or {}), bare=dict(bare or {}),
                swap_covered=_swap_covered(swap, labeled, answered.labels, project),
                unlabeled=pool.take(np.flatnonzero(~labeled)) if project.semi.method != "none" else None,
                confirmed=_confirmed(book, labeled)))
            split, manifest = planned.split, planned.manifest
            if number == config.rounds + 1 and not manifest.relabel_prune:
                # The last, train-only round asks nobody again: its fold models would be wasted
                # (with relabel.prune they choose what the last model trains on).
                manifest = manifest.model_copy(update={"relabel_folds": 0})
            c.write_manifest(files.train_manifest, manifest)
            t0 = time.perf_counter()
            jobs.train_round(str(files.train_manifest))
            timings["train"] = time.perf_counter() - t0
            previous = split.train.item_ids + (split.evidence.item_ids if split.source == "holdout" else [])
            metrics = json.loads(files.metrics.read_text())
            evidence = evidence_of(number, metrics, names)
            history.append(evidence)
            models.append(plan.TrainedModel(number, str(files.checkpoint), active))
            record = _record(number, metrics, labeled, data, names, status)
            if manifest.relabel_prune:
                # Labels left out of training (relabel.prune): how many, and how many were wrong.
                out_ids = metrics["train"]["pruned_item_ids"]
                record["pruned"] = {"labels": len(out_ids),
                                    "wrong": sum(int(book.wrong(i)) for i in out_ids) if book is not None else 0}
            if flagged is not None or swap is not None:  # the copies this round's model trained on beside its labels
                record["counterexamples_trained"] = int(metrics["train"].get("counterexamples", 0))
            if project.feedback.penalty > 0:  # the images the attribution penalty acted on this round
                record["penalty_images"] = int(metrics["train"].get("penalty_images", 0))
            if swap is not None:
                t0 = time.perf_counter()
                record["swap_test"] = swap.test(number, str(files.checkpoint), manifest.net, active, trunk_dir)
                timings["swap_test"] = time.perf_counter() - t0
            if "semi" in metrics:  # the pseudo-labels' counts and precision: guesses, not labels
                from workers.semi import precision

                record["semi"] = {**{k: v for k, v in metrics["semi"].items() if k not in ("item_ids", "classes")},
                                  "precision": precision(metrics["semi"], data.pool.labels)}
            stop_history.append({"round": number, "labels": int(labeled.sum()),
                                 "accuracy": (metrics.get("evidence") or {}).get("accuracy"),
                                 "stop_set": metrics.get("stop_set")})
            record["stopping"] = stopping_signal(project.stopping, stop_history)
            shadows.append(metrics.get("shadow"))
            record["audit"] = round_audit(project, shadows, rounds=number, labels_now=int(labeled.sum()),
                                          random_labels=sum(int(labeled[i]) for i in random_ids))
            last = number == config.rounds + 1
            # The rest of the round as the service runs it (engine.step): exclusion, gatekeepers,
            # the score manifest; scoring; the selection. The reserve a round queued is with the
            # experts, not in the unlabeled pool (the service's "queued").
            scored = step.after_training(project, PROJECT_ID, step.TrainedFacts(
                number=number, class_names=names, status=status, history=history, models=models,
                scorer=str(files.checkpoint), pool=pool.take(np.flatnonzero(~labeled & ~reserved)), files=files,
                shard_size=config.shard_size, trunk_dir=trunk_dir, control=control))
            for n in scored.newly_excluded:
                exclusions.append({"class": n, "round": number, "reason": scored.decisions[n].reason})
            status = scored.status
            record["excluded"] = [{"class": n, "round": number, "reason": scored.decisions[n].reason}
                                  for n in scored.newly_excluded]
            if not last:
                t0 = time.perf_counter()
                c.write_manifest(files.score_manifest, scored.manifest)
                for k in scored.manifest.shards:
                    jobs.score_shard(str(files.score_manifest), int(k))
                sel = step.select(project, step.SelectionFacts(
                    number, names, scored.active, step.Ranking.SCORES,
                    [files.score_file(int(k)) for k in sorted(scored.manifest.shards, key=int)], evidence=evidence,
                    # Nothing is labeled while the in-process jobs run; the votes are the simulated expert's (--expert-votes).
                    drop_ids=np.flatnonzero(labeled | reserved), control=control,
                    wrong_region_votes=votes.selection_votes() if votes is not None else None))
                picked = np.asarray([p.item_id for p in sel.batch], np.int64)
                if votes is not None:
                    record["expert_votes"] = _expert_votes(
                        votes, flagged, project.feedback.counterexamples,
                        [files.score_file(int(k)) for k in scored.manifest.shards], picked, data, bare,
                        project.feedback.bare)
                random_ids += [int(p.item_id) for p in sel.batch if getattr(p, "control", False)]
                reserved[:] = False
                reserved[[p.item_id for p in sel.reserve]] = True
                timings["score_select"] = time.perf_counter() - t0
                record["selected"] = [data.pool_uris[i] for i in picked]
                record["reserve"] = [data.pool_uris[p.item_id] for p in sel.reserve]
                record["kept_out_as_excluded"] = sel.gated
                if sel.dropquery_candidates is not None:  # selection.mode dropquery
                    record["dropquery_candidates"] = sel.dropquery_candidates
                if sel.selection_note:
                    record["selection_note"] = sel.selection_note
                # What pre-selection is decided by: the calibrated probability of each guess, and
                # whether the guess was right (the benchmark of guess.threshold).
                truth = {i: names[int(data.pool.labels[i])] for i in picked}
                record["guesses"] = [[p.scores.get("p_pred"), int(p.pred == truth[p.item_id])] for p in sel.batch]
                labeled[picked] = True  # the oracle: the true labels are already in pool.labels
                if book is not None:
                    # Second opinions on the labels this round trained on, answered with the batch.
                    from workers.noisy_oracle import ask_second_opinions

                    asked = (ask_second_opinions(book, files, project, names, labeled, number)
                             if project.relabel.enabled else [])
                    record["second_opinions"] = [data.pool_uris[i] for i in asked]
                    book.first_answers(picked, number)
                    labeled &= book.given >= 0
                # The control slice: the model that chose this batch against the experts' answers.
                given = data.pool.labels if book is None else book.given
                ctl = [p for p in sel.batch if p.control]
                est = control_estimate([(p.pred, names[int(given[p.item_id])] if given[p.item_id] >= 0 else None)
                                        for p in ctl], names, number)
                # What only a simulation knows: the true accuracy of that model on the candidates.
                est["pool_accuracy"] = _pool_accuracy(scored.manifest, files, data.pool.labels)
                control.append(est)
                record["control"] = est
                record["control_ids"] = [data.pool_uris[p.item_id] for p in ctl]
                record["control_pooled"] = pool_estimates(control[-project.control.rounds:], names)
                if sel.control_note:
                    record["control_note"] = sel.control_note
                if picked.size == 0:
                    last = True
            record["calibration"] = metrics.get("calibration")
            if "label_issues" in metrics:
                record["label_issues"] = {k: v for k, v in metrics["label_issues"].items() if k != "file"}
            if book is not None:
                record["label_noise"] = book.round_summary(labeled)
            record["seconds"] = {k: round(v, 3) for k, v in timings.items()}
            records.append(record)
            if progress is not None:
                progress(record)
            if last:
                break
            # Each round's files are read only by the next round's gatekeepers: keep checkpoints only.
            for f in files.dir.glob("scores_*.npz"):
                f.unlink()
    return {
        "config": {**config.model_dump(mode="json"), "hflip": project.hflip, "classes": names,
                   "pool_size": len(data.pool), "val_size": len(data.val), "test_size": len(data.test),
                   "torch_threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - t_run, 1)},
        "provenance": provenance(),
        **({"model_choice": choice} if choice is not None else {}),
        "first_batch": "typical" if project.typical_first_batch() else "random",
        "initial_labels": [data.pool_uris[i] for i in first],
        "rounds": records,
        "exclusions": exclusions,
        "control": {"share": project.control.share, "rounds": control,
                    "pooled": {**pool_estimates(control, names)} if control else None},
        **({"shortcut_report": _shortcut_report(votes, swap, names)} if votes is not None or swap is not None
           else {}),
        **({"counterexamples": _copies_planned(flagged, swap, labeled, answered.labels, project, bare)}
           if flagged is not None or swap is not None else {}),
        **({"bare_votes": _bare_summary(records, bare, project)} if bare is not None else {}),
        **({"label_noise": {"oracle_noise": config.oracle_noise, "noise_kind": config.noise_kind,
                            "flip_to": ({names[c]: names[int(t)] for c, t in enumerate(book.oracle.flip_to)}
                                        if book.oracle.flip_to is not None else None),
                            "labels": book.report(data.pool_uris, names)}} if book is not None else {}),
    }


def _confirmed(book, labeled: np.ndarray) -> list[int]:
    """The labeled pool images (item id = pool position) whose label two or more simulated experts
    agreed on (engine.relabel.confirmed): never left out of training (relabel.prune), never asked again."""
    if book is None:
        return []
    from engine.relabel import confirmed

    return [i for i, v in book.votes.items() if labeled[i] and confirmed(v)]


def _feedback_state(config: SimulationConfig, names: list[str]):
    """(the vote book, the flagged images with a known region: item id → box) of a run with
    --expert-votes; (None, None) without."""
    if not config.expert_votes:
        return None, None
    from workers.expert_votes import VoteBook

    return VoteBook(names), {}


def _swap_state(project, data: SimData):
    """The run's background-swap test (workers.swap_test.SwapState), or None: no pool image with a
    region that leaves something outside, or feedback.swap_images 0."""
    from engine import swap_test

    h, w = data.pool.images.shape[1:3]
    picked = swap_test.sample(data.pool.regions, h, w, project.feedback.swap_images, project.seed)
    if picked.size < 2:
        return None
    from workers.swap_test import SwapState

    untestable = int((~swap_test.testable(data.pool.regions, h, w)).sum()) if data.pool.regions is not None else 0
    return SwapState(data.pool.images, data.pool.regions, data.pool.labels, data.class_names, picked, project.seed,
                     untestable)


def _swap_covered(swap, labeled: np.ndarray, labels, project) -> dict:
    """The labeled images the swap test's feedback gives copies this round (item id → box;
    feedback.swap_suspects, swap_scope; engine.step gives the flagged ones the same copies while
    it acts, and engine.counterexamples.plan keeps those the round trains on)."""
    if swap is None or not project.feedback.swap_suspects or project.feedback.swap_copies <= 0:
        return {}
    return swap.suspect_images(labeled, np.asarray(labels), project.feedback.swap_scope)


def _copies_planned(flagged: dict | None, swap, labeled: np.ndarray, labels, project, bare: dict | None = None) -> int:
    """Copies a next round would plan (engine.step.feedback_copies, the rule its training uses)."""
    from engine.step import feedback_copies

    images, wrong, copies, _ = feedback_copies(project.feedback, flagged or {},
                                               _swap_covered(swap, labeled, labels, project), bare)
    return (len(images) + len(wrong)) * copies


def _bare_summary(records: list[dict], bare: dict, project) -> dict:
    """The bare votes of a --bare-votes run: how many, how many had a peak box (the peak-region
    copies' sources under feedback.bare peak), and the copies a next round would plan for them."""
    from engine.step import feedback_copies

    votes = sum(int((r.get("expert_votes") or {}).get("flagged", 0)) for r in records)
    _, wrong, copies, _ = feedback_copies(project.feedback, {}, {}, bare)
    return {"votes": votes, "with_peak_box": len(bare), "with_peak_copies": len(wrong) if copies > 0 else 0,
            "copies_planned": len(wrong) * copies, "bare": project.feedback.bare}


def _shortcut_report(votes, swap, names: list[str]) -> dict:
    """The run's shortcut report: the expert's votes (workers.expert_votes) and the last model's
    background-swap test; `suspect` the classes either names, `suspect_by_votes` and
    `suspect_by_swap` each's."""
    from engine.swap_test import union_suspects

    out = votes.report() if votes is not None else {}
    if swap is not None and swap.last is not None:
        out["swap"] = {**swap.last, "named_in_round": swap.named_in_round}
    return {**out, **union_suspects(names, out.get("suspect", []), out.get("swap"))}


def _expert_votes(votes, flagged: dict, copies: int, score_files, picked: np.ndarray, data: SimData,
                  bare: dict | None = None, bare_mode: str = "none") -> dict:
    """The simulated expert's wrong-region votes on the queued batch (workers.expert_votes); the
    flagged images join `flagged` (their counterexamples are made by the train jobs of the later
    rounds, engine.counterexamples, as the service's are) — or, with --bare-votes (`bare` not
    None), `bare`: the box of the peak of the map the expert judged (this round's, the model that
    queued the image), and the known box is not handed to training."""
    from workers.expert_votes import guess_maps, vote

    maps, guessed = guess_maps(score_files, picked)
    regions = data.pool.regions
    boxes = regions[picked] if regions is not None else np.full((len(picked), 4), -1, np.int64)
    share, flagged_now = vote(maps, boxes, data.pool.images.shape[1:3])
    summary, ids = votes.add(picked, data.pool.labels[picked], guessed, share, flagged_now)
    out = {**summary, "flagged_images": [data.pool_uris[i] for i in ids]}
    if bare is not None:
        from engine.counterexamples import peak_box

        at = {int(i): k for k, i in enumerate(picked)}
        hw = data.pool.images.shape[1:3]
        peaks = {int(i): peak_box(maps[at[int(i)]], hw) for i in ids}
        bare.update({i: b for i, b in peaks.items() if b is not None})
        n_peak = sum(b is not None for b in peaks.values())
        # What only a simulation knows: how much of each peak box lies on the object (its known
        # box) — 0 is the wrong region truly off the object, 1 the peak on it.
        on_object = [_overlap(b, regions[i]) for i, b in peaks.items() if b is not None and regions is not None]
        out["bare"] = {"votes": len(ids), "with_peak_box": n_peak,
                       "peak_on_object": round(float(np.mean(on_object)), 4) if on_object else None,
                       "peak_off_object": int(sum(v == 0 for v in on_object))}
        if copies > 0 and bare_mode == "peak" and n_peak:
            out["counterexamples_made"] = copies * n_peak
        return out
    # The simulated expert votes only where the region is known: every flagged image has one.
    flagged.update({int(i): [int(v) for v in regions[i]] for i in ids})
    if copies > 0 and ids:
        out["counterexamples_made"] = copies * len(ids)
    return out


def _overlap(box, region) -> float:
    """Share of `box`'s area inside `region` (both [x0, y0, x1, y1], x1/y1 exclusive)."""
    w = max(0, min(box[2], int(region[2])) - max(box[0], int(region[0])))
    h = max(0, min(box[3], int(region[3])) - max(box[1], int(region[1])))
    return w * h / max(1, (box[2] - box[0]) * (box[3] - box[1]))


def _label_book(config: SimulationConfig, project, layout, pool, val, test, names, first, trunk_dir, data):
    """The simulated experts' answers so far (None: a perfect oracle and no second opinions, the
    path every run took before experts could err). A confusable flip needs the confusion of a
    clean model: one extra training on the initial images with their true labels."""
    if config.oracle_noise <= 0 and not project.relabel.enabled:
        return None
    from workers.noisy_oracle import confusable_targets, make_book, reference_confusion

    flip_to = None
    if config.noise_kind == "confusable" and config.oracle_noise > 0:
        flip_to = confusable_targets(reference_confusion(project, layout, pool, val, test, names, first, trunk_dir,
                                                         PROJECT_ID))
    book = make_book(config, data.pool.labels, len(names), flip_to)
    book.first_answers(first, 0)
    return book


def _first_labels(config: SimulationConfig, project, layout: c.Layout, pool: c.ImageRefs, names: list[str],
                  trunk_dir: str | None) -> np.ndarray:
    """Pool positions labeled before round 1: `initial` at random, or, with a typical first batch
    (`first_batch`, a pretrained model), the service's cold start: the pretrained model embeds the
    pool (score jobs without a checkpoint) and TypiClust picks `initial` typical images."""
    from workers import jobs

    if not project.typical_first_batch():
        return initial_labeled(len(pool), config.initial, config.seed)
    files = layout.round_files(PROJECT_ID, 0)
    files.dir.mkdir(parents=True)
    score = plan.score_manifest(project, PROJECT_ID, 1, names, [True] * len(names), None, pool, config.shard_size, [],
                                files, trunk_dir)
    c.write_manifest(files.score_manifest, score)
    for k in score.shards:
        jobs.score_shard(str(files.score_manifest), int(k))
    sel = step.select(project, step.SelectionFacts(
        1, names, [True] * len(names), step.Ranking.TYPICAL,
        [files.score_file(int(k)) for k in sorted(score.shards, key=int)], budget=config.initial, reserve=0))
    return np.asarray(sorted(p.item_id for p in sel.batch), np.int64)  # pool ids are pool positions


def _record(number: int, metrics: dict, labeled: np.ndarray, data: SimData, names: list[str], status: dict) -> dict:
    """One round's line of the simulate JSON, from the train job's metrics."""
    test_m = metrics.get("test") or {}
    conf = np.asarray(test_m.get("confusion") or [[0]])
    # The job scores accuracy over active classes' images; the curve is over the whole test set
    # (an excluded class's images count as wrong: the model no longer answers them), so runs
    # with and without exclusion are measured on the same images.
    acc_all = float(np.trace(conf) / conf.sum()) if conf.sum() else 0.0
    pc = test_m.get("per_class") or {}
    f1 = np.array([(pc.get(n) or {}).get("f1", 0.0) for n in names])
    support = np.array([(pc.get(n) or {}).get("support", 0) for n in names])
    counts = np.bincount(data.pool.labels[labeled], minlength=len(names))
    ev = metrics.get("evidence") or {}
    return {
        "round": number,
        "labeled": int(labeled.sum()),
        "accuracy": acc_all,
        "macro_f1": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "accuracy_active": float(test_m.get("accuracy", 0.0)),
        "macro_f1_active": float(test_m.get("macro_f1", 0.0)),
        "weighted_f1": float(test_m.get("weighted_f1", float("nan"))),
        "val_accuracy": float(ev.get("accuracy", float("nan"))),
        # What the exclusion rule read: per class [correct, total] on the evidence.
        "evidence": {n: [int(((ev.get("per_class") or {}).get(n) or {}).get("correct") or 0),
                         int(((ev.get("per_class") or {}).get(n) or {}).get("support") or 0)] for n in names},
        "per_class": {n: {"accuracy": float((pc.get(n) or {}).get("accuracy", 0.0)),
                          "support": int((pc.get(n) or {}).get("support", 0)),
                          "labeled": int(counts[i]), "status": status[n]} for i, n in enumerate(names)},
    }


def _pool_accuracy(manifest, files, truth: np.ndarray) -> float | None:
    """The accuracy of the model that scored the round on the images it could pick (scored, not
    gated by a gatekeeper), the batch included: the figure the control slice estimates."""
    from engine.contracts import SCORE_GATED, SCORE_ITEM_IDS, SCORE_PRED
    from engine.scorefiles import ScoreFile

    right = n = 0
    for k in sorted(manifest.shards, key=int):
        f = ScoreFile(Path(files.score_file(int(k))))
        ids = np.asarray(f[SCORE_ITEM_IDS], np.int64)
        pred = np.asarray(f[SCORE_PRED], np.int64)
        keep = np.ones(ids.size, bool)
        if SCORE_GATED in f.members:
            keep &= ~np.asarray(f[SCORE_GATED], bool)
        right += int((pred[keep] == truth[ids[keep]]).sum())
        n += int(keep.sum())
    return round(right / n, 6) if n else None
