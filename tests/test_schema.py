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


def test_coverage_encoding_rounds_clips_and_keeps_nan_as_fill():
    from landcover.schema import encode_coverage

    cov = np.array([[0.0, 0.5, 1.0], [1.2, -0.1, np.nan], [0.0021, 0.0019, 0.998]], dtype="float32")
    q = encode_coverage(cov)
    assert q.dtype == np.uint8
    assert q.tolist() == [[0, 125, 250], [250, 0, LABEL_FILL], [1, 0, 250]]
    assert np.isnan(decode_fractions(q)[1, 2])  # unknown coverage reads back as unknown, not as 0


def test_encoding_matches_the_reference_and_keeps_the_largest_class_on_top():
    from fraction_oracle import encode_fractions_reference

    rng = np.random.default_rng(7)
    logits = rng.normal(size=(44, 32, 32)).astype("float32") * 2
    p = (np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)).astype("float32")
    p[:, 0, :4] = np.nan
    q = encode_fractions(p)
    np.testing.assert_array_equal(q, encode_fractions_reference(p))
    ok = ~np.isnan(p).any(axis=0)
    top = np.take_along_axis(q.astype(int), np.nan_to_num(p, nan=0).argmax(axis=0)[None], axis=0)[0]
    assert (top[ok] == q.astype(int).max(axis=0)[ok]).all()
