"""course_lib.attention: scaled dot-product attention against F.scaled_dot_product_attention
(shapes, boolean and additive masks, broadcasting, fully masked rows), the masks by hand,
MultiHeadAttention against a per-head loop and against nn.MultiheadAttention (whose boolean
masks mean the opposite), in float64; bad input."""

import doctest

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import attention
from course_lib.attention import MultiHeadAttention, causal_mask, padding_mask, scaled_dot_product_attention

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

TOL = dict(atol=1e-6, rtol=1e-6)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def random_bool_mask(shape, seed=0):
    """True = may attend, about 70% of entries, and at least the first key of every row."""
    mask = torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < 0.7
    mask[..., 0] = True
    return mask


def test_module_examples():
    assert doctest.testmod(attention).failed == 0


# ---------------------------------------------------------------------------- scaled dot-product attention
SHAPES = [  # (leading dims, T, S, hs, hv)
    ((), 5, 5, 8, 8),
    ((3,), 4, 6, 8, 5),
    ((2, 3), 5, 7, 4, 4),
    ((2, 1), 1, 3, 6, 2),  # one query
    ((1,), 3, 1, 4, 4),  # one key
]


@pytest.mark.parametrize("lead, T, S, hs, hv", SHAPES)
@pytest.mark.parametrize("kind", ["none", "bool", "additive", "causal", "broadcast_heads"])
def test_sdpa_equals_torch(lead, T, S, hs, hv, kind):
    q, k, v = randn(*lead, T, hs, seed=1), randn(*lead, S, hs, seed=2), randn(*lead, S, hv, seed=3)
    if kind == "none":
        mask = None
    elif kind == "bool":
        mask = random_bool_mask((*lead, T, S), seed=4)
    elif kind == "additive":
        mask = randn(*lead, T, S, seed=5)
    elif kind == "causal":
        mask = torch.ones(T, S, dtype=torch.bool).tril()  # (T, S) for every leading index
    else:  # one mask per leading first index, the same for every "head" (the second index)
        mask = random_bool_mask((*lead[:1], *([1] * len(lead[1:])), T, S), seed=6)
    out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == (*lead, T, hv) and out.dtype == torch.float64
    assert w.shape == (*lead, T, S)
    torch.testing.assert_close(out, expected, **TOL)
    torch.testing.assert_close(w.sum(-1), torch.ones(*lead, T, dtype=torch.float64), **TOL)
    if mask is not None and mask.dtype == torch.bool:
        assert (w.masked_select(~mask.expand_as(w)) == 0).all()  # exactly 0, not merely small


def test_sdpa_weights_are_the_softmax_of_scaled_scores():
    q, k, v = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2), randn(2, 5, 6, seed=3)
    _, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    scores = torch.einsum("btd,bsd->bts", q, k) / 2.0  # sqrt(hs) = 2
    torch.testing.assert_close(w, scores.exp() / scores.exp().sum(-1, keepdim=True), **TOL)


def test_sdpa_scale_equals_torch():
    q, k, v = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2), randn(2, 5, 6, seed=3)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, scale=0.3), **TOL)


