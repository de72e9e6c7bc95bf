"""Class budget: needs and integer allocation that sums to the budget within caps."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.budget import allocate_budget, class_need, per_class_mean


def test_need_rises_with_cam_score_and_falls_with_accuracy():
    active = np.array([True, True, True, False])
    need = class_need([0.2, 0.2, 0.8, 0.9], [0.9, 0.3, 0.9, 0.1], active)
    assert need[1] > need[0] and need[2] > need[0]
    assert need[3] == 0  # inactive classes need nothing
    acc_only = class_need(None, [0.9, 0.3, 0.5, 0.1], active)
    assert acc_only[1] > acc_only[2] > acc_only[0] > 0
    with pytest.raises(ValueError, match="NaN"):
        class_need([0.1, np.nan, 0.1, 0.1], [0.5] * 4, active)


def test_per_class_mean_of_the_items_predicted_as_each_class():
    # class 2 is predicted for nothing: 0, not NaN (class_need refuses NaN)
    out = per_class_mean(np.array([0, 0, 1, 3]), np.array([0.2, 0.4, 0.9, 0.5]), 4)
    assert out.tolist() == pytest.approx([0.3, 0.9, 0.0, 0.5])


def test_allocation_proportional_and_capped():
    out = allocate_budget(100, np.array([1.0, 1.0, 2.0]), np.array([True, True, True]))
    assert out.tolist() == [25, 25, 50]
    out = allocate_budget(100, np.array([1.0, 1.0, 2.0]), np.array([True, True, True]), available=[100, 100, 10])
    assert out.tolist() == [45, 45, 10]
    out = allocate_budget(100, np.array([1.0, 1.0, 2.0]), np.array([True, False, True]))
    assert out[1] == 0 and out.sum() == 100
    # More budget than items: everything available is taken, nothing more.
    assert allocate_budget(100, np.ones(3), np.ones(3, bool), available=[3, 4, 5]).tolist() == [3, 4, 5]
    assert allocate_budget(10, np.ones(3), np.zeros(3, bool)).tolist() == [0, 0, 0]
    assert allocate_budget(3, np.zeros(3), np.ones(3, bool)).tolist() == [1, 1, 1]


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 500),
    st.lists(st.tuples(st.floats(0, 5), st.booleans(), st.integers(0, 80)), min_size=1, max_size=12),
    st.integers(0, 5),
)
def test_allocation_invariants(budget, classes, floor):
    need = np.array([c[0] for c in classes])
    active = np.array([c[1] for c in classes])
    avail = np.array([c[2] for c in classes])
    out = allocate_budget(budget, need, active, min_per_class=floor, available=avail)
    assert out.dtype.kind == "i"
    assert out.sum() == min(budget, avail[active].sum())
    assert (out >= 0).all() and (out <= avail).all()
    assert (out[~active] == 0).all()


# ------------------------------------------------------------ wrong-region votes (issue 13)

def test_wrong_region_votes_absent_leave_the_need_unchanged():
    from strategies.budget import class_need
    acc = np.array([0.9, 0.6, 0.8])
    cam = np.array([0.2, 0.5, 0.4])
    act = np.array([True, True, True])
    for c in (None, cam):
        np.testing.assert_array_equal(class_need(c, acc, act, wrong_region=None), class_need(c, acc, act))
        np.testing.assert_array_equal(class_need(c, acc, act, wrong_region=np.zeros(3)), class_need(c, acc, act))


def test_flagged_class_gets_more_of_the_budget():
    from strategies.budget import allocate_budget, class_need, wrong_region_rate
    acc = np.array([0.8, 0.8, 0.8, 0.8])
    act = np.array([True, True, True, False])
    before = allocate_budget(100, class_need(None, acc, act), act)
    assert sorted(before[:3].tolist()) == [33, 33, 34]
    # Experts flagged 6 of 10 reviewed guesses of class 1 as "looked at the wrong region".
    rate = wrong_region_rate([0, 6, 1, 5], [10, 10, 10, 10])
    np.testing.assert_allclose(rate, [0, 0.5, 1 / 12, 5 / 12])
    need = class_need(None, acc, act, wrong_region=rate)
    after = allocate_budget(100, need, act)
    assert after[1] > before[1] and after[0] < before[0] and after[3] == 0  # inactive stays at 0
    assert after.sum() == 100
    # need_1 = (1 − 0.8) + 0.5 · 0.5 + floor.
    assert need[1] == pytest.approx(0.2 + 0.25 + 0.05)


def test_wrong_region_rate_smoothing_and_checks():
    from strategies.budget import class_need, wrong_region_rate
    assert wrong_region_rate([1], [1]).tolist() == [pytest.approx(1 / 3)]  # one vote is not a rate of 1
    assert wrong_region_rate([0], [0]).tolist() == [0.0]
    assert wrong_region_rate([1], [1], prior=0).tolist() == [1.0]
    with pytest.raises(ValueError, match="flagged <= reviewed"):
        wrong_region_rate([3], [2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        class_need(None, np.array([0.5]), np.array([True]), wrong_region=np.array([1.5]))
    with pytest.raises(ValueError, match="differ in shape"):
        class_need(None, np.array([0.5, 0.5]), np.array([True, True]), wrong_region=np.array([0.1]))
