"""Temperature scaling and ECE against peer computations: scipy's bounded minimiser and the
LBFGS fit of Guo et al.'s reference code for T, sklearn's log-loss for the NLL, torchmetrics'
MulticlassCalibrationError for the ECE, and a hand count."""
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax
from sklearn.metrics import log_loss
from torchmetrics.classification import MulticlassCalibrationError

from strategies.calibration import (expected_calibration_error, fit_temperature, negative_log_likelihood,
                                    scaled_probs)


def _overconfident(n=3000, c=5, factor=3.0, seed=0):
    """Labels drawn from softmax(z); the 'model' reports factor·z: calibrated at T = factor."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=1.5, size=(n, c))
    p = np.exp(log_softmax(z, axis=1))
    y = np.array([rng.choice(c, p=row) for row in p])
    return factor * z, y


def _scipy_t(z, y, bounds=(0.05, 20.0)):
    f = lambda t: -np.mean(log_softmax(z / t, axis=1)[np.arange(len(y)), y])  # noqa: E731
    return minimize_scalar(f, bounds=bounds, method="bounded", options={"xatol": 1e-9}).x


def _lbfgs_t(z, y):
    """What gpleiss/temperature_scaling does: one nn.Parameter, LBFGS on the cross-entropy (with a
    line search, so it converges rather than stopping after its fixed small steps)."""
    logits, labels = torch.tensor(z), torch.tensor(y)
    t = torch.nn.Parameter(torch.ones(1, dtype=torch.float64) * 1.5)
    opt = torch.optim.LBFGS([t], lr=1.0, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / t, labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(t.item())


def test_fit_matches_scipy_and_the_lbfgs_reference_and_recovers_the_true_scale():
    z, y = _overconfident()
    t = fit_temperature(z, y)
    assert t == pytest.approx(_scipy_t(z, y), abs=1e-5)
    assert t == pytest.approx(_lbfgs_t(z, y), abs=1e-5)
    assert 2.6 < t < 3.4  # the model is 3× over-confident
    # The fitted T is the minimum: the NLL is higher a little either side.
    assert negative_log_likelihood(z, y, t) < negative_log_likelihood(z, y, t * 1.02)
    assert negative_log_likelihood(z, y, t) < negative_log_likelihood(z, y, t / 1.02)


def test_under_confident_logits_get_a_temperature_below_one():
    z, y = _overconfident(factor=0.4, seed=1)
    t = fit_temperature(z, y)
    assert t == pytest.approx(_scipy_t(z, y), abs=1e-5)
    assert 0.3 < t < 0.5


def test_nll_is_sklearn_log_loss_of_the_scaled_probabilities():
    z, y = _overconfident(n=500, seed=2)
    for t in (0.5, 1.0, 2.7):
        assert negative_log_likelihood(z, y, t) == pytest.approx(log_loss(y, scaled_probs(z, t), labels=range(5)),
                                                                 rel=1e-6)


def test_shifted_logits_and_log_probabilities_give_the_same_temperature():
    z, y = _overconfident(n=800, seed=3)
    t = fit_temperature(z, y)
    shift = np.random.default_rng(0).normal(size=(len(y), 1)) * 10
    assert fit_temperature(z + shift, y) == pytest.approx(t, abs=1e-6)
    assert fit_temperature(np.log(scaled_probs(z, 1.0)), y) == pytest.approx(t, abs=1e-6)
    # Scaling never changes a prediction.
    assert (scaled_probs(z, t).argmax(1) == z.argmax(1)).all()


def test_masked_classes_are_ignored():
    z, y = _overconfident(n=800, c=4, seed=4)
    masked = np.concatenate([z, np.full((len(y), 2), -np.inf)], axis=1)
    assert fit_temperature(masked, y) == pytest.approx(fit_temperature(z, y), abs=1e-9)
    assert (scaled_probs(masked, 2.0)[:, 4:] == 0).all()


def test_degenerate_evidence_returns_the_nearer_bound():
    y = np.array([0, 1, 2, 0, 1, 2])
    separable = np.eye(3)[y] * 5.0
    assert fit_temperature(separable, y) == 0.05
    assert fit_temperature(separable, y, bounds=(0.2, 10.0)) == 0.2
    # Logits that point the wrong way: the flattest softmax wins.
    assert fit_temperature(-separable, y) == 20.0


@pytest.mark.parametrize("logits, labels, match", [
    (np.zeros((3, 2)), np.array([0, 1]), "labels must be"),
    (np.zeros(3), np.array([0, 1, 0]), "logits must be"),
    (np.array([[0.0, np.nan]]), np.array([0]), "NaN"),
    (np.zeros((2, 2)), np.array([0, 2]), r"\[0, 2\)"),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), "integer"),
    (np.array([[0.0, -np.inf]]), np.array([1]), "masked"),
    (np.zeros((0, 2)), np.zeros(0, np.int64), "no examples"),
])
def test_bad_input_is_a_clear_error(logits, labels, match):
    with pytest.raises(ValueError, match=match):
        fit_temperature(logits, labels)


def test_bad_bounds_and_temperatures_are_errors():
    z, y = np.zeros((2, 2)), np.array([0, 1])
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(z, y, bounds=(2.0, 1.0))
    with pytest.raises(ValueError, match="temperature"):
        negative_log_likelihood(z, y, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        scaled_probs(z, -1.0)


def test_ece_matches_torchmetrics():
    rng = np.random.default_rng(5)
    for n_bins in (1, 10, 15):
        logits = rng.normal(scale=2.0, size=(4000, 6))
        p = scaled_probs(logits, 1.0)
        y = rng.integers(0, 6, size=4000)
        y[: 2000] = p[: 2000].argmax(1)  # some accuracy, so the bins differ
        ref = MulticlassCalibrationError(num_classes=6, n_bins=n_bins, norm="l1")(
            torch.tensor(p, dtype=torch.float64), torch.tensor(y))
        assert expected_calibration_error(p, y, n_bins) == pytest.approx(float(ref), abs=1e-6)  # it sums in float32


def test_ece_by_hand():
    # Confidences 0.9, 0.9 (one right) → bin 13 of 15: |0.5 − 0.9| over 2 of 4 examples;
    # 0.65 right, 0.62 wrong → bin 9: |0.5 − 0.635| over 2 of 4. ECE = 0.5·0.4 + 0.5·0.135.
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.35, 0.65], [0.62, 0.38]])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(p, y, 15) == pytest.approx(0.5 * 0.4 + 0.5 * 0.135)
    # With 3 bins, 0.62 and 0.65 are in bin 1 and the 0.9s in bin 2: the same sum here.
    assert expected_calibration_error(p, y, 3) == pytest.approx(0.5 * 0.4 + 0.5 * 0.135)
    # One bin: |accuracy − mean confidence| over everything = |0.5 − 0.7675|.
    assert expected_calibration_error(p, y, 1) == pytest.approx(0.2675)
    # Confidence exactly 1 joins the last bin.
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0]), 15) == 0.0


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    z, y = _overconfident(n=3000, seed=6)
    before = expected_calibration_error(scaled_probs(z, 1.0), y)
    after = expected_calibration_error(scaled_probs(z, fit_temperature(z, y)), y)
    assert after < before / 3


def test_ece_bad_input():
    with pytest.raises(ValueError, match="rows summing to 1"):
        expected_calibration_error(np.array([[0.5, 0.2]]), np.array([0]))
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(np.array([[0.5, 0.5]]), np.array([0]), 0)
    with pytest.raises(ValueError, match="class indices"):
        expected_calibration_error(np.array([[0.5, 0.5]]), np.array([3]))
