import numpy as np

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
