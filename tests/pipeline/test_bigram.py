import numpy as np
import pytest

from pipeline.evaluation.bigram import bigram_cross_entropy, fit_bigram


def test_bigram_is_a_distribution_and_learns_structure():
    V = 6
    rows = np.array([[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]] * 20)
    model = fit_bigram(rows, V)
    # Probabilities of every successor of every previous token sum to 1.
    for prev in range(V):
        total = 0.0
        for nxt in range(V):
            total += np.exp(-bigram_cross_entropy(model, np.array([[prev, nxt]])))
        assert abs(total - 1.0) < 1e-9
    # A deterministic cycle is far more predictable than uniform.
    assert bigram_cross_entropy(model, rows) < 0.5 * np.log(V)
    shuffled = np.random.default_rng(0).integers(0, V, size=(20, 10))
    assert bigram_cross_entropy(model, shuffled) > bigram_cross_entropy(model, rows)


def test_interpolated_kneser_ney_by_hand():
    """README: interpolated Kneser-Ney with discount 0.75. One row 0 1 0 1 2 1 over V = 4 has the
    pairs 01 10 01 12 21: c(0·) = 2 with 1 successor type, c(1·) = 2 with 2, token 3 never
    precedes anything; continuation counts N1+(·n) + 1 = 2, 3, 2, 1 (of 8):
      P(1|0) = (2 − .75)/2 + (.75·1/2)·3/8 = 49/64
      P(2|1) = (1 − .75)/2 + (.75·2/2)·2/8 = 5/16
      P(0|3) = P_cont(0) = 2/8 (an unseen history backs off entirely)."""
    model = fit_bigram(np.array([[0, 1, 0, 1, 2, 1]]), 4)
    for prev, nxt, p in ((0, 1, 49 / 64), (1, 2, 5 / 16), (3, 0, 2 / 8), (0, 3, 0.375 / 8)):
        ce = bigram_cross_entropy(model, np.array([[prev, nxt]]))
        assert ce == pytest.approx(-np.log(p), rel=1e-12), (prev, nxt)
