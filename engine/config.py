"""The one typed configuration of a project, and of a simulation built on it.

`ProjectConfig` is the only source of defaults: the API validates a project's `config` with it
(and shows it in the OpenAPI schema), the CLI's options take their defaults from it, and
`camloop simulate` and `camloop demo` build on it. A wrong type, a value out of range or an
unknown key is an error naming the field — when the config is given, not rounds later inside a
job. Nothing here imports torch (the API process validates configs).

Types are strict on purpose: `"7"`, `2.5` or `true` for an integer, `"yes"` for a boolean, are
refused rather than coerced, so what a client sent is what runs.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, field_validator,
                      model_validator)

from engine.model_specs import check_model_config, get_spec, model_names
from strategies.stopping import AccuracyPlateau, StabilisingPredictions

# Images per score job (a shard of the unlabeled pool): the service's CAMLOOP_SCORE_SHARD_SIZE
# and `camloop simulate`'s shard_size default to it.
SCORE_SHARD_SIZE = 4096


def _number(v: Any) -> Any:
    # A float field that takes ints and floats, never a string or a boolean (pydantic's lax
    # float would turn "0.5" into 0.5 and True into 1.0).
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"must be a number, got {type(v).__name__}")
    return float(v)


Number = Annotated[float, BeforeValidator(_number)]
Fraction = Annotated[float, BeforeValidator(_number), Field(ge=0.0, le=1.0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_default=True)


class ExclusionConfig(_Strict):
    """When and how a class that stays hopeless is excluded (out of training, queue and head).

    `rule` "evidence" (strategies.exclusion.EvidenceRule): excluded when, in each of the last
    `patience` + 1 evaluated rounds, the held-out accuracy's Wilson upper bound at `confidence` is
    at most chance (`chance_margin` / active classes), and the slope over those rounds is not
    significantly above `min_rise`, unless some round showed it learned (lower bound above chance). `rule` "threshold" (the rule before issue 15): below `exclude_below` over
    the window and a gain under `min_gain`. `exclude_after`, `patience`, `min_active` serve both."""

    enabled: StrictBool = Field(False, description="let the rule exclude classes (an engineer can always exclude or "
                                "include one by hand); off by default, and the section's other keys given without "
                                "it while it is off are refused (they would not act)")
    rule: Literal["evidence", "threshold"] = Field("evidence", description="evidence: an interval on the held-out count and a "
                                                   "slope with its standard error; threshold: fixed exclude_below and min_gain")
    exclude_after: StrictInt = Field(3, ge=1, le=1000, description="first round whose evaluation may exclude a class")
    patience: StrictInt = Field(2, ge=1, le=100, description="the window: the last patience + 1 evaluated rounds")
    confidence: Number = Field(0.9, ge=0.5, le=0.999, description="evidence rule: two-sided confidence of the interval on "
                                                                  "accuracy and on the slope")
    chance_margin: Number = Field(1.0, ge=0.1, le=10.0, description="evidence rule: the chance line is this / active classes")
    min_rise: Number = Field(0.0, ge=0.0, le=1.0, description="evidence rule: a rise per round significantly above this "
                                                              "keeps the class")
    exclude_below: Fraction = Field(0.5, description="threshold rule: held-out accuracy a class must stay below")
    min_gain: Number = Field(0.01, ge=0.0, le=1.0, description="threshold rule: a gain at least this large over the window keeps the class")
    min_active: StrictInt = Field(2, ge=2, le=100000, description="never fewer active classes than this")


class HoldoutConfig(_Strict):
    """Labeled images held out as evidence when the project registered no validation split.

    Each labeled pool image is held out or not by a hash of (seed, item id): the choice never
    changes as labels accumulate, so an image never moves from training into the evidence."""

    fraction: Fraction = Field(0.2, description="share of the labeled pool images held out per class")
    min_per_class: StrictInt = Field(2, ge=0, le=1000, description="held out per class at least (when it has more labels than this)")


class StoppingConfig(_Strict):
    """The stopping signal (strategies.stopping): shown in the metrics and `camloop status`; with
    `stop_when_stable` it also keeps `auto_next_round` from starting another round."""

    stop_set_size: StrictInt = Field(1000, ge=0, le=1_000_000,
                                     description="pool images (a fixed random sample, labeled or not) every trained "
                                                 "model predicts on; 0: no kappa")
    # The criteria's own defaults (strategies.stopping) are the project's.
    kappa: Fraction = Field(StabilisingPredictions.kappa,
                            description="predictions are stable when Cohen's kappa between successive models on "
                                        "the stop set stays at least this (Bloodgood & Vijay-Shanker: 0.99)")
    window: StrictInt = Field(StabilisingPredictions.window, ge=1, le=100,
                              description="for this many successive comparisons")
    plateau_gain: Number | None = Field(AccuracyPlateau.min_gain, ge=0.0, le=1.0,
                                        description="the held-out accuracy has plateaued when the last "
                                                    "`plateau_patience` rounds did not beat the earlier best by this "
                                                    "much (none: not a reason to stop)")
    plateau_patience: StrictInt = Field(AccuracyPlateau.patience, ge=1, le=100, description="rounds without that gain")
    max_labels: StrictInt | None = Field(None, ge=1, description="label budget: stop once this many pool images are "
                                                                 "labeled (none: no budget)")


class GuessConfig(_Strict):
    """How the model's guess is shown to experts in Label Studio (service.labelstudio.guess).

    The probability is the calibrated one (temperature scaling fitted on the round's evidence,
    workers.calibration). `preselect`: the guess is ticked in advance only when that probability
    is at least `threshold` (below it, shown but not ticked); `show`: shown, never ticked;
    `hidden`: blind labeling, no guess and no heatmap. Whatever the mode, a random
    `hidden_share` of the images are shown blind: the control that measures anchoring (how much
    more often each expert agrees with the guess when it is shown)."""

    mode: Literal["preselect", "show", "hidden"] = Field("preselect", description="preselect: ticked in advance at or "
                                                          "above `threshold`, shown but not ticked below; show: never "
                                                          "ticked; hidden: blind labeling")
    threshold: Fraction = Field(0.9, description="calibrated probability at which the guess is pre-selected (docs/"
                                                 "benchmarks.md: on the queued images of the Fashion-MNIST benchmark, "
                                                 "guesses at or above 0.9 were right 93 % of the time, 0.8: 87 %)")
    hidden_share: Fraction = Field(0.1, description="share of images shown without the guess whatever the mode (the "
                                                    "anchoring control; 0: none)")
    anchoring_gap: Fraction = Field(0.1, description="flag an expert whose agreement with the guess is this much "
                                                     "higher when shown than when hidden (and significantly so)")


class RelabelConfig(_Strict):
    """Wrong labels found and asked again (workers.label_issues, engine.relabel).

    Each round, out-of-fold probabilities of the labeled images (k models, each trained without
    one fold) go to cleanlab's `find_label_issues` (and, by default, the round's model's features to
    cleanlab Datalab's kNN label check: `ranking`); the most suspicious labels, at most `share` of
    the budget, go back to the experts as second opinions (another expert, the first answer and
    the model's guess hidden). Off by default: it trains `folds` more models a round, and needs
    at least two experts."""

    enabled: StrictBool = Field(False, description="find suspicious labels each round and ask for second opinions; "
                                "off by default, and the section's other keys given without it while it is off are "
                                "refused (they would not act)")
    share: Fraction = Field(0.15, description="second opinions a round, at most this share of the budget (docs/"
                                              "benchmarks.md: 0.15 fixed 73 % of wrong labels within two rounds "
                                              "for 12 % extra labels, 0.10 fixed 66 %)")
    folds: StrictInt = Field(3, ge=2, le=20, description="cross-validation folds of the out-of-fold probabilities")
    max_per_item: StrictInt = Field(2, ge=1, le=10, description="second opinions an image may be asked for in all")
    tie_break: Literal["model", "review"] = Field("model", description="two experts who disagree: model, the answer "
                                                  "the out-of-fold probabilities favour (cleanlab's majority-vote "
                                                  "rule); review: no label until someone decides")
    ranking: Literal["auto", "self_confidence", "self_confidence+knn"] = Field(
        "auto", description="the order of suspicion of the labels: self_confidence, cleanlab's label quality from "
        "the out-of-fold probabilities; self_confidence+knn, its mean with cleanlab Datalab's k-nearest-neighbour "
        "label score on the round's model's features (the images the neighbours label otherwise; its suspects join "
        "the out-of-fold ones; pruning keeps self-confidence: it runs before the round's model exists); auto "
        "(default), self_confidence when blocks are frozen (frozen_blocks > 0), else self_confidence+knn "
        "(engine.relabel.resolved_ranking). docs/benchmarks.md, 3 seeds each: on Fashion-MNIST's small CNN the kNN "
        "score fixed more wrong labels within two rounds on every seed (confusable 50 % against 43 %, uniform 79 % "
        "against 73 %), on the colour benchmark's frozen pretrained trunk fewer on every seed (19 % against 25 %, "
        "42 % against 53 %)")
    knn_k: StrictInt = Field(25, ge=1, le=1000, description="neighbours of the kNN label score (ranking "
                                                            "self_confidence+knn; fewer labels: all but one)")
    prune: StrictBool = Field(False, description="train the round's model without cleanlab's suspects whose label "
                                                 "no second expert has confirmed (confident learning's pruning); the "
                                                 "labels stay labels: counted, exported, asked again")
    prune_max: Fraction = Field(0.04, description="prune at most this share of the round's training labels, the "
                                                  "most suspicious first: cleanlab flags far more than the noise "
                                                  "(docs/benchmarks.md: at 0.1 pruning cost 0.4 points, at 0.04 it "
                                                  "gained 0.2 on 3 seeds)")


class AuditConfig(_Strict):
    """The audit of the lift (strategies.audit, issue 22): does active learning beat random picking
    on this project? Each round the worker also trains the round's model on the project's random
    labels only (a random first batch and the control slice): the random learning curve, fitted and
    inverted at the current model's unbiased accuracy (docs/design.md)."""

    enabled: StrictBool = Field(True, description="train the shadow models on random labels (three the first time, "
                                                  "then one whenever the random labels grew by a quarter; each on "
                                                  "at most the random labels) and report the audit in the metrics")
    min_rounds: StrictInt = Field(3, ge=1, le=1000, description="trained rounds before a verdict (too_early before)")
    min_points: StrictInt = Field(3, ge=2, le=100, description="random-label set sizes measured before a verdict")
    min_random_labels: StrictInt = Field(20, ge=2, le=1_000_000, description="random labels before a verdict")


class ControlConfig(_Strict):
    """The random control slice (engine.selection, strategies.audit).

    Each round whose batch a trained model ranks, `share` of the batch (at least
    `min_per_round`) is drawn uniformly from the images the strategy could have picked and
    queued among the ranked ones, in a seeded random order: experts cannot tell them apart. The
    model that chose the batch predicted them before any model trained on them, so their labels
    are an unbiased estimate of its accuracy on the pool still unlabeled (overall and per class,
    with Wilson intervals). A budget under 2 × `min_per_round` gets no control (the round's
    progress says so in `control_note`). Without a validation split, the metrics, the exclusion
    rule and the class budget read the control labels of the last `rounds` rounds (each compared
    with the guess of the model that chose it) for every class with at least `min_per_class` of
    them, and the held-out labeled images for the others. The control images then join
    training like any label."""

    share: Fraction = Field(0.1, description="share of each model-ranked batch drawn uniformly from the candidates "
                                             "(0: no control slice)")
    min_per_round: StrictInt = Field(5, ge=1, le=100000, description="control images a round at least (when share > 0); "
                                                                     "a budget under twice this gets none")
    rounds: StrictInt = Field(3, ge=1, le=1000, description="evidence: the control labels of this many latest rounds "
                                                            "are pooled")
    min_per_class: StrictInt = Field(10, ge=1, le=100000,
                                     description="evidence: a class's pooled control labels replace its held-out "
                                                 "labeled images from this many on")

    def count(self, budget: int) -> tuple[int, str | None]:
        """(control images in a batch of `budget`, why none when the share asks for some)."""
        if self.share <= 0:
            return 0, None
        if budget < 2 * self.min_per_round:
            return 0, (f"no control slice: a batch of {budget} is under twice control.min_per_round "
                       f"({self.min_per_round}); the accuracy estimate gets no unbiased labels this round")
        return max(self.min_per_round, int(round(self.share * budget))), None


class SelectionConfig(_Strict):
    """How the model-ranked picks are taken from the fused score (strategies.stochastic).

    `topk`, the default: the highest fused scores (per class quota, spread by k-center where the
    strategy asks). The others draw the picks without replacement (Gumbel-top-k) with
    probabilities growing with the fused score (stochastic batch acquisition, Kirsch et al.,
    TMLR 2023): `softrank` ∝ rank^−β (rank 1 = the highest fused score; scale-free), `power` ∝
    score^β (the fused score is a weighted mean of normalised ranks in [0, 1], so β = 1 is close
    to uniform here), `softmax` ∝ exp(β · score). The draw is seeded by the project's seed and the
    round; quotas, k-center, the reserve and the control slice run on it as on the scores.

    `dropquery` (Gupte et al., TMLR 2024; strategies.dropquery): the score job also runs `passes`
    forward passes of the head with dropout at rate `dropout` on the pooled features; the images
    at least half of whose passes predict another class than the plain prediction are the
    candidates, and each class's quota is k-means (scikit-learn) of its candidates' embeddings
    into as many clusters as picks, the candidate nearest each centre picked; too few candidates:
    the rest from the fused score's top. It replaces the top-k and the k-center step; the class
    quotas, the reserve (DropQuery over what the batch left) and the control slice stay."""

    mode: Literal["topk", "softrank", "power", "softmax", "dropquery"] = Field(
        "topk", description="topk: the highest fused scores; softrank, power, softmax: a seeded draw without "
                            "replacement with probabilities ∝ rank^−β, score^β or exp(β·score) (docs/benchmarks.md, "
                            "stochastic batch acquisition); dropquery: the centres of k-means clusters of the images "
                            "dropout passes disagree on (passes, dropout)")
    beta: Number = Field(1.0, ge=0.0, le=1e6, description="the draw's sharpness: 0 uniform, large → top-k "
                                                          "(the paper's default 1)")
    passes: StrictInt = Field(3, ge=1, le=64, description="dropquery: forward passes of the head with dropout on its "
                                                           "features (the paper's 3)")
    dropout: Number = Field(0.75, gt=0.0, lt=1.0, description="dropquery: the passes' dropout rate on the pooled "
                                                              "features (the paper's code: 0.75)")
    calibrated_scores: StrictBool = Field(False, description="compute the uncertainty and committee scores from the "
                                                             "round's temperature-scaled probabilities (the "
                                                             "temperature the guesses are shown with) instead of the "
                                                             "model's own softmax")


class FeedbackConfig(_Strict):
    """Explanatory feedback that trains (issue 25): each labeled image an expert flagged "wrong
    region" whose object region is known (the folder's regions.json, or the rectangle the expert
    drew in Label Studio) adds `counterexamples` copies, with everything outside the region
    randomised and the image's label, to the training set of every later round (CAIPI, Teso &
    Kersting 2019; engine.counterexamples). The copies are no labels: not counted, exported nor
    read as evidence. A vote without a known region (a bare vote) makes none by default (counted
    in the round's progress); with `bare: peak` it gets the same copies with the INSIDE of the
    wrong region randomised, the wrong region being the peak cell of the Grad-CAM map the expert
    judged (engine.counterexamples.peak_box; measured in docs/benchmarks.md).
    The background-swap test (`swap_images`, engine.swap_test) names the guessed classes whose
    guesses follow a pasted background; with `swap_suspects` (the default), once it has named one,
    the labeled images with a region of every class (`swap_scope` all) get `swap_copies` `shuffle`
    copies, flagged or not: on the shortcut benchmark +13.4 points on the cue-free test split, on
    the shortcut-free one nothing named, nothing trained (docs/benchmarks.md). Both run in
    `camloop simulate` and in the service (a worker job after each round's batch is queued:
    service.rounds.swap)."""

    counterexamples: StrictInt = Field(0, ge=0, le=10, description="copies per flagged image with a known region "
                                       "(0: votes only move the class budget, until the swap test's feedback acts)")
    fill: Literal["noise", "shuffle"] = Field("noise", description="what replaces the outside of the region: noise, "
                                              "uniform random colours; shuffle, the outside of another training "
                                              "image, at random (CAIPI's: it removes a cue without knowing what "
                                              "it is, with a background that looks like the data's)")
    bare: Literal["none", "peak"] = Field("none", description="a flagged image with no known region (a bare vote): "
                                          "none, no copies; peak, `counterexamples` copies (while the swap test's "
                                          "feedback acts, `swap_copies`) with the inside of the box of the peak cell "
                                          "of the map the expert judged randomised by `fill`, the rest kept")
    swap_images: StrictInt = Field(1000, ge=0, le=100_000, description="the background-swap test (engine.swap_test; "
                                   "camloop simulate, and the service's worker): after each round's training, up to this many "
                                   "pool images with a known region are guessed with their outside pasted from "
                                   "other images (objects removed); a guessed class whose guesses follow the pasted "
                                   "background is suspect in the shortcut report (0: off)")
    swap_suspects: StrictBool = Field(True, description="once the background-swap test names a class, labeled "
                                      "images with a known region (swap_scope: every class's by default) get "
                                      "`swap_copies` copies in every later round, flagged by an expert or not")
    swap_copies: StrictInt = Field(4, ge=0, le=10, description="with swap_suspects: `shuffle` copies per labeled image "
                                   "the swap test's feedback covers (swap_scope); while it acts, the experts' flagged "
                                   "images get these copies too, in place of `counterexamples` (0: off)")
    swap_scope: Literal["named", "all", "always"] = Field(
        "all", description="with swap_suspects: whose labeled images get the copies — named, the classes the swap "
        "test has named; all, every class's, once the test has named any; always, every class's from the first "
        "round, named or not")
    penalty: Number = Field(0.0, ge=0.0, le=100.0, description="the attribution penalty (\"right for the right "
                            "reasons\", Ross et al. 2017): the images that get counterexamples (the flagged ones with a "
                            "known region, and the swap feedback's) also add this weight × the share of their input "
                            "gradients' energy that falls outside their region to the training loss (0: off; "
                            "measured in docs/benchmarks.md)")
    penalty_at: Literal["trained", "pixels"] = Field(
        "trained", description="the input the penalty's gradients are taken at: trained, what the trained blocks "
        "see (on the trunk cache its cached output, 3 × 3 cells at 96 px: cheap, coarse); pixels, the image, "
        "through the frozen trunk too (a backward pass through it for each penalised image)")


class SemiConfig(_Strict):
    """Semi-supervised rounds (issue 24, engine.semi): the round also trains on unlabeled pool
    images with a confident guess of their class (pseudo-labels). Pseudo-labels are no labels:
    not counted, exported, read as evidence, by the control estimate, the audit or the stopping
    signal; they exist inside the train job only (docs/design.md)."""

    method: Literal["none", "propagation", "self-training"] = Field(
        "none", description="none; propagation: label spreading over the cached frozen trunk's embeddings "
        "(needs the trunk cache); self-training: the round's model guesses the pool, a second model trains on "
        "the labels and the confident guesses (twice a round's training)")
    threshold: Fraction = Field(0.9, description="a guess becomes a pseudo-label at this confidence or more")
    weight: Number = Field(0.5, gt=0.0, le=1.0, description="loss weight of a pseudo-labeled image (a label's is 1)")
    max_ratio: Number = Field(1.0, ge=0.0, le=100.0, description="pseudo-labels per class at most this × the "
                              "class's training labels")
    neighbours: StrictInt = Field(10, ge=1, le=200, description="propagation: neighbours per image in the graph")
    alpha: Number = Field(0.2, gt=0.0, lt=1.0, description="propagation: how far labels spread (label spreading's "
                          "alpha; small keeps the labels clamped)")
    max_pool: StrictInt = Field(10000, ge=1, le=10_000_000, description="unlabeled images considered a round at "
                                "most (a seeded sample of the pool)")


class ProjectConfig(_Strict):
    """A project's settings. Every key is optional; these defaults are camloop's defaults."""

    model: str = Field("small-cnn", description="backbone (engine.model_specs): " + ", ".join(model_names()))
    image_size: StrictInt = Field(28, ge=8, le=1024, description="side of the model's square input, pixels")
    channels: Literal[1, 3] = Field(1, description="1 (greyscale) or 3 (colour)")
    pretrained: StrictBool | None = Field(None, description="start from local ImageNet weights: none = when the model "
                                                            "has them installed; true = required (422 naming the models "
                                                            "that have them); false = random weights")
    frozen_blocks: StrictInt = Field(0, ge=0, le=64, description="first backbone blocks kept frozen")
    trunk_cache: StrictBool = Field(True, description="with pretrained weights and frozen blocks: compute the frozen "
                                                     "blocks' output of each image once and train and score the rest "
                                                     "from it (off: every round runs the whole network on pixels)")
    strategy: str = Field("hybrid", description="acquisition strategy (strategies.registry)")
    budget: StrictInt = Field(100, ge=1, le=1_000_000, description="images queued for experts per round")
    reserve: StrictInt | None = Field(None, ge=0, le=1_000_000,
                                      description="next-ranked images queued after the batch, which experts label while "
                                                  "the next model trains (none: half the budget; 0: no reserve)")
    duplicate_new: StrictInt = Field(2, ge=1, le=16, description="times each new label enters training (augmented copies)")
    balance: StrictBool = Field(True, description="duplicate classes with few labels toward the others")
    balance_to: Literal["max", "median"] = Field("max", description="the count balancing brings a class up to: the "
                                                 "largest class's or the median class's")
    balance_max_repeats: StrictInt | None = Field(None, ge=1, le=1000, description="balancing repeats no image more than "
                                                  "this many times an epoch (none: no cap; the cap measured worse, "
                                                  "docs/benchmarks.md)")
    epochs: StrictInt = Field(10, ge=1, le=10000, description="training epochs a round")
    batch_size: StrictInt | None = Field(None, ge=1, le=65536, description="training batch; none: sized to the labeled set")
    hflip: StrictBool = Field(True, description="mirror images in augmentation (off where left/right matters)")
    mc_samples: StrictInt = Field(8, ge=0, le=256, description="MC-dropout passes of the committee")
    seed: StrictInt = Field(0, ge=0, le=2**31 - 1)
    exclusion: ExclusionConfig = Field(default_factory=ExclusionConfig)
    holdout: HoldoutConfig = Field(default_factory=HoldoutConfig)
    ls_project_id: StrictInt | str | None = Field(None, description="attach this Label Studio project (id or exact title)")
    first_batch: Literal["random", "typical", "auto"] = Field(
        "auto", description="round 1 of a project with no labels: a random sample, or representative images "
                            "(typical: TypiClust over the pretrained model's embeddings of the pool, one typical "
                            "image per cluster; needs pretrained weights, else random); auto, the default: typical "
                            "when the model starts from pretrained weights (+4.9 points after the first 50 labels "
                            "on the colour benchmark, docs/benchmarks.md), random otherwise")
    keep_best_model: StrictBool = Field(False, description="a round whose model is worse on the evidence than the "
                                                          "model in use, beyond the noise (its accuracy's 90 % Wilson "
                                                          "upper bound below the other's accuracy), does not replace "
                                                          "it: the better one keeps scoring, pre-labeling and "
                                                          "predicting (engine.model_serving)")
    auto_next_round: StrictBool = Field(False, description="start the next round as soon as a batch is labeled")
    stop_when_stable: StrictBool = Field(False, description="with auto_next_round: start no further round when the "
                                                            "stopping signal says stop (the closed round says why)")
    stopping: StoppingConfig = Field(default_factory=StoppingConfig)
    guess: GuessConfig = Field(default_factory=GuessConfig)
    relabel: RelabelConfig = Field(default_factory=RelabelConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    semi: SemiConfig = Field(default_factory=SemiConfig)

    @property
    def reserve_size(self) -> int:
        """The reserve queued after each batch: as configured, or half the budget — enough that an
        expert at a few seconds an image does not run dry while the next model trains
        (docs/benchmarks.md, expert idle time)."""
        return self.budget // 2 if self.reserve is None else int(self.reserve)

    def typical_first_batch(self) -> bool:
        """Whether a cold start clusters pretrained embeddings (TypiClust) rather than sampling at
        random: asked for (typical, or auto) and the model starts from installed pretrained weights."""
        from engine.model_specs import weights_installed

        return self.first_batch != "random" and self.pretrained is not False and weights_installed(self.model)

    def uses_trunk_cache(self) -> bool:
        """Whether rounds train and score from the cached frozen trunk (workers.trunk_cache): asked
        for, some blocks frozen, and those blocks pretrained (random frozen blocks are refused by
        check_model_config, so frozen blocks mean installed weights)."""
        return self.trunk_cache and self.frozen_blocks > 0 and self.pretrained is not False

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        get_spec(v)  # ValueError names the known models
        return v

    @model_validator(mode="after")
    def _buildable(self):
        # The model's own needs (sizes it accepts, weights installed, freezing only pretrained
        # blocks): refused here, not by a job a round later.
        check_model_config(self.model, self.pretrained, self.image_size, self.channels, self.frozen_blocks)
        if self.semi.method == "propagation" and not self.uses_trunk_cache():
            raise ValueError("semi.method 'propagation' spreads labels over the cached frozen trunk's embeddings: "
                             "it needs a pretrained model with frozen_blocks > 0 and trunk_cache on "
                             "(or semi.method 'self-training')")
        return self

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        from strategies.registry import get_strategy

        get_strategy(v)  # ValueError names the known strategies
        return v

    @field_validator("ls_project_id")
    @classmethod
    def _ls_ref(cls, v):
        if isinstance(v, str) and (not v.strip() or len(v) > 200):
            raise ValueError("must be a project id or a non-empty title (up to 200 characters)")
        if isinstance(v, int) and not 1 <= v <= 2**31 - 1:
            raise ValueError(f"a Label Studio project id is between 1 and {2**31 - 1}, got {v}")
        return v


# Sections switched on by `enabled`, off by default: their other keys act only once it is on.
SWITCHED_SECTIONS = ("exclusion", "relabel")


def check_switches(given: dict, config: ProjectConfig) -> None:
    """Refuses settings of a switched section given without its `enabled` when `config` (what
    `given` produced) leaves the section off: `{"exclusion": {"exclude_after": 2}}` alone would
    be stored and never act, the rule being off by default. `given` is what the client sent (a
    whole config, or a patch merged over the stored one: the project's switch then decides).
    ValueError names the field, as pydantic's errors do; `"enabled": false` beside the settings
    keeps them, switched off, on purpose. Checked where a client gives a config (the API's create
    and PATCH, the --config of `camloop simulate` and `camloop demo`), not on stored configs: one
    stored that way by an earlier version still runs, as it did, with the section off."""
    for name in SWITCHED_SECTIONS:
        section = given.get(name)
        if not isinstance(section, dict) or not section or "enabled" in section or getattr(config, name).enabled:
            continue
        keys = ", ".join(f"{name}.{k}" for k in section)
        raise ValueError(f"{name}.enabled: {keys} given without it, and {name} is off (enabled is false unless "
                         f"set), so they would not act: add \"enabled\": true to turn it on, or \"enabled\": "
                         f"false to keep them with {name} off")


def given_sections(config: ProjectConfig) -> dict:
    """The switched sections' keys a validated config was given (as `check_switches` reads them)."""
    return {name: dict.fromkeys(getattr(config, name).model_fields_set)
            for name in SWITCHED_SECTIONS if name in config.model_fields_set}


# Keys of ProjectConfig that decide how images are decoded: fixed once images are registered
# (the cached pixels were made with them).
DECODE_KEYS = ("image_size", "channels")


def merge_config(base: dict, patch: dict) -> dict:
    """`patch` over `base`, one level deep for the nested sections (exclusion, holdout, stopping, guess,
    relabel, control, selection, audit)."""
    out = dict(base)
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


class SimulationConfig(ProjectConfig):
    """A `camloop simulate` run: a project's config plus the data and the loop's length.

    Flat on purpose (the project's keys beside the run's), so benchmarks say
    `SimulationConfig(strategy="random", budget=1000)`."""

    dataset: str | None = Field("digits", description="a named data set: fashion-mnist, digits, fashion-colour or fashion-shortcut "
                                  "(engine.datasets.dataset_names())")
    folder: str | None = Field(None, description="a folder of class sub-folders, or one with pool/val/test sub-folders")
    initial: StrictInt = Field(100, ge=1, le=10_000_000, description="pool images labeled before round 1: at random, or "
                                                                      "typical ones (first_batch)")
    rounds: StrictInt = Field(5, ge=0, le=10000, description="acquisition rounds after the initial labels")
    device: str | None = Field(None, description="cpu | cuda | cuda:N; none: the engine's choice")
    threads: StrictInt | None = Field(None, ge=1, le=1024, description="torch CPU threads (results depend on it)")
    pool_limit: StrictInt | None = Field(None, ge=1, description="subsample the pool (stratified) for a quick run")
    val_limit: StrictInt | None = Field(None, ge=1, description="subsample the validation split (stratified)")
    test_limit: StrictInt | None = Field(None, ge=1, description="subsample the test split (stratified)")
    shard_size: StrictInt = Field(SCORE_SHARD_SIZE, ge=1,
                                  description="images per score shard, as the service's CAMLOOP_SCORE_SHARD_SIZE")
    hflip: StrictBool | None = Field(None, description="none: on, except for data sets where mirroring changes the class (digits)")
    trunk_cache_dir: str | None = Field(None, description="keep the frozen-trunk cache in this folder, shared by runs "
                                                          "on the same images (none: the run's temporary folder)")
    oracle_noise: Fraction = Field(0.0, description="each simulated expert answer is wrong with this probability "
                                                    "(workers.noisy_oracle)")
    expert_votes: StrictBool = Field(False, description="a simulated expert ticks \"wrong region\" on a queued image "
                                     "when its guess's Grad-CAM map is less dense in the object's known region than "
                                     "0.8 of its mean (engine.regions.wrong_region; workers.expert_votes)")
    bare_votes: StrictBool = Field(False, description="with expert_votes: the simulated expert's wrong-region votes "
                                   "reach training as bare votes (the rule uses the known region, the training gets "
                                   "only the vote: feedback.bare decides what they train)")
    noise_kind: Literal["uniform", "confusable"] = Field("uniform", description="a wrong answer: uniform, any other "
                                                         "class; confusable, the class a clean model confuses the "
                                                         "true one with most")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.dataset is None) == (self.folder is None):
            raise ValueError("give exactly one of dataset and folder")
        return self

    def project(self, **overrides) -> ProjectConfig:
        """The project part (what the service would run with these settings)."""
        data = {k: getattr(self, k) for k in ProjectConfig.model_fields}
        data["hflip"] = True if self.hflip is None else self.hflip
        return ProjectConfig(**{**data, **overrides})
