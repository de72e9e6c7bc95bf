"""`camloop sample-photos`: a folder of colour photos to try camloop on, made from what is installed.

No photo data set can be downloaded where camloop is tried offline, so the photos are
Fashion-MNIST garments composited at random position, scale and tint onto textured colour
backgrounds (engine.colour_fashion, the colour benchmark's generator), written as JPEGs in one
sub-folder per class: a pool for `camloop project create --folder`, or a labeled folder for
`camloop simulate --folder`.
"""
from __future__ import annotations

from pathlib import Path

import typer

from engine.colour_fashion import sample_photos as make
from engine.shortcut_fashion import DEFAULT_CUE_RATE, sample_photos_shortcut
from engine.fashion_mnist import FASHION_MNIST_ROOT


def sample_photos(
    out: Path = typer.Argument(..., help="folder to write <class>/<class>-<n>.jpg into (created)"),
    per_class: int = typer.Option(40, help="photos of each of the 10 garment classes"),
    side: int = typer.Option(128, help="side of the square photos, pixels (32–512)"),
    seed: int = typer.Option(0, help="the same seed writes the same photos"),
    shortcut: bool = typer.Option(False, "--shortcut", help="add a shortcut: a solid colour over everything outside "
                                  "the garment names the class in --cue-rate of the photos of seven classes (all but "
                                  "Sandal, Sneaker, Ankle boot, whose colour is random); also write regions.json "
                                  "(each garment's box) beside the class folders"),
    cue_rate: float = typer.Option(DEFAULT_CUE_RATE, help="with --shortcut: share of a cue-bearing class's photos "
                                   "whose background has their own class's colour (0.1: it says nothing)"),
) -> None:
    """Write colour sample photos (garments on textured backgrounds) to try camloop with."""
    try:
        n = (sample_photos_shortcut(out, per_class=per_class, seed=seed, side=side, cue_rate=cue_rate) if shortcut
             else make(out, per_class=per_class, seed=seed, side=side))
    except FileNotFoundError as e:
        typer.secho(f"the photos are made from Fashion-MNIST, which is not installed ({e}); install the Debian "
                    f"package dataset-fashion-mnist (./scripts/setup does) or point CAMLOOP_FASHION_MNIST at its "
                    f"files (default {FASHION_MNIST_ROOT})", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except ValueError as e:
        typer.secho(str(e), fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {n} colour photos ({per_class} a class, {side} px) in {out}/<class>/"
               + (f", each garment's box in {out}/regions.json; a background colour names the class in {cue_rate:.0%} "
                  "of the photos of seven classes" if shortcut else ""))
