"""Option parsing shared by the commands."""
from __future__ import annotations

import json

import typer


def json_object(text: str | None, hint: str) -> dict:
    """A JSON object given on the command line (an empty dict for none); a clear error otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise typer.BadParameter(f"not JSON: {e}", param_hint=hint) from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object, e.g. '{\"budget\": 50}'", param_hint=hint)
    return value


def settings_or_exit(what: str):
    """The settings from the environment, or one red line naming what to change (exit 2), not a
    validation traceback (e.g. CAMLOOP_AUTH_DISABLED beside CAMLOOP_API_KEYS)."""
    from pydantic import ValidationError

    from service.settings import get_settings

    try:
        return get_settings()
    except ValidationError as e:
        problems = "; ".join(err["msg"].removeprefix("Value error, ") for err in e.errors())
        typer.secho(f"{what}: the settings are refused: {problems}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
