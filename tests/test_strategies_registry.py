"""Registry names, and the API process's promise: strategies' torch-free modules never pull torch in."""
import subprocess
import sys

import pytest

from strategies.gradcam_scores import CAM_SCORE_KEYS
from strategies.registry import CAM_KEYS, DEFAULT_STRATEGY, STRATEGIES, get_strategy

SCORE_KEYS = {"least_confidence", "margin", "entropy", "vote_entropy", "mean_kl", "bald", *CAM_SCORE_KEYS}


def test_names_and_weights_use_known_score_keys():
    assert list(STRATEGIES) == ["random", "least-confidence", "margin", "entropy", "bald", "vote-entropy", "gradcam", "hybrid", "hybrid-cam"]
    assert DEFAULT_STRATEGY == "hybrid"
    assert set(CAM_KEYS) == set(CAM_SCORE_KEYS)
    for spec in STRATEGIES.values():
        assert set(spec.weights) <= SCORE_KEYS
        assert spec.needs_committee == any(k in ("bald", "vote_entropy", "mean_kl") for k in spec.weights)
        assert spec.needs_cam == any(k.startswith("cam_") for k in spec.weights)
    hybrid = get_strategy("hybrid")
    assert hybrid.diversity and hybrid.class_budget and hybrid.needs_committee and not hybrid.needs_cam
    full = get_strategy("hybrid-cam")  # the default plus the Grad-CAM term, nothing else
    assert full.needs_cam and full.without_cam().weights == hybrid.weights
    assert (full.diversity, full.class_budget, full.needs_committee) == (True, True, True)
    assert get_strategy("random").is_random


def test_without_cam_and_unknown_names():
    h = get_strategy("hybrid-cam").without_cam()
    assert not h.needs_cam and "cam_score" not in h.weights and h.weights
    with pytest.raises(ValueError, match="only the Grad-CAM"):
        get_strategy("gradcam").without_cam()
    with pytest.raises(ValueError, match="hybrid"):
        get_strategy("nope")


def test_api_side_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import strategies, strategies.selection, strategies.fusion, strategies.budget, "
        "strategies.exclusion, strategies.registry, strategies.diversity\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
