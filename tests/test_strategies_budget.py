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
