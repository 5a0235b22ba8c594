"""course_lib.transformer: positional encodings by their formulas (and RoPE's relative
scores), LayerNorm against nn.LayerNorm, the blocks and stacks against
nn.TransformerEncoderLayer / nn.TransformerDecoderLayer (post-LN and pre-LN) with their
weights copied, in float64; causality, padding, permutation equivariance without positions;
the encoder-decoder's decoding and chapter 5's training loop; the LM contract; bad input."""

import doctest
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import transformer
from course_lib.attention import causal_mask, padding_mask
from course_lib.transformer import (Decoder, DecoderBlock, Encoder, EncoderBlock, FeedForward, LayerNorm,
                                    LearnedPositionalEmbedding, SinusoidalPositionalEncoding, Transformer,
                                    TransformerConfig, TransformerLM, apply_rotary)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

TOL = dict(atol=1e-6, rtol=1e-6)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def randint(high, shape, seed=0):
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def config(**kw):
    """A tiny config: d_model = n_heads * head size = 4 * 4."""
    base = dict(vocab_size=11, src_vocab_size=13, d_model=16, n_heads=4, d_ff=24, n_layers=2, max_len=12)
    return TransformerConfig(**{**base, **kw})


def test_module_examples():
    assert doctest.testmod(transformer).failed == 0


