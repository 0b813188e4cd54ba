import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from landcover.schema import LABEL_FILL, LABEL_STEPS, decode_fractions, encode_fractions


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        "float64",
        st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(1, 5)),
        elements=st.floats(0, 1),
    )
)
def test_encode_sums_exactly_and_error_bounded(raw):
    total = raw.sum(axis=0, keepdims=True)
    frac = np.where(total > 0, raw / np.where(total > 0, total, 1), 0).astype("float32")
    frac[0][total[0] == 0] = 1.0  # make every pixel a valid distribution
    q = encode_fractions(frac)
    assert q.dtype == np.uint8
    assert np.all(q.astype(int).sum(axis=0) == LABEL_STEPS)
    err = np.abs(decode_fractions(q) - frac)
    assert err.max() <= 1.0 / LABEL_STEPS + 1e-6


def test_nan_pixels_become_fill_and_back():
    frac = np.full((3, 2, 2), 1 / 3, dtype="float32")
    frac[:, 1, 1] = np.nan
    q = encode_fractions(frac)
    assert np.all(q[:, 1, 1] == LABEL_FILL)
    d = decode_fractions(q)
    assert np.isnan(d[:, 1, 1]).all()
    assert np.allclose(np.nansum(d[:, 0, 0]), 1.0)
