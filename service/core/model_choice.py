"""The model settings a project gets from its images, and what the project shows about them.

A project's config may leave any of the model keys (`MODEL_KEYS`) unset. Those are chosen when
the project's first images are registered: `engine.model_choice` looks at a sample of them (sizes,
colour) and picks model, input size, channels, pretrained and frozen blocks the way a
practitioner would; the keys the config did set are kept, and `apply_overrides` fills the others
from the model the project ends up with. The choice is written into the project's config before
the ingest jobs are made (ingest decodes at image_size and channels), so from then on the config
is the one truth and PATCH changes it as any other key (image_size and channels stay fixed once
images are registered, as before).

`projects.model_choice` keeps what the config does not: which keys were left to camloop
(`auto`), and, once chosen, the choice and its reason (`chosen`, `why`). Projects made before
this existed have NULL there and keep their config as it is.
"""
from __future__ import annotations

from pathlib import Path

from engine.model_choice import MODEL_KEYS, STATS_SAMPLE, ChoiceConflict, choose_model, cuda_named, pairs
from service.errors import Unprocessable
from service.settings import Settings
from service.store import Project


def initial_record(explicit_keys) -> dict:
    """What a new project stores: the model keys its config did not set, left to the images."""
    explicit = set(explicit_keys)
    return {"auto": [k for k in MODEL_KEYS if k not in explicit]}


def pending(project: Project) -> list[str]:
    """The model keys still to be chosen from the images (none once chosen, or for old projects)."""
    mc = project.model_choice
    if not mc or "chosen" in mc:
        return []
    return list(mc.get("auto") or [])


def note_patch(project: Project, patch: dict) -> None:
    """A PATCH before any image is registered that sets a model key takes it out of the choice."""
    keys = pending(project)
    if keys and any(k in patch for k in keys):
        project.model_choice = {**project.model_choice, "auto": [k for k in keys if k not in patch]}


def cuda_from_settings(settings: Settings) -> bool:
    """Whether the workers run on a GPU, as far as the API knows without torch: only when the
    settings name a CUDA device; `auto` counts as a CPU (the cheaper choice never fails)."""
    return cuda_named(settings.device)


def choose_from_images(settings: Settings, project: Project, files: list[Path]) -> None:
    """Fill the project's pending model keys from `files` (the first registered images) and
    record the choice; raises Unprocessable when the chosen model cannot meet what the config
    set (e.g. `frozen_blocks` set while the images call for the small CNN)."""
    auto = pending(project)
    if not auto or not files:
        return
    config = dict(project.config or {})
    overrides = {k: config[k] for k in MODEL_KEYS if k not in auto and k in config}
    try:
        chosen = choose_model(files, overrides, cuda_from_settings(settings), sample=STATS_SAMPLE,
                              max_pixels=settings.max_image_pixels)
    except ChoiceConflict as e:
        raise Unprocessable(f"{e}; set the model in the config (PATCH /api/v1/projects/{project.id}) and register "
                            f"again (nothing registered)") from None
    cfg, stats = chosen.config, chosen.stats
    config.update({k: cfg[k] for k in auto})
    project.config = config
    project.model_choice = {"auto": auto, "chosen": {k: cfg[k] for k in MODEL_KEYS}, "why": chosen.why,
                            "images": {"count": stats.count, "sampled": stats.sampled,
                                       "median_width": stats.median_width, "median_height": stats.median_height,
                                       "colour_fraction": round(stats.colour_fraction, 3)}}


def view(project: Project) -> dict | None:
    """The model settings now in force, where each came from, and why; None for projects made
    before camloop chose from the images (their config says it all)."""
    mc = project.model_choice
    if mc is None:
        return None
    config = project.config or {}
    auto = set(mc.get("auto") or [])
    chosen = mc.get("chosen")
    from_ = {}
    for k in MODEL_KEYS:
        if k not in auto:
            from_[k] = "config"
        elif chosen is None:
            from_[k] = "pending"
        else:  # changed by a PATCH since: the config's now
            from_[k] = "images" if config.get(k) == chosen.get(k) else "config"
    if chosen is not None:
        why = mc.get("why") or ""
        patched = [k for k in auto if from_[k] == "config"]
        if patched:
            why += f". Changed since in the config: {pairs({k: config.get(k) for k in patched})}"
    elif auto:
        why = (f"{', '.join(k for k in MODEL_KEYS if k in auto)} will be chosen from the images when the first ones "
               f"are registered (size and colour of a sample); the config sets the others")
    else:
        why = "every model setting is set in the project's config"
    return {**{k: config.get(k) for k in MODEL_KEYS}, "chosen_from": from_, "why": why,
            "images": mc.get("images")}