# ---------------------------------------------------------------------------- positions
@pytest.mark.parametrize("d_model", [6, 7])
def test_sinusoidal_table_follows_the_formula(d_model):
    pe = SinusoidalPositionalEncoding(d_model, max_len=9)
    expected = torch.empty(9, d_model, dtype=torch.float64)
    for pos in range(9):
        for j in range(d_model):
            two_i = j - j % 2
            angle = pos / 10000 ** (two_i / d_model)
            expected[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    torch.testing.assert_close(pe.pe.double(), expected, atol=1e-6, rtol=0)
    assert pe.pe[0].tolist()[:4] == [0.0, 1.0, 0.0, 1.0]
    x = randn(2, 5, d_model)
    torch.testing.assert_close(pe(x), x + expected[:5], **TOL)


def test_sinusoidal_shift_is_one_linear_map_for_every_position():
    """PE[pos + k] = PE[pos] @ M_k with M_k made of 2x2 rotations by k * w_i, the same M_k for every pos."""
    d, k = 8, 3
    pe = SinusoidalPositionalEncoding(d, max_len=20).pe.double()
    M = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        a = k / 10000 ** (2 * i / d)
        M[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    torch.testing.assert_close(pe[:-k] @ M, pe[k:], atol=1e-6, rtol=0)


def test_learned_positions_add_their_rows_and_learn_only_those_used():
    torch.manual_seed(0)
    wpe = LearnedPositionalEmbedding(max_len=6, d_model=4).double()
    x = randn(2, 3, 4)
    out = wpe(x)
    torch.testing.assert_close(out, x + wpe.weight[:3])
    out.sum().backward()
    assert (wpe.weight.grad[:3] != 0).all() and (wpe.weight.grad[3:] == 0).all()


@pytest.mark.parametrize("module", [SinusoidalPositionalEncoding(4, 5), LearnedPositionalEmbedding(5, 4)])
def test_positions_longer_than_max_len_raise(module):
    with pytest.raises(ValueError, match="length T=6 is longer than max_len=5"):
        module(torch.zeros(1, 6, 4))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, T, d_model=4\)"):
        module(torch.zeros(1, 3, 5))


def test_rotary_scores_depend_only_on_the_relative_position():
    hs, L = 8, 10
    q, k = randn(hs, seed=1), randn(hs, seed=2)
    pos = torch.arange(L)
    Q = apply_rotary(q.expand(L, hs), pos)  # the same query at every position, rotated
    K = apply_rotary(k.expand(L, hs), pos)
    scores = Q @ K.T  # (L, L): scores[m, n] = (R_m q) . (R_n k)
    for m in range(L - 1):
        for n in range(L - 1):
            assert scores[m + 1, n + 1].item() == pytest.approx(scores[m, n].item(), abs=1e-9)
    assert not torch.allclose(scores[0, 1], scores[0, 2])  # but it does depend on n - m
    torch.testing.assert_close(Q[0], q)  # position 0 is not rotated
    torch.testing.assert_close(Q.norm(dim=-1), q.norm().expand(L))  # a rotation keeps lengths


def test_rotary_equals_complex_multiplication():
    """Pair (x[2i], x[2i+1]) as the complex number x[2i] + i x[2i+1], times e^(i m theta_i)."""
    x, pos = randn(2, 3, 5, 6, seed=3), torch.tensor([0, 4, 1, 7, 2])
    theta = 10000.0 ** (-torch.arange(0, 6, 2, dtype=torch.float64) / 6)  # (3,)
    z = torch.view_as_complex(x.reshape(2, 3, 5, 3, 2).contiguous())  # (2, 3, 5, 3)
    expected = torch.view_as_real(z * torch.polar(torch.ones(5, 3, dtype=torch.float64), pos[:, None] * theta))
    torch.testing.assert_close(apply_rotary(x, pos), expected.reshape(2, 3, 5, 6), **TOL)


def test_rotary_errors():
    with pytest.raises(ValueError, match="even hs"):
        apply_rotary(torch.zeros(3, 5), torch.arange(3))
    with pytest.raises(ValueError, match=r"expected positions of shape \(T,\) = \(3,\)"):
        apply_rotary(torch.zeros(3, 4), torch.arange(4))


# ---------------------------------------------------------------------------- layer norm, feed-forward
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_layernorm_equals_nn_layernorm_and_loads_its_state(eps):
    torch.manual_seed(0)
    ref = nn.LayerNorm(6, eps=eps).double()
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    ours = LayerNorm(6, eps=eps).double()
    ours.load_state_dict(ref.state_dict())
    x = randn(3, 4, 6) * 5 + 2
    torch.testing.assert_close(ours(x), ref(x), **TOL)
    nn.LayerNorm(6).double().load_state_dict(ours.state_dict())  # and back


def test_layernorm_by_hand():
    y = LayerNorm(3)(torch.tensor([[1.0, 2.0, 3.0]]))
    s = math.sqrt(1 / (2 / 3 + 1e-5))  # mean 2, biased variance 2/3
    torch.testing.assert_close(y, torch.tensor([[-s, 0.0, s]]))
    with pytest.raises(ValueError, match=r"expected x of shape \(\.\.\., 3\)"):
        LayerNorm(3)(torch.zeros(2, 4))


@pytest.mark.parametrize("activation, act", [("relu", F.relu), ("gelu", F.gelu)])
def test_feedforward_puts_the_nonlinearity_between_the_linear_maps(activation, act):
    torch.manual_seed(0)
    ffn = FeedForward(6, 10, activation=activation).double()
    x = randn(2, 3, 6)
    expected = F.linear(act(F.linear(x, ffn.fc1.weight, ffn.fc1.bias)), ffn.fc2.weight, ffn.fc2.bias)
    out = ffn(x)
    torch.testing.assert_close(out, expected, **TOL)
    assert (out < 0).any()  # no ReLU after fc2
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        FeedForward(6, 10, activation="tanh")


# ---------------------------------------------------------------------------- blocks against torch.nn
def mha_state(sd, theirs, ours):
    """nn.MultiheadAttention stacks W^Q, W^K, W^V in in_proj_weight (3C, C): split it in three."""
    out = {}
    for name, w, b in zip("qkv", sd[f"{theirs}.in_proj_weight"].chunk(3), sd[f"{theirs}.in_proj_bias"].chunk(3)):
        out[f"{ours}.{name}_proj.weight"], out[f"{ours}.{name}_proj.bias"] = w, b
    out[f"{ours}.out_proj.weight"] = sd[f"{theirs}.out_proj.weight"]
    out[f"{ours}.out_proj.bias"] = sd[f"{theirs}.out_proj.bias"]
    return out


def encoder_layer_state(layer, prefix=""):
    """nn.TransformerEncoderLayer's names -> EncoderBlock's."""
    sd = layer.state_dict()
    out = mha_state(sd, "self_attn", "self_attn")
    for theirs, ours in [("linear1", "ffn.fc1"), ("linear2", "ffn.fc2"), ("norm1", "ln1"), ("norm2", "ln2")]:
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    return {prefix + k: v for k, v in out.items()}


def decoder_layer_state(layer, prefix=""):
    """nn.TransformerDecoderLayer's names -> DecoderBlock's (multihead_attn is the cross-attention)."""
    sd = layer.state_dict()
    out = {**mha_state(sd, "self_attn", "self_attn"), **mha_state(sd, "multihead_attn", "cross_attn")}
    for theirs, ours in [("linear1", "ffn.fc1"), ("linear2", "ffn.fc2"), ("norm1", "ln1"), ("norm2", "ln2"),
                         ("norm3", "ln3")]:
        for p in ("weight", "bias"):
            out[f"{ours}.{p}"] = sd[f"{theirs}.{p}"]
    return {prefix + k: v for k, v in out.items()}


def randomize_(module):
    """Every parameter random, LayerNorm gains and biases included (torch starts many at 0 or 1)."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def torch_encoder_layer(c):
    return nn.TransformerEncoderLayer(c.d_model, c.n_heads, c.d_ff, dropout=0.0, activation=c.activation,
                                      batch_first=True, norm_first=c.norm_first).double()


def torch_decoder_layer(c):
    return nn.TransformerDecoderLayer(c.d_model, c.n_heads, c.d_ff, dropout=0.0, activation=c.activation,
                                      batch_first=True, norm_first=c.norm_first).double()


LENGTHS = torch.tensor([7, 4, 1])  # the sources of a batch, right-padded to S = 7


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_encoder_block_equals_nn_transformer_encoder_layer(norm_first, activation):
    c = config(norm_first=norm_first, activation=activation)
    ref = randomize_(torch_encoder_layer(c))
    block = EncoderBlock(c).double()
    block.load_state_dict(encoder_layer_state(ref))
    x = randn(3, 7, 16, seed=1)
    expected = ref(x, src_key_padding_mask=~padding_mask(LENGTHS)[:, 0, 0])  # torch: True = padding
    torch.testing.assert_close(block(x, padding_mask(LENGTHS)), expected, **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_decoder_block_equals_nn_transformer_decoder_layer(norm_first):
    c = config(norm_first=norm_first)
    ref = randomize_(torch_decoder_layer(c))
    block = DecoderBlock(c).double()
    block.load_state_dict(decoder_layer_state(ref))
    x, memory = randn(3, 5, 16, seed=1), randn(3, 7, 16, seed=2)
    expected = ref(x, memory, tgt_mask=nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64),
                   memory_key_padding_mask=~padding_mask(LENGTHS)[:, 0, 0])
    torch.testing.assert_close(block(x, memory, causal_mask(5), padding_mask(LENGTHS)), expected, **TOL)


def test_stacks_equal_nn_transformer_encoder_and_decoder_pre_ln():
    """Pre-LN stacks end with a LayerNorm, as nn.TransformerEncoder / Decoder with norm=."""
    c = config(norm_first=True)
    torch.manual_seed(0)
    enc, dec = Encoder(c).double(), Decoder(c).double()
    ref_enc = nn.TransformerEncoder(torch_encoder_layer(c), c.n_layers, norm=nn.LayerNorm(16).double(),
                                    enable_nested_tensor=False)
    ref_dec = nn.TransformerDecoder(torch_decoder_layer(c), c.n_layers, norm=nn.LayerNorm(16).double())
    randomize_(ref_enc), randomize_(ref_dec)
    for i in range(c.n_layers):
        enc.load_state_dict({**enc.state_dict(), **encoder_layer_state(ref_enc.layers[i], f"blocks.{i}.")})
        dec.load_state_dict({**dec.state_dict(), **decoder_layer_state(ref_dec.layers[i], f"blocks.{i}.")})
    enc.ln_f.load_state_dict(ref_enc.norm.state_dict())
    dec.ln_f.load_state_dict(ref_dec.norm.state_dict())
    src, tgt = randint(13, (3, 7), seed=1), randint(11, (3, 5), seed=2)
    pad = ~padding_mask(LENGTHS)[:, 0, 0]
    memory = enc(src, padding_mask(LENGTHS))
    expected = ref_enc(enc.embed(src, "src"), src_key_padding_mask=pad)
    torch.testing.assert_close(memory, expected, **TOL)
    expected = ref_dec(dec.embed(tgt, "tgt_in"), memory, memory_key_padding_mask=pad,
                       tgt_mask=nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64))
    torch.testing.assert_close(dec(tgt, memory, padding_mask(LENGTHS)), expected, **TOL)


# ---------------------------------------------------------------------------- positions and order
@pytest.mark.parametrize("positional", ["none", "sinusoidal", "learned"])
def test_without_positions_the_encoder_is_permutation_equivariant(positional):
    torch.manual_seed(0)
    enc = Encoder(config(positional=positional)).double().eval()
    src = randint(13, (2, 8), seed=3)
    perm = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    permuted_then_encoded, encoded_then_permuted = enc(src[:, perm]), enc(src)[:, perm]
    if positional == "none":  # attention and the FFN treat the positions as a set
        torch.testing.assert_close(permuted_then_encoded, encoded_then_permuted, **TOL)
    else:
        assert not torch.allclose(permuted_then_encoded, encoded_then_permuted, atol=1e-3)


# ---------------------------------------------------------------------------- the encoder-decoder
def make_transformer(seed=0, **kw):
    torch.manual_seed(seed)
    return Transformer(config(**kw)).double().eval()


def batch(seed=0):
    src = randint(13, (3, 7), seed=seed)
    tgt_in = randint(11, (3, 5), seed=seed + 1)
    tgt_out = randint(11, (3, 5), seed=seed + 2)
    tgt_out[1, 3:] = -1  # padding: left out of the loss
    return src, LENGTHS, tgt_in, tgt_out


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_shapes_and_loss_ignore_padding(norm_first):
    model = make_transformer(norm_first=norm_first)
    src, lengths, tgt_in, tgt_out = batch()
    logits, loss = model(src, lengths, tgt_in, tgt_out)
    assert logits.shape == (3, 5, 11) and logits.dtype == torch.float64 and loss.dim() == 0
    keep = tgt_out != -1
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], tgt_out[keep]))
    assert model(src, lengths, tgt_in)[1] is None
    memory, src_mask = model.encode(src, lengths)
    torch.testing.assert_close(model.decode(tgt_in, memory, src_mask), logits)


def test_transformer_example_does_not_depend_on_padding_or_batch():
    model = make_transformer()
    src, lengths, tgt_in, _ = batch()
    logits, _ = model(src, lengths, tgt_in)
    noisy = src.clone()
    noisy[1, 4:] = randint(13, (3,), seed=9)  # other tokens where source 1 is padded
    torch.testing.assert_close(model(noisy, lengths, tgt_in)[0], logits, **TOL)
    alone, _ = model(src[1:2, :4], None, tgt_in[1:2])  # source 1 alone, unpadded
    torch.testing.assert_close(alone, logits[1:2], **TOL)


def test_transformer_decoder_is_causal():
    model = make_transformer()
    src, lengths, tgt_in, _ = batch()
    logits, _ = model(src, lengths, tgt_in)
    changed = tgt_in.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 11
    new, _ = model(src, lengths, changed)
    torch.testing.assert_close(new[:, :3], logits[:, :3], **TOL)
    assert not torch.allclose(new[:, 3:], logits[:, 3:])


def test_greedy_decode_equals_a_loop_over_forward():
    model = make_transformer(seed=1)
    src, lengths, _, _ = batch()
    tokens, weights = model.greedy_decode(src, lengths, max_len=6, bos_id=1, eos_id=2)
    for b in range(3):
        ys = [1]
        for _ in range(6):
            logits, _ = model(src[b:b + 1, :lengths[b]], None, torch.tensor([ys]))
            ys.append(logits[0, -1].argmax().item())
            if ys[-1] == 2:
                break
        assert tokens[b] == [y for y in ys[1:] if y != 2]
    assert weights.shape[0] == 3 and weights.shape[2] == 7 and weights.shape[1] <= 6
    finished = [len(t) + 1 if len(t) < weights.shape[1] else weights.shape[1] for t in tokens]
    for b, n in enumerate(finished):  # rows of steps that ran sum to 1 over real tokens; 0 at padding, 0 after eos
        torch.testing.assert_close(weights[b, :n].sum(-1), torch.ones(n, dtype=torch.float64), **TOL)
        assert (weights[b, :, lengths[b]:] == 0).all() and (weights[b, n:] == 0).all()


def test_greedy_decode_stops_at_eos_and_beam_of_one_is_greedy():
    model = make_transformer(seed=2)
    src, lengths, _, _ = batch()
    greedy, _ = model.greedy_decode(src, lengths, max_len=5)
    beams = model.beam_search(src, lengths, beam_size=1, max_len=5, length_penalty=0.0)
    assert [toks for toks, _ in beams] == greedy
    with torch.no_grad():
        model.lm_head.bias[2] = 100.0  # </s> wins at once
    tokens, weights = model.greedy_decode(src, lengths, max_len=5)
    assert tokens == [[], [], []] and weights.shape == (3, 1, 7)
    with pytest.raises(ValueError, match="max_len=13 is more than the decoder's max_len=12"):
        model.greedy_decode(src, lengths, max_len=13)


def test_transformer_learns_through_chapter_5_training_loop():
    """Reversing short strings, trained and scored by course_lib.seq2seq as is."""
    from course_lib.seq2seq import exact_match, train_seq2seq, translate
    from course_lib.translation_data import CharVocab

    pairs = [(s, s[::-1]) for s in ["abc", "cab", "bca", "aab", "cc", "bac", "acb", "ba"]]
    vocab = CharVocab("abc")
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(vocab_size=len(vocab), d_model=32, n_heads=4, d_ff=64, n_layers=1,
                                          max_len=8))
    history = train_seq2seq(model, pairs, vocab, vocab, pairs, steps=300, batch_size=8, lr=3e-3, eval_every=50,
                            target_accuracy=1.0, progress=False, device="cpu")
    assert history.valid_accuracy[-1] == 1.0 and exact_match(model, pairs, vocab, vocab) == 1.0
    assert translate(model, ["abc", "ba"], vocab, vocab, beam_size=2, max_len=6) == ["cba", "ab"]


def test_transformer_errors():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by n_heads=3"):
        config(d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="unknown positional 'rotary'"):
        config(positional="rotary")
    with pytest.raises(TypeError, match="expected a TransformerConfig"):
        Transformer({"vocab_size": 3})
    model = make_transformer()
    src, lengths, tgt_in, _ = batch()
    with pytest.raises(ValueError, match=r"src_lengths must be in 1..S = 1..7"):
        model(src, torch.tensor([8, 1, 1]), tgt_in)
    with pytest.raises(ValueError, match=r"expected src of shape \(B, T\) with T <= max_len=12, got \(1, 13\)"):
        model(torch.zeros(1, 13, dtype=torch.long), None, tgt_in[:1])
    with pytest.raises(ValueError, match="same batch size B"):
        model(src, lengths, tgt_in[:2])


# ---------------------------------------------------------------------------- the decoder-only LM
def make_lm(seed=0, **kw):
    torch.manual_seed(seed)
    return TransformerLM(config(**kw)).double().eval()


@pytest.mark.parametrize("positional", ["sinusoidal", "learned", "none"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_lm_contract_and_causality(positional, norm_first):
    model = make_lm(positional=positional, norm_first=norm_first)
    idx = randint(11, (2, 9), seed=1)
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 9, 11) and loss.dim() == 0 and model(idx)[1] is None
    assert model.get_block_size() == 12
    for t in [0, 4, 8]:  # changing tokens t.. leaves the logits before t as they were
        changed = idx.clone()
        changed[:, t:] = (changed[:, t:] + 3) % 11
        new, _ = model(changed)
        torch.testing.assert_close(new[:, :t], logits[:, :t], **TOL)
        assert not torch.allclose(new[:, t:], logits[:, t:])


def test_lm_trains_with_the_course_loop():
    from course_lib.train import train

    torch.manual_seed(0)
    model = TransformerLM(TransformerConfig(vocab_size=5, d_model=16, n_heads=2, d_ff=32, n_layers=1, max_len=8))
    data = torch.tensor([0, 1, 2, 3, 4] * 20)
    history = train(model, data, steps=60, batch_size=8, lr=1e-2, eval_every=60, eval_batches=2, progress=False,
                    device="cpu")
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]


def test_lm_errors():
    model = make_lm()
    with pytest.raises(ValueError, match=r"expected idx of shape \(B, T\) with T <= block_size=12, got \(2, 13\)"):
        model(torch.zeros(2, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="the vocabulary has ids 0..10"):
        model(torch.tensor([[3, 11]]))
