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
