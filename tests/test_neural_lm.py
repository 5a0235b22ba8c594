"""course_lib.neural_lm: the bigram net against one-hot products and chapter 1's counts
(with L2 acting as smoothing), the MLP against a slow per-position loop written with plain
torch ops and against F.cross_entropy; its optional dropout (off: the model as before;
on: only training mode changes); the contract's shapes; bad input."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from course_lib.neural_lm import BigramNet, MLPConfig, MLPLanguageModel, count_bigram_logprobs
from course_lib.train import train


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)


def make_mlp(V=7, k=3, C=4, H=16, seed=0):
    torch.manual_seed(seed)
    return MLPLanguageModel(MLPConfig(vocab_size=V, context=k, n_embd=C, n_hidden=H))


def slow_mlp_logits(model, idx):
    """Position by position: the k previous ids (padding id V before the start), their
    embeddings joined with torch.cat, then F.linear / tanh / F.linear."""
    V, k = model.config.vocab_size, model.config.context
    E = model.wte.weight
    out = torch.empty(idx.shape[0], idx.shape[1], V)
    for b in range(idx.shape[0]):
        for t in range(idx.shape[1]):
            ctx = [V] * k + idx[b, : t + 1].tolist()
            x = torch.cat([E[i] for i in ctx[-k:]])
            h = torch.tanh(F.linear(x, model.hidden.weight, model.hidden.bias))
            out[b, t] = F.linear(h, model.lm_head.weight, model.lm_head.bias)
    return out


# ---------------------------------------------------------------------------- bigram net
def test_bigram_starts_uniform_and_has_block_size_one():
    model = BigramNet(5)
    idx = torch.tensor([[0, 1, 4], [3, 3, 2]])
    logits, loss = model(idx, torch.tensor([[1, 4, 0], [3, 2, 1]]))
    assert logits.shape == (2, 3, 5) and logits.dtype == torch.float32
    assert loss.dim() == 0 and loss.item() == pytest.approx(math.log(5), abs=1e-6)
    assert model.get_block_size() == 1
    assert model.num_parameters() == 25
    assert model(idx)[1] is None


def test_bigram_logits_equal_one_hot_times_w():
    model = BigramNet(6)
    with torch.no_grad():
        model.W.copy_(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    idx = torch.tensor([[0, 5, 2, 2], [1, 3, 4, 0]])
    logits, _ = model(idx)
    torch.testing.assert_close(logits, F.one_hot(idx, 6).float() @ model.W)


def test_bigram_loss_equals_cross_entropy_and_ignores_minus_one():
    model = BigramNet(4)
    with torch.no_grad():
        model.W.copy_(torch.randn(4, 4, generator=torch.Generator().manual_seed(2)))
    idx = torch.tensor([[0, 1, 2, 3, 0]])
    targets = torch.tensor([[1, -1, 3, 0, -1]])
    logits, loss = model(idx, targets)
    keep = targets[0] >= 0
    expected = torch.nn.CrossEntropyLoss()(logits[0][keep], targets[0][keep])
    torch.testing.assert_close(loss, expected)


def slow_bigram_probs(ids, V, alpha):
    pairs = Counter(zip(ids, ids[1:]))
    rows = []
    for v in range(V):
        total = sum(pairs[v, w] for w in range(V)) + alpha * V
        rows.append([(pairs[v, w] + alpha) / total if total else 1 / V for w in range(V)])
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("ids", [[0, 1, 0, 0], [2, 2, 2], [0], [], [3, 1, 4, 1, 5, 0, 2, 6, 5, 3, 5]])
def test_count_bigram_logprobs_equal_counting_by_hand(ids, alpha):
    V = 7
    got = count_bigram_logprobs(ids, V, alpha)
    assert got.shape == (V, V) and got.dtype == torch.float64
    torch.testing.assert_close(got.exp(), slow_bigram_probs(ids, V, alpha))
    torch.testing.assert_close(got.exp().sum(dim=1), torch.ones(V, dtype=torch.float64))


def test_count_bigram_logprobs_hand_example():
    # pairs 0->1, 1->0, 0->0: P(.|0) = [1/2, 1/2], P(.|1) = [1, 0]
    expected = torch.tensor([[0.5, 0.5], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(count_bigram_logprobs([0, 1, 0, 0], 2).exp(), expected)


@pytest.mark.parametrize("ids, V, alpha, match", [
    ([[0, 1]], 3, 0.0, r"1-D sequence"),
    ([0.5, 1.0], 3, 0.0, r"1-D sequence"),
    ([0, 3], 3, 0.0, r"expected 0\.\.2"),
    ([0, 1], 0, 0.0, r"vocab_size must be"),
    ([0, 1], 3, -1.0, r"alpha must be"),
])
def test_count_bigram_logprobs_bad_input(ids, V, alpha, match):
    with pytest.raises(ValueError, match=match):
        count_bigram_logprobs(ids, V, alpha)


def test_bigram_net_trained_full_batch_converges_to_counts():
    """With one window holding the whole sequence, each step of train() is full-batch
    gradient descent; the minimum of the cross-entropy is the counted MLE."""
    V = 4
    ids = torch.randint(V, (300,), generator=torch.Generator().manual_seed(0))
    mle = count_bigram_logprobs(ids, V).exp()
    assert (mle > 0).all()  # every bigram seen: the minimum is finite
    model = BigramNet(V)
    history = train(model, ids, steps=300, batch_size=1, block_size=len(ids) - 1, lr=0.1,
                    eval_every=300, progress=False, device="cpu")
    probs = F.softmax(model.W.detach().double(), dim=-1)
    assert (probs - mle).abs().max() < 1e-2
    # the loss reached is the entropy of the counted model on the same pairs
    mle_loss = -count_bigram_logprobs(ids, V)[ids[:-1], ids[1:]].mean().item()
    assert history.train_loss[-1] == pytest.approx(mle_loss, abs=1e-3)


def fit_bigram_l2(ids, V, l2, steps=400):
    """Full-batch Adam on cross-entropy + l2 * sum(W^2)."""
    model = BigramNet(V)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(steps):
        _, loss = model(ids[None, :-1], ids[None, 1:])
        loss = loss + l2 * (model.W ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return F.softmax(model.W.detach().double(), dim=-1)


def test_l2_on_w_acts_like_smoothing():
    """Token 3 occurs 3 times in 400: without L2 its row is the MLE (with zeros); with L2
    it moves toward uniform and lands nearer add-one smoothing than the MLE; more L2,
    flatter rows (higher entropy) everywhere."""
    V = 4
    ids = torch.randint(3, (400,), generator=torch.Generator().manual_seed(0))
    ids[[50, 150, 250]] = 3
    mle, laplace = count_bigram_logprobs(ids, V).exp(), count_bigram_logprobs(ids, V, 1.0).exp()
    assert (mle[3] == 0).any()  # the rare context has unseen successors
    rows = {l2: fit_bigram_l2(ids, V, l2) for l2 in (0.0, 1e-3, 1e-2)}

    def dist(p, q):
        return (p - q).abs().max().item()

    assert dist(rows[0.0][3], mle[3]) < 0.01
    assert dist(rows[1e-3][3], laplace[3]) < dist(rows[1e-3][3], mle[3]) / 2
    entropy = {l2: -(p * p.log()).sum(dim=-1) for l2, p in rows.items()}
    assert (entropy[1e-3] > entropy[0.0]).all() and (entropy[1e-2] > entropy[1e-3]).all()
    # frequent contexts move much less than the rare one
    assert dist(rows[1e-3][0], mle[0]) < dist(rows[1e-3][3], mle[3]) / 5


# ---------------------------------------------------------------------------- MLP
@pytest.mark.parametrize("k", [1, 2, 3, 5])
@pytest.mark.parametrize("T", [1, 2, 8])
def test_mlp_logits_equal_slow_loop(k, T):
    model = make_mlp(V=7, k=k)
    idx = torch.randint(7, (3, T), generator=torch.Generator().manual_seed(k * 10 + T))
    logits, _ = model(idx)
    assert logits.shape == (3, T, 7) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, slow_mlp_logits(model, idx))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_mlp_position_t_sees_only_its_k_previous_tokens(k):
    V, T = 6, 10
    model = make_mlp(V=V, k=k)
    idx = torch.randint(V, (1, T), generator=torch.Generator().manual_seed(3))
    logits, _ = model(idx)
    t = T - 1
    earlier = idx.clone()
    earlier[0, : t - k + 1] = (earlier[0, : t - k + 1] + 1) % V  # change every token before the window
    torch.testing.assert_close(model(earlier)[0][0, t], logits[0, t])
    for j in range(t - k + 1, t + 1):  # change one token inside the window
        inside = idx.clone()
        inside[0, j] = (inside[0, j] + 1) % V
        assert not torch.allclose(model(inside)[0][0, t], logits[0, t])
        torch.testing.assert_close(model(inside)[0][0, :j], logits[0, :j])  # the past does not see the future


def test_mlp_loss_equals_cross_entropy_on_flattened_logits():
    model = make_mlp()
    g = torch.Generator().manual_seed(4)
    idx, targets = torch.randint(7, (4, 9), generator=g), torch.randint(7, (4, 9), generator=g)
    logits, loss = model(idx, targets)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 7), targets.reshape(-1)))
    targets[:, :3] = -1
    _, loss = model(idx, targets)
    keep = targets.reshape(-1) >= 0
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 7)[keep], targets.reshape(-1)[keep]))
    assert model(idx)[1] is None


def test_mlp_size_and_block_size():
    V, k, C, H = 7, 3, 4, 16
    model = make_mlp(V, k, C, H)
    assert model.get_block_size() == k
    assert model.num_parameters() == (V + 1) * C + (k * C * H + H) + (H * V + V)
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())


def test_mlp_learns_a_pattern_counts_of_one_token_cannot_see():
    """The next token is the token two steps back: a bigram cannot tell, an MLP with k=2 can."""
    torch.manual_seed(0)
    seq = torch.tensor([0, 1, 0, 2] * 60)  # after 0 comes 1 or 2: decided by the token before
    model = MLPLanguageModel(MLPConfig(vocab_size=3, context=2, n_embd=4, n_hidden=32))
    history = train(model, seq, steps=150, batch_size=8, block_size=16, lr=3e-2, eval_every=150,
                    progress=False, device="cpu")
    bigram_loss = -count_bigram_logprobs(seq, 3)[seq[:-1], seq[1:]].mean().item()
    assert bigram_loss > 0.3
    assert history.train_loss[-1] < 0.05


def test_mlp_dropout_zero_is_the_model_without_dropout():
    """dropout=0 (the default): the same weights from the same seed, the same logits as the
    slow loop in training mode, no dropout layer, and no random numbers drawn by forward."""
    V, k, C, H = 7, 3, 4, 16
    plain = make_mlp(V, k, C, H, seed=5)
    torch.manual_seed(5)
    zero = MLPLanguageModel(MLPConfig(vocab_size=V, context=k, n_embd=C, n_hidden=H, dropout=0.0))
    assert MLPConfig(vocab_size=V).dropout == 0.0 and zero.drop is None and plain.drop is None
    for (name, p), (name_z, p_z) in zip(plain.named_parameters(), zero.named_parameters()):
        assert name == name_z
        torch.testing.assert_close(p_z, p)
    idx = torch.randint(V, (3, 9), generator=torch.Generator().manual_seed(6))
    zero.train()
    state = torch.get_rng_state()
    logits, _ = zero(idx)
    assert torch.equal(torch.get_rng_state(), state)  # forward drew no random numbers
    torch.testing.assert_close(logits, slow_mlp_logits(plain, idx))


def test_mlp_dropout_changes_training_mode_only():
    """p > 0: in train() mode hidden units are dropped (outputs differ from the dropout-free
    computation and from one call to the next); in eval() mode the model is the slow loop."""
    V, k, C, H, p = 7, 3, 4, 64, 0.5
    torch.manual_seed(7)
    model = MLPLanguageModel(MLPConfig(vocab_size=V, context=k, n_embd=C, n_hidden=H, dropout=p))
    assert model.num_parameters() == (V + 1) * C + (k * C * H + H) + (H * V + V)  # dropout adds no parameter
    idx = torch.randint(V, (2, 8), generator=torch.Generator().manual_seed(8))
    expected = slow_mlp_logits(model, idx)
    model.eval()
    torch.testing.assert_close(model(idx)[0], expected)
    torch.testing.assert_close(model(idx)[0], model(idx)[0])
    model.train()
    first, second = model(idx)[0], model(idx)[0]
    assert not torch.allclose(first, expected)
    assert not torch.allclose(first, second)
    # the kept units are scaled by 1 / (1 - p): the hidden layer as the slow loop computes it, masked
    torch.manual_seed(9)
    got = model(idx)[0]
    torch.manual_seed(9)
    mask = torch.nn.functional.dropout(torch.ones(2, 8, H), p, training=True)  # (B, T, H): 0 or 1/(1-p)
    contexts = torch.cat([torch.full((2, k - 1), V), idx], dim=1).unfold(1, k, 1)  # (B, T, k)
    h = torch.tanh(model.hidden(model.wte(contexts).view(2, 8, k * C)))  # (B, T, H)
    torch.testing.assert_close(got, model.lm_head(h * mask))


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5, True, "0.5", None])
def test_mlp_config_rejects_bad_dropout(dropout):
    with pytest.raises(ValueError, match=r"MLPConfig.dropout must be a number in \[0, 1\)"):
        MLPConfig(vocab_size=5, dropout=dropout)


@pytest.mark.parametrize("make", [lambda: make_mlp(), lambda: BigramNet(7)], ids=["mlp", "bigram"])
@pytest.mark.parametrize("idx, targets, error, match", [
    (torch.tensor([1, 2, 3]), None, ValueError, r"expected idx of shape \(B, T\), got \(3,\)"),
    (torch.tensor([[1.0, 2.0]]), None, TypeError, r"integer token ids, got dtype torch.float32"),
    ([[1, 2]], None, TypeError, r"torch tensor of shape \(B, T\), got list"),
    (torch.tensor([[1, 7]]), None, ValueError, r"ids from 1 to 7; the vocabulary has ids 0\.\.6"),
    (torch.tensor([[-1, 2]]), None, ValueError, r"the vocabulary has ids 0\.\.6"),
    (torch.zeros(2, 0, dtype=torch.long), None, ValueError, r"T >= 1"),
    (torch.tensor([[1, 2]]), torch.tensor([1, 2]), ValueError, r"targets of shape \(B, T\) = \(1, 2\)"),
    (torch.tensor([[1, 2]]), torch.tensor([[1, 9]]), ValueError, r"or -1 for a position to ignore"),
    (torch.tensor([[1, 2]]), torch.tensor([[1.0, 2.0]]), TypeError, r"targets to hold integer"),
])
def test_models_reject_bad_input(make, idx, targets, error, match):
    with pytest.raises(error, match=match):
        make()(idx, targets)


@pytest.mark.parametrize("fields, match", [
    (dict(vocab_size=0), r"MLPConfig.vocab_size must be an integer > 0"),
    (dict(vocab_size=5, context=0), r"MLPConfig.context"),
    (dict(vocab_size=5, n_embd=2.5), r"MLPConfig.n_embd"),
    (dict(vocab_size=5, n_hidden=True), r"MLPConfig.n_hidden"),
])
def test_mlp_config_rejects_bad_sizes(fields, match):
    with pytest.raises(ValueError, match=match):
        MLPConfig(**fields)


def test_models_reject_bad_construction():
    with pytest.raises(ValueError, match="vocab_size must be an integer > 0"):
        BigramNet(0)
    with pytest.raises(TypeError, match="expected an MLPConfig"):
        MLPLanguageModel({"vocab_size": 5})
