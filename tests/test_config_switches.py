"""engine.config.check_switches: settings of a section that is off by default (exclusion, relabel)
given without its `enabled` are refused, naming the switch, instead of being stored to do nothing.
(tests/test_round_rules.py checks the API's 422 at creation and PATCH; test_simulate_cli_options.py
the CLI's --config.)"""
from __future__ import annotations

import pytest

from engine.config import ProjectConfig, check_switches, given_sections, merge_config


def _given(data: dict) -> None:
    """As a client's config is read: validated, then its switches checked."""
    check_switches(data, ProjectConfig.model_validate(data))


@pytest.mark.parametrize("data,switch,keys", [
    ({"exclusion": {"exclude_after": 2}}, "exclusion.enabled", "exclusion.exclude_after"),
    ({"exclusion": {"rule": "threshold", "exclude_below": 0.3}}, "exclusion.enabled", "exclusion.exclude_below"),
    ({"relabel": {"share": 0.2}}, "relabel.enabled", "relabel.share"),
])
def test_settings_without_the_switch_are_refused_naming_it(data, switch, keys):
    with pytest.raises(ValueError) as e:
        _given(data)
    assert str(e.value).startswith(switch + ":") and keys in str(e.value) and '"enabled": true' in str(e.value)


@pytest.mark.parametrize("data", [
    {"exclusion": {"enabled": True, "exclude_after": 2}},
    {"exclusion": {"enabled": False, "exclude_after": 2}},  # kept, off on purpose
    {"exclusion": {}},
    {"exclusion": {"enabled": True}},
    {"relabel": {"enabled": False, "share": 0.2}},
    {"audit": {"min_rounds": 5}},  # on by default: its settings act
    {"budget": 7},
])
def test_the_switch_said_or_nothing_switched_is_accepted(data):
    _given(data)


def test_a_patch_is_read_against_the_projects_switch():
    """PATCH merges over the stored config (its `enabled` included): the result's switch decides."""
    on = ProjectConfig.model_validate({"exclusion": {"enabled": True}}).model_dump(mode="json")
    off = ProjectConfig().model_dump(mode="json")
    patch = {"exclusion": {"patience": 4}}
    check_switches(patch, ProjectConfig.model_validate(merge_config(on, patch)))
    with pytest.raises(ValueError, match="exclusion.enabled"):
        check_switches(patch, ProjectConfig.model_validate(merge_config(off, patch)))


def test_a_validated_config_says_which_switched_keys_it_was_given():
    """The API hands create_project a ProjectConfig: the keys its client gave are its fields set."""
    cfg = ProjectConfig.model_validate({"exclusion": {"exclude_after": 2}, "budget": 5})
    assert given_sections(cfg) == {"exclusion": {"exclude_after": None}}
    with pytest.raises(ValueError, match="exclusion.enabled"):
        check_switches(given_sections(cfg), cfg)
    said = ProjectConfig.model_validate({"exclusion": {"enabled": False, "exclude_after": 2}})
    check_switches(given_sections(said), said)
    assert given_sections(ProjectConfig()) == {}


def test_a_stored_config_without_the_switch_still_validates():
    """Checked where a client gives a config, not in the model: a config stored by an earlier
    version with such settings still runs (the section off, as before)."""
    cfg = ProjectConfig.model_validate({"exclusion": {"patience": 2}, "relabel": {"share": 0.2}})
    assert not cfg.exclusion.enabled and cfg.exclusion.patience == 2 and not cfg.relabel.enabled
