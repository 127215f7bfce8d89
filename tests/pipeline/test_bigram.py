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


def test_a_mask_keeps_only_the_pairs_it_trains_on_by_hand():
    """Pairs (t, t + 1) where mask[t]: 0→1 (row 0), 2→3 and 3→0 (row 1) over V = 4; row 0's
    1→2, 2→3 and row 1's 0→1 are outside the mask, and mask[:, -1] has no next token. So
    c(0·) = 1 with 1 successor type, 1 precedes nothing; continuation counts N1+(·n) + 1 =
    2, 2, 1, 2 (of 7):
      P(1|0) = (1 − .75)/1 + (.75·1/1)·2/7 = 1/4 + 3/14
      P(2|1) = P_cont(2) = 1/7 (1 precedes nothing in the mask: an unseen history)."""
    rows = np.array([[0, 1, 2, 3], [2, 3, 0, 1]])
    mask = np.array([[1, 0, 0, 1], [1, 1, 0, 0]], dtype=bool)  # mask[:, -1]: no next token
    model = fit_bigram(rows, 4, mask=mask)
    one = np.array([[0, 1, 2, 3]])
    score = lambda m: bigram_cross_entropy(model, one, np.array([m], dtype=bool))  # noqa: E731
    assert score([1, 0, 0, 0]) == pytest.approx(-np.log(1 / 4 + 3 / 14), rel=1e-12)
    assert score([0, 1, 0, 0]) == pytest.approx(-np.log(1 / 7), rel=1e-12)
    both = (-np.log(1 / 4 + 3 / 14) - np.log(1 / 7)) / 2  # the mean over trained pairs only
    assert score([1, 1, 0, 0]) == pytest.approx(both, rel=1e-12)
    assert np.isnan(score([0, 0, 0, 0]))


def test_tokens_outside_the_mask_change_nothing():
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 8, size=(6, 10))
    mask = np.zeros(rows.shape, dtype=bool)
    mask[:, 2:5] = True  # pairs (2,3) (3,4) (4,5): tokens 2..5 matter, the rest are prompt
    other = rows.copy()
    other[:, :2], other[:, 6:] = rng.integers(0, 8, size=(6, 2)), rng.integers(0, 8, size=(6, 4))
    a, b = fit_bigram(rows, 8, mask=mask), fit_bigram(other, 8, mask=mask)
    assert np.array_equal(a.pair_codes, b.pair_codes) and np.array_equal(a.pair_counts,
                                                                          b.pair_counts)
    assert bigram_cross_entropy(a, rows, mask) == bigram_cross_entropy(b, other, mask)
    assert bigram_cross_entropy(a, rows) != bigram_cross_entropy(a, rows, mask)


def test_empty_fit_scores_by_continuation_alone():
    model = fit_bigram(np.array([[0, 1, 2]]), 3, mask=np.zeros((1, 3), dtype=bool))
    assert bigram_cross_entropy(model, np.array([[0, 1]])) == pytest.approx(np.log(3))


def test_bigram_command_on_a_masked_dataset_scores_trained_positions(tmp_path, tiny_teacher):
    import json

    from pipeline.evaluation.bigram import split_rows_and_mask
    from pipeline.softlabels.reader import SoftLabelDataset
    from stages.label import LabelConfig, run
    from tests.conftest import REPO, WORDS, run_cli

    corpus = tmp_path / "chat.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": " ".join(WORDS[i % 20:i % 20 + 3])},
        {"role": "assistant", "content": " ".join(WORDS[i % 7:i % 7 + 2])}]}) + "\n"
        for i in range(40)))
    out = tmp_path / "ds"
    run(LabelConfig(corpus=str(corpus), teacher=str(tiny_teacher), out=str(out), top_k=4,
                    seq_len=64, shard_rows=8, batch_size=8, quiet=True, device="cpu",
                    validation_fraction=0.3, messages_column="messages", id_column="id",
                    chat_template=str(REPO / "data/chat/headline.jinja")))
    ds = SoftLabelDataset(out)
    rows, mask = split_rows_and_mask(ds, "validation")
    assert mask is not None and 0 < mask.sum() < mask.size / 2  # assistant tokens only
    train_rows, train_mask = split_rows_and_mask(ds, "train")
    want = bigram_cross_entropy(fit_bigram(train_rows, ds.vocab_size, mask=train_mask), rows,
                                mask)
    assert want != bigram_cross_entropy(fit_bigram(train_rows, ds.vocab_size), rows)
    proc = run_cli("bigram", "--labels", out)
    assert f"on trained (loss_mask) positions: {want:.4f} nats" in proc.stdout


def test_bigram_command_without_a_validation_split_is_one_line(tmp_path, tiny_corpus,
                                                               tiny_teacher):
    from stages.label import LabelConfig, run
    from tests.conftest import run_cli

    out = tmp_path / "ds"
    run(LabelConfig(corpus=str(tiny_corpus), teacher=str(tiny_teacher), out=str(out), top_k=2,
                    seq_len=32, shard_rows=8, limit_docs=8, validation_fraction=0.0, quiet=True,
                    device="cpu"))
    proc = run_cli("bigram", "--labels", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no split 'validation'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