def test_softmax_is_over_all_keys_one_key_gets_weight_one():
    q = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)  # (1, T=1, hs=2)
    one_key = torch.tensor([[[0.3, 5.0]]], dtype=torch.float64)  # a single key: weight 1, whatever the score
    _, w = scaled_dot_product_attention(q, one_key, one_key, return_weights=True)
    assert w.tolist() == [[[1.0]]]
    two_keys = torch.zeros(1, 2, 2, dtype=torch.float64)  # equal scores: [0.5, 0.5]
    _, w = scaled_dot_product_attention(q, two_keys, two_keys, return_weights=True)
    assert w.tolist() == [[[0.5, 0.5]]]


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_fully_masked_row_gives_zeros_like_torch(kind):
    q, k, v = randn(2, 3, 4, seed=1), randn(2, 5, 4, seed=2), randn(2, 5, 4, seed=3)
    allowed = random_bool_mask((2, 3, 5), seed=7)
    allowed[1, 2] = False  # query 2 of sequence 1 may attend to nothing
    mask = allowed if kind == "bool" else torch.zeros(2, 3, 5, dtype=torch.float64).masked_fill(~allowed, -torch.inf)
    q.requires_grad_(True)
    out, w = scaled_dot_product_attention(q, k, v, mask, return_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(w).all()
    assert (out[1, 2] == 0).all() and (w[1, 2] == 0).all()
    # recent torch versions return 0 there too (older ones NaN); the other rows must agree either way
    expected = torch.nan_to_num(F.scaled_dot_product_attention(q.detach(), k, v, attn_mask=mask), nan=0.0)
    torch.testing.assert_close(out.detach(), expected, **TOL)
    out.sum().backward()
    assert torch.isfinite(q.grad).all() and (q.grad[1, 2] == 0).all()


def test_sdpa_dropout_only_drops():
    q, k, v = randn(1, 4, 4, seed=1), randn(1, 6, 4, seed=2), torch.eye(6, dtype=torch.float64)[None]
    torch.manual_seed(0)
    out, w = scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)  # v = I: out is the weights
    kept = out != 0
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(out[kept], (w / 0.5)[kept], **TOL)  # survivors scaled by 1 / (1 - p)


def test_sdpa_errors():
    q, k, v = randn(2, 3, 4), randn(2, 5, 4), randn(2, 5, 4)
    with pytest.raises(ValueError, match=r"expected mask broadcastable to .*\(2, 3, 5\), got \(3, 4\)"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool mask .* or a float mask"):
        scaled_dot_product_attention(q, k, v, torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="q and k must have the same last size hs"):
        scaled_dot_product_attention(q, randn(2, 5, 3), v)
    with pytest.raises(ValueError, match="k and v must have the same length S"):
        scaled_dot_product_attention(q, k, randn(2, 4, 4))


# ---------------------------------------------------------------------------- masks
def test_causal_mask_by_hand():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1).dtype == torch.bool
    with pytest.raises(ValueError, match="T must be an integer > 0"):
        causal_mask(0)


def test_padding_mask_by_hand_and_its_broadcast():
    m = padding_mask(torch.tensor([2, 3, 1]))
    assert m.shape == (3, 1, 1, 3) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, False], [True, True, True], [True, False, False]]
    assert padding_mask(torch.tensor([2, 1]), max_len=4)[:, 0, 0].tolist() == [[True, True, False, False],
                                                                               [True, False, False, False]]
    both = m & causal_mask(3)  # (B, 1, T, T): padding and causality together
    assert both.shape == (3, 1, 3, 3)
    assert both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    with pytest.raises(ValueError, match=r"lengths must be in 0..max_len = 0..2"):
        padding_mask(torch.tensor([1, 3]), max_len=2)
    with pytest.raises(ValueError, match=r"expected lengths of shape \(B,\)"):
        padding_mask(torch.tensor([[1, 3]]))


# ---------------------------------------------------------------------------- multi-head attention
def make_mha(d_model=12, n_heads=3, bias=True, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, n_heads, dropout=dropout, bias=bias).double()


def test_mha_shapes_and_head_size():
    mha = make_mha(12, 3)
    x = randn(2, 5, 12)
    out, w = mha(x, need_weights=True)
    assert out.shape == (2, 5, 12) and w.shape == (2, 3, 5, 5) and mha.head_size == 4
    assert mha.q_proj.weight.shape == (12, 12)  # all heads at once: nh * hs = d_model, not nh * d_model
    torch.testing.assert_close(mha(x), out)  # key and value default to the query


def slow_mha(mha, query, key, value, mask):
    """Head by head with its own slice of W^Q, W^K, W^V; the heads joined with torch.cat."""
    hs, heads = mha.head_size, []
    for h in range(mha.n_heads):
        rows = slice(h * hs, (h + 1) * hs)
        q = F.linear(query, mha.q_proj.weight[rows], mha.q_proj.bias[rows])  # (B, T, hs)
        k = F.linear(key, mha.k_proj.weight[rows], mha.k_proj.bias[rows])  # (B, S, hs)
        v = F.linear(value, mha.v_proj.weight[rows], mha.v_proj.bias[rows])
        scores = q @ k.transpose(1, 2) / hs**0.5  # (B, T, S)
        scores = scores.masked_fill(~mask, -torch.inf)
        heads.append(torch.softmax(scores, dim=-1) @ v)
    return mha.out_proj(torch.cat(heads, dim=-1))


