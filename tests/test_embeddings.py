"""course_lib.embeddings: the negative-sampling loss against direct float64 formulas and
binary cross-entropy, gradients by finite differences; subsampling, noise and window
pairs against hand examples and a slow loop; training that finds planted word groups;
files; bad input."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.embeddings import (
    SkipGram,
    SkipGramConfig,
    Vocab,
    Word2Vec,
    keep_probability,
    negative_sampling_loss,
    noise_distribution,
    project_2d,
    skipgram_pairs,
    subsample_sentences,
    train_word2vec,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)


def random_vecs(B, K, C, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(*shape, generator=g, dtype=dtype) for shape in ((B, C), (B, C), (B, K, C)))


# ------------------------------------------------------------------ the loss
def direct_loss(v, u, n):
    """-log σ(u_o·v_c) - Σ_k log σ(-u_k·v_c), one pair and one noise word at a time."""
    total = 0.0
    for b in range(v.shape[0]):
        total -= torch.log(torch.sigmoid(torch.dot(u[b], v[b])))
        for k in range(n.shape[1]):
            total -= torch.log(torch.sigmoid(-torch.dot(n[b, k], v[b])))
    return total / v.shape[0]


def bce_loss(v, u, n):
    """The same loss as binary classification: the true context is class 1, noise class 0."""
    logits = torch.cat([(v * u).sum(-1, keepdim=True), torch.einsum("bkc,bc->bk", n, v)], dim=1)  # (B, 1+K)
    targets = torch.zeros_like(logits)
    targets[:, 0] = 1.0
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum") / v.shape[0]


@pytest.mark.parametrize("B,K,C", [(1, 1, 1), (5, 3, 4), (8, 10, 16)])
def test_loss_equals_direct_float64_formula_and_bce(B, K, C):
    v, u, n = random_vecs(B, K, C)
    loss = negative_sampling_loss(v, u, n)
    assert isinstance(loss, torch.Tensor) and loss.dtype == torch.float64 and loss.shape == ()
    torch.testing.assert_close(loss, direct_loss(v, u, n), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(loss, bce_loss(v, u, n), rtol=1e-12, atol=1e-12)


def test_loss_in_float32_agrees_with_float64():
    v, u, n = random_vecs(16, 5, 32)
    loss32 = negative_sampling_loss(v.float(), u.float(), n.float())
    assert loss32.dtype == torch.float32
    torch.testing.assert_close(loss32.double(), direct_loss(v, u, n), rtol=1e-5, atol=1e-5)


def test_loss_is_stable_for_large_scores():
    # scores of several hundred: log(sigmoid(x)) in float32 gives -inf, logsigmoid does not
    v, u, n = random_vecs(4, 3, 8, dtype=torch.float32, scale=8.0)
    loss = negative_sampling_loss(v, u, n)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, bce_loss(v, u, n), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("K", [1, 5])
def test_loss_of_zero_vectors_is_one_plus_k_log_2(K):
    zeros = torch.zeros(3, 4), torch.zeros(3, 4), torch.zeros(3, K, 4)
    assert negative_sampling_loss(*zeros).item() == pytest.approx((1 + K) * math.log(2))


def test_loss_gradients_pass_gradcheck():
    v, u, n = (x.requires_grad_() for x in random_vecs(3, 4, 5))
    assert torch.autograd.gradcheck(negative_sampling_loss, (v, u, n))


@pytest.mark.parametrize("shapes,match", [
    (((4, 3), (4, 3), (4, 3)), "negative_vecs as a float tensor with 3 dims"),
    (((4, 3), (5, 3), (4, 2, 3)), r"context_vecs \(B, C\)"),
    (((4, 3), (4, 3), (4, 2, 7)), r"got \(4, 3\), \(4, 3\), \(4, 2, 7\)"),
    (((0, 3), (0, 3), (0, 2, 3)), "B >= 1"),
])
def test_loss_rejects_bad_shapes(shapes, match):
    with pytest.raises(ValueError, match=match):
        negative_sampling_loss(*(torch.zeros(s) for s in shapes))


def test_loss_rejects_integer_tensors():
    with pytest.raises(ValueError, match="center_vecs as a float tensor"):
        negative_sampling_loss(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3), torch.zeros(2, 1, 3))


# ------------------------------------------------------------------ the model
def test_skipgram_init_and_forward():
    torch.manual_seed(0)
    model = SkipGram(SkipGramConfig(vocab_size=50, dim=8))
    assert model.inp.weight.shape == (50, 8) and model.out.weight.shape == (50, 8)
    assert torch.count_nonzero(model.out.weight) == 0
    assert model.inp.weight.abs().max() <= 0.5 / 8 and model.inp.weight.std() > 0
    center, context, negs = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor([[7, 8], [9, 10], [11, 12]])
    # output vectors start at zero, so every score is 0 and the loss is (1 + K) log 2
    assert model(center, context, negs).item() == pytest.approx(3 * math.log(2))
    with torch.no_grad():
        model.out.weight.normal_()
    expected = negative_sampling_loss(model.inp.weight[center], model.out.weight[context], model.out.weight[negs])
    torch.testing.assert_close(model(center, context, negs), expected)
    with pytest.raises(ValueError, match=r"negatives \(B, K\)"):
        model(center, context, negs[:, 0])


# ------------------------------------------------------------- vocabulary and sampling
def test_vocab_counts_order_min_count_and_lowercase():
    sents = [["The", "cat", "the", "dog"], ["the", "cat", "ran"]]
    v = Vocab.build(sents, min_count=2)
    assert v.words == ["cat", "the"] and v.counts.tolist() == [2, 2]
    v = Vocab.build(sents, min_count=2, lowercase=True)
    assert v.words == ["the", "cat"] and v.counts.tolist() == [3, 2]
    assert v.id("THE") == 0 and "Cat" in v and "dog" not in v
    assert [a.tolist() for a in v.encode(sents)] == [[0, 1, 0], [0, 1]]


def test_keep_probability_hand_example():
    # f = [0.9, 0.09, 0.01], t = 0.01: keep = sqrt(t / f), at most 1
    keep = keep_probability([900, 90, 10], t=0.01)
    np.testing.assert_allclose(keep, [math.sqrt(1 / 90), 1 / 3, 1.0], rtol=1e-12)
    np.testing.assert_allclose(keep_probability([5, 5], t=0.5), [1.0, 1.0])


def test_subsampling_keeps_the_expected_fraction():
    sentence = np.repeat(np.arange(3), 100_000)  # 100K copies of each id
    kept = subsample_sentences([sentence], np.array([0.2, 0.5, 1.0]), np.random.default_rng(0))[0]
    fractions = np.bincount(kept, minlength=3) / 100_000
    np.testing.assert_allclose(fractions, [0.2, 0.5, 1.0], atol=0.005)
    assert (np.diff(np.flatnonzero(np.isin(sentence, kept))) > 0).all()  # order kept


def test_noise_distribution_is_counts_to_the_three_quarters():
    np.testing.assert_allclose(noise_distribution([16, 1]), [8 / 9, 1 / 9], rtol=1e-12)
    counts = np.array([100, 30, 7, 1])
    p = noise_distribution(counts)
    np.testing.assert_allclose(p, counts ** 0.75 / (counts ** 0.75).sum(), rtol=1e-12)
    assert p.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- pairs
def slow_pairs(sentences, window, seed):
    """Loop over every center; the window sizes come from the same stream, in the same order."""
    b = np.random.default_rng(seed).integers(1, window + 1, size=sum(len(s) for s in sentences))
    pairs, n = [], 0
    for s in sentences:
        for i, center in enumerate(s):
            for j in range(max(0, i - b[n]), min(len(s), i + b[n] + 1)):
                if j != i:
                    pairs.append((center, s[j]))
            n += 1
    return pairs


@pytest.mark.parametrize("window", [1, 2, 5])
def test_pairs_equal_a_slow_loop(window):
    rng = np.random.default_rng(1)
    sentences = [rng.integers(0, 20, size=n).tolist() for n in (0, 1, 2, 7, 30, 3)]
    c, o = skipgram_pairs(sentences, window, np.random.default_rng(42))
    assert c.dtype == np.int64 and o.dtype == np.int64 and c.shape == o.shape
    assert list(zip(c.tolist(), o.tolist())) == slow_pairs(sentences, window, 42)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_pairs_stay_in_the_window_and_the_sentence(window):
    # every id is unique: id // 100 is its sentence, id % 100 its position
    lengths = [1, 2, 5, 12, 40]
    sentences = [[100 * k + i for i in range(n)] for k, n in enumerate(lengths)]
    c, o = skipgram_pairs(sentences, window, np.random.default_rng(0))
    assert (c // 100 == o // 100).all(), "a pair crosses a sentence boundary"
    dist = np.abs(c % 100 - o % 100)
    assert ((dist >= 1) & (dist <= window)).all()
    for k, n in enumerate(lengths):
        count = int((c // 100 == k).sum())
        full = sum(min(i, window) + min(n - 1 - i, window) for i in range(n))
        assert 2 * (n - 1) <= count <= full, (n, count)


def test_dynamic_window_favours_near_words():
    # a neighbour at distance d is kept with probability (window - d + 1) / window
    window, n = 4, 20_000
    c, o = skipgram_pairs([np.arange(n)], window, np.random.default_rng(0))
    dist = np.abs(c - o)
    for d in range(1, window + 1):
        assert (dist == d).sum() / (2 * (n - d)) == pytest.approx((window - d + 1) / window, abs=0.01)


def test_pairs_of_nothing_and_bad_window():
    c, o = skipgram_pairs([[], [3]], 2, np.random.default_rng(0))
    assert c.shape == (0,) and o.shape == (0,)
    with pytest.raises(ValueError, match="window must be an integer >= 1, got 0"):
        skipgram_pairs([[1, 2]], 0, np.random.default_rng(0))


# ------------------------------------------------------------------------ training
def planted_corpus(n_sentences=300, length=8, seed=0):
    """Two groups of ten words; a sentence draws all its words from one group."""
    rng = np.random.default_rng(seed)
    groups = [[f"a{i}" for i in range(10)], [f"b{i}" for i in range(10)]]
    return [[groups[g][i] for i in rng.integers(0, 10, size=length)] for g in rng.integers(0, 2, size=n_sentences)]


SMALL = dict(dim=16, window=3, negatives=5, min_count=1, epochs=8, batch_size=512, lr=0.05, subsample=None,
             progress=False)


@pytest.fixture(scope="module")
def planted():
    return train_word2vec(planted_corpus(), seed=0, **SMALL)


def test_training_finds_the_planted_groups(planted):
    assert len(planted) == 20 and planted.vectors.shape == (20, 16)
    for word in planted.vocab.words:
        neighbours = planted.most_similar(word, k=9)
        assert [w[0] for w in neighbours] == [w for w, _ in neighbours]
        assert {w[0] for w, _ in neighbours} == {word[0]}, (word, neighbours)
    within = planted.similarity("a0", "a1")
    across = planted.similarity("a0", "b1")
    assert within > 0.5 > across, (within, across)
    history = planted.loss_history
    assert len(history) == planted.settings["steps"] and np.mean(history[-10:]) < 0.7 * np.mean(history[:10])


def test_fitted_vectors_have_unit_length_and_sorted_neighbours(planted):
    torch.testing.assert_close(planted.vectors.norm(dim=1), torch.ones(20))
    sims = [s for _, s in planted.most_similar("b3", k=19)]
    assert len(sims) == 19 and sims == sorted(sims, reverse=True)
    assert planted.most_similar("b3", k=100) == planted.most_similar("b3", k=19)
    assert sims[0] == pytest.approx(float(planted.vector("b3") @ planted.vector(planted.most_similar("b3", 1)[0][0])))


def test_training_is_deterministic(planted):
    again = train_word2vec(planted_corpus(), seed=0, **SMALL)
    assert torch.equal(again.vectors, planted.vectors) and again.loss_history == planted.loss_history
    other = train_word2vec(planted_corpus(), seed=1, **SMALL)
    assert not torch.equal(other.vectors, planted.vectors)


def test_max_seconds_stops_early():
    w2v = train_word2vec(planted_corpus(), seed=0, max_seconds=1e-9, **SMALL)
    assert w2v.settings["stopped_early"] and w2v.settings["steps"] == 1 and len(w2v.loss_history) == 1


def test_save_load_round_trip(planted, tmp_path):
    path = tmp_path / "vectors.npz"
    planted.save(path)
    with np.load(path, allow_pickle=False) as z:  # no pickled objects inside
        assert sorted(z.files) == ["counts", "meta", "vectors", "words"]
    loaded = Word2Vec.load(path)
    assert torch.equal(loaded.vectors, planted.vectors) and loaded.vocab.words == planted.vocab.words
    assert loaded.vocab.counts.tolist() == planted.vocab.counts.tolist()
    assert loaded.loss_history == planted.loss_history and loaded.settings == planted.settings
    for word in ("a0", "b7"):
        assert loaded.most_similar(word, k=5) == planted.most_similar(word, k=5)


# ---------------------------------------------------------- hand-built vectors
def hand_vectors():
    # axes: royal, male, female, fruit
    words = ["king", "queen", "man", "woman", "apple"]
    vecs = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return Word2Vec(Vocab(words, [5, 4, 3, 2, 1]), vecs)


def test_similarity_most_similar_and_analogy_on_hand_vectors():
    w2v = hand_vectors()
    assert w2v.similarity("king", "queen") == pytest.approx(0.5)
    assert w2v.similarity("king", "man") == pytest.approx(1 / math.sqrt(2))
    assert w2v.most_similar("king", k=2) == [("man", pytest.approx(1 / math.sqrt(2))), ("queen", pytest.approx(0.5))]
    # queen - king + man = (0, 1 - 1/√2, 1/√2, 0) / ... : nearest remaining word is woman
    target = np.array([0, 1 - 1 / math.sqrt(2), 1 / math.sqrt(2), 0])
    best = w2v.analogy("king", "queen", "man", k=2)
    assert best[0] == ("woman", pytest.approx(target[2] / np.linalg.norm(target), rel=1e-6))
    assert best[1] == ("apple", pytest.approx(0.0, abs=1e-6))
    torch.testing.assert_close(w2v.vector("man"), torch.tensor([0.0, 1, 0, 0]))


# -------------------------------------------------------------------------- PCA
def test_project_2d_equals_the_top_eigenvectors_of_the_covariance():
    x = np.random.default_rng(0).normal(size=(30, 6)) * np.array([5, 3, 1, 0.5, 0.2, 0.1])
    xy = project_2d(torch.from_numpy(x))
    assert isinstance(xy, torch.Tensor) and xy.shape == (30, 2) and xy.dtype == torch.float32
    xc = x - x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(np.cov(xc, rowvar=False))
    ref = xc @ eigvecs[:, ::-1][:, :2]  # the two directions of largest variance
    ref *= np.sign(ref[np.abs(ref).argmax(axis=0), [0, 1]])  # same sign rule
    np.testing.assert_allclose(xy.numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(project_2d(x).numpy(), xy.numpy())  # numpy input too


def test_project_2d_of_points_on_a_line():
    # centred: (-4/3, -4/3), (-1/3, -1/3), (5/3, 5/3), all along (1, 1) / √2
    xy = project_2d([[0.0, 0.0], [1.0, 1.0], [3.0, 3.0]])
    r2 = math.sqrt(2)
    torch.testing.assert_close(xy, torch.tensor([[-4 * r2 / 3, 0.0], [-r2 / 3, 0.0], [5 * r2 / 3, 0.0]]),
                               atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"expected vectors of shape \(N, C\)"):
        project_2d(torch.zeros(5))


# ---------------------------------------------------------------------- bad input
def test_unknown_word_is_a_key_error_naming_it(planted):
    for call in (lambda: planted.most_similar("zebra"), lambda: planted.similarity("a0", "zebra"),
                 lambda: planted.analogy("a0", "a1", "zebra"), lambda: planted.vector("zebra")):
        with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
            call()
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        planted.most_similar("a0", k=0)


@pytest.mark.parametrize("sentences,error,match", [
    ([], ValueError, "empty corpus"),
    ([[], []], ValueError, "empty corpus"),
    ("to be or not to be", TypeError, "got one str"),
    (["to be", "or not"], TypeError, "each sentence must be a list of word tokens"),
    ([["a", 1]], TypeError, "word tokens must be str"),
    ([["a", "a", "b"]], ValueError, "only 1 word"),
    ([["a"], ["b"], ["a"], ["b"]], ValueError, r"no \(center, context\) pairs"),
])
def test_bad_corpora(sentences, error, match):
    with pytest.raises(error, match=match):
        train_word2vec(sentences, min_count=2, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=0), "window must be an integer >= 1, got 0"),
    (dict(dim=0), "dim must be an integer >= 1, got 0"),
    (dict(negatives=0), "negatives must be an integer >= 1"),
    (dict(min_count=0), "min_count must be an integer >= 1"),
    (dict(epochs=1.5), "epochs must be an integer >= 1, got 1.5"),
    (dict(lr=0), "lr must be > 0"),
    (dict(subsample=-1e-3), "subsample must be None, 0"),
    (dict(max_seconds=0), "max_seconds must be None or > 0"),
])
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train_word2vec(planted_corpus(10), **{**SMALL, **kwargs})