def test_mha_equals_a_loop_over_heads():
    mha = make_mha(12, 3)
    query, memory = randn(2, 4, 12, seed=1), randn(2, 6, 12, seed=2)
    lengths = torch.tensor([6, 3])
    out = mha(query, memory, mask=padding_mask(lengths))
    torch.testing.assert_close(out, slow_mha(mha, query, memory, memory, padding_mask(lengths)[:, 0]), **TOL)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["self", "self_causal_padded", "cross", "cross_padded"])
def test_mha_from_torch_equals_nn_multihead_attention(batch_first, bias, kind):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(12, 4, bias=bias, batch_first=batch_first).double()
    if bias:  # torch starts the biases at 0: make them count
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
    ref.eval()
    mha = MultiHeadAttention.from_torch(ref)
    B, T = 3, 5
    x = randn(B, T, 12, seed=1)
    memory = x if kind.startswith("self") else randn(B, 7, 12, seed=2)
    S = memory.shape[1]
    lengths = torch.tensor([S, S - 2, 1]) if "padded" in kind else torch.full((B,), S)
    ours_mask = padding_mask(lengths, max_len=S)  # (B, 1, 1, S) True = may attend
    attn_mask = None
    if "causal" in kind:
        ours_mask = ours_mask & causal_mask(T)
        attn_mask = ~causal_mask(T)  # torch: True = may NOT attend
    key_padding_mask = ~ours_mask.new_ones(B, S) if "padded" not in kind else ~padding_mask(lengths, S)[:, 0, 0]
    tq = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))  # (B, T, C) <-> (T, B, C)
    expected, expected_w = ref(tq(x), tq(memory), tq(memory), key_padding_mask=key_padding_mask,
                               attn_mask=attn_mask, need_weights=True, average_attn_weights=False)
    out, w = mha(x, memory, memory, mask=ours_mask, need_weights=True)
    torch.testing.assert_close(out, tq(expected), **TOL)
    torch.testing.assert_close(w, expected_w, **TOL)  # (B, nh, T, S) per head


def test_mha_dropout_in_training_only():
    mha = make_mha(dropout=0.5)
    x = randn(2, 5, 12)
    mha.train()
    assert not torch.allclose(mha(x), mha(x))
    mha.eval()
    mha_no_dropout = make_mha(dropout=0.0)
    torch.testing.assert_close(mha(x), mha_no_dropout(x))  # same seed, same weights


def test_mha_keep_weights():
    mha = make_mha()
    x = randn(2, 5, 12)
    mha(x)
    assert mha.last_weights is None
    mha.keep_weights = True
    _, w = mha(x, need_weights=True)
    torch.testing.assert_close(mha.last_weights, w.detach())


def test_mha_errors():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=3"):
        MultiHeadAttention(10, 3)
    mha = make_mha(12, 3)
    x, memory = randn(2, 5, 12), randn(2, 7, 12)
    with pytest.raises(ValueError, match=r"broadcastable to \(B, nh, T, S\) = \(2, 3, 5, 7\), got \(2, 7\)"):
        mha(x, memory, mask=torch.ones(2, 7, dtype=torch.bool))  # a (B, S) mask needs [:, None, None, :]
    with pytest.raises(ValueError, match=r"expected query of shape \(B, length, d_model=12\), got \(2, 5, 8\)"):
        mha(randn(2, 5, 8))
    with pytest.raises(ValueError, match="same batch size B"):
        mha(x, randn(3, 7, 12))
    with pytest.raises(ValueError, match="kdim=6 and vdim=6 must equal embed_dim=12"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(12, 3, kdim=6, vdim=6))
    with pytest.raises(ValueError, match="add_bias_kv and add_zero_attn are not supported"):
        MultiHeadAttention.from_torch(nn.MultiheadAttention(12, 3, add_bias_kv=True))
    with pytest.raises(TypeError, match="expected an nn.MultiheadAttention"):
        MultiHeadAttention.from_torch(nn.Linear(3, 3))
