"""course_lib.seq2seq: attention against hand loops, torch.softmax of a bmm and torch's
scaled_dot_product_attention; the encoder against torch.nn.GRU/LSTM run on each source
alone, fused against chapter 4's layers; padding invariance; the decoder's step against
the teacher-forced forward; greedy decoding against beam search of width 1; beam search
and the length penalty on hand-made chains where greedy decoding loses; a small model
learning to reverse strings; bad input."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.seq2seq import (AdditiveAttention, DotAttention, Seq2Seq, Seq2SeqConfig, beam_search,
                                exact_match, length_normalized, train_seq2seq, translate)
from course_lib.translation_data import CharVocab

SV, TV, C, H, B = 9, 8, 5, 6, 4  # source and target vocabularies, embedding, hidden size, batch
LENGTHS = [7, 4, 1, 5]  # the batch's source lengths: S = 7
TOL = dict(rtol=0, atol=1e-10)  # float64: only rounding differs
BOS, EOS = 1, 2
ATTENTIONS = [None, "additive", "dot"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two competing for a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_model(attention="additive", cell="gru", num_layers=1, fused=False, seed=0, eos_bias=0.0):
    torch.manual_seed(seed)
    model = Seq2Seq(Seq2SeqConfig(SV, TV, n_embd=C, hidden_size=H, cell=cell, attention=attention,
                                  num_layers=num_layers, fused=fused)).double()
    with torch.no_grad():
        model.decoder.lm_head.bias[EOS] += eos_bias  # an untrained model that ends its outputs now and then
    return model.eval()


def make_batch(seed=0, lengths=LENGTHS, T=5):
    """src (B, S) padded with 0 after each length, lengths (B,), tgt_in / tgt_out (B, T), targets of lengths T-1.."""
    g = gen(seed)
    S = max(lengths)
    src = torch.randint(3, SV, (len(lengths), S), generator=g)
    src[torch.arange(S)[None, :] >= torch.tensor(lengths)[:, None]] = 0
    y = torch.randint(3, TV, (len(lengths), T), generator=g)
    tgt_in = torch.cat([torch.full((len(lengths), 1), BOS), y[:, :-1]], dim=1)  # (B, T)
    tgt_out = y.clone()
    tgt_len = [T - (b % 3) for b in range(len(lengths))]  # T, T-1, T-2, T, ...: some targets padded
    for b, n in enumerate(tgt_len):
        tgt_out[b, n - 1] = EOS
        tgt_out[b, n:] = -1
        tgt_in[b, n:] = 0
    return src, torch.tensor(lengths), tgt_in, tgt_out


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=gen(seed), dtype=torch.float64)


def mask_of(lengths, S=None):
    S = S or max(lengths)
    return torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]  # (B, S)


# ---------------------------------------------------------------------------- attention
def test_additive_attention_by_hand():
    torch.manual_seed(0)
    attn = AdditiveAttention(query_dim=3, key_dim=H, attn_dim=4).double()
    q, k, mask = randn(B, 3, seed=1), randn(B, 7, H, seed=2), mask_of(LENGTHS)
    context, weights = attn(q, k, mask)
    assert context.shape == (B, H) and weights.shape == (B, 7) and weights.dtype == torch.float64
    Wq, Wk, v = attn.W_q.weight.detach(), attn.W_k.weight.detach(), attn.v.weight[0].detach()  # (4, 3), (4, H), (4,)
    for b in range(B):
        e = [float(v @ torch.tanh(Wq @ q[b] + Wk @ k[b, s])) for s in range(LENGTHS[b])]  # real positions only
        a = torch.tensor(e, dtype=torch.float64).exp()
        a = a / a.sum()
        torch.testing.assert_close(weights[b, :LENGTHS[b]], a, **TOL)
        assert (weights[b, LENGTHS[b]:] == 0).all()  # exactly 0, not merely small
        torch.testing.assert_close(context[b], sum(a[s] * k[b, s] for s in range(LENGTHS[b])), **TOL)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B, dtype=torch.float64), **TOL)
    # the keys' projection, computed once per source, gives the same result
    context2, weights2 = attn(q, k, mask, projected_keys=attn.project_keys(k))
    assert torch.equal(context, context2) and torch.equal(weights, weights2)


@pytest.mark.parametrize("scaled", [False, True])
def test_dot_attention_against_softmax_and_sdpa(scaled):
    q, k, mask = randn(B, H, seed=3), randn(B, 7, H, seed=4), mask_of(LENGTHS)
    context, weights = DotAttention(scaled=scaled)(q, k, mask)
    scores = torch.bmm(q[:, None, :], k.transpose(1, 2))[:, 0] / (math.sqrt(H) if scaled else 1)  # (B, S)
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    torch.testing.assert_close(weights, expected, **TOL)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(B, dtype=torch.float64), **TOL)
    # torch's attention (one head, one query) scales by 1/sqrt(H) and takes True as "attend"
    scale = None if scaled else 1.0
    theirs = F.scaled_dot_product_attention(q[:, None, None, :], k[:, None], k[:, None],
                                            attn_mask=mask[:, None, None, :], scale=scale)[:, 0, 0]  # (B, H)
    torch.testing.assert_close(context, theirs, **TOL)


@pytest.mark.parametrize("attn", [AdditiveAttention(H, H, 4).double(), DotAttention()], ids=["additive", "dot"])
def test_attention_errors(attn):
    q, k = randn(B, H), randn(B, 7, H)
    with pytest.raises(ValueError, match=r"expected mask of shape \(B, S\) = \(4, 7\) like keys, got \(4, 6\)"):
        attn(q, k, mask_of(LENGTHS)[:, :6])
    with pytest.raises(TypeError, match="bool mask"):
        attn(q, k, mask_of(LENGTHS).double())
    with pytest.raises(ValueError, match="all False"):
        attn(q, k, mask_of([7, 4, 1, 5]) & torch.tensor([True, True, False, True])[:, None])
    with pytest.raises(ValueError, match=r"expected query of shape \(B, 6\) = \(4, 6\), got \(3, 6\)"):
        attn(q[:3], k, mask_of(LENGTHS))


# ---------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("cell,layers", [("gru", 1), ("lstm", 1), ("gru", 2), ("lstm", 2)])
def test_encoder_against_torch_on_each_source_alone(cell, layers, fused):
    model = make_model(cell=cell, num_layers=layers, fused=fused)
    src, lengths, _, _ = make_batch()
    out, state, mask = model.encoder(src, lengths)
    assert out.shape == (B, 7, H) and torch.equal(mask, mask_of(LENGTHS))
    torch.manual_seed(1)
    ref = (nn.GRU if cell == "gru" else nn.LSTM)(C, H, layers, batch_first=True).double()
    ref.load_state_dict(model.encoder.rnn.state_dict())  # chapter 4's layers have torch's parameter names
    for b, n in enumerate(LENGTHS):
        out_b, state_b = ref(model.encoder.wte(src[b:b + 1, :n]))  # the source alone, no padding
        torch.testing.assert_close(out[b:b + 1, :n], out_b, **TOL)
        assert (out[b, n:] == 0).all()
        for ours, theirs in zip(state if cell == "lstm" else (state,), state_b if cell == "lstm" else (state_b,)):
            torch.testing.assert_close(ours[:, b:b + 1], theirs, **TOL)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_fused_equals_chapter4_layers(cell, attention):
    ours, fused = make_model(attention, cell, num_layers=2), make_model(attention, cell, num_layers=2, fused=True)
    fused.load_state_dict(ours.state_dict())  # strict: the same parameter names and shapes
    batch = make_batch()
    (lo, so), (lf, sf) = ours(*batch), fused(*batch)
    torch.testing.assert_close(lo, lf, **TOL)
    torch.testing.assert_close(so, sf, **TOL)


# ---------------------------------------------------------------------------- padding
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_padding_invariance(attention, fused):
    model = make_model(attention, fused=fused)
    src, lengths, tgt_in, tgt_out = make_batch()
    logits, loss = model(src, lengths, tgt_in, tgt_out)
    real = tgt_out != -1  # (B, T)
    # more padding on both sides: the same numbers at the real positions, the same loss
    wide = model(F.pad(src, (0, 3)), lengths, F.pad(tgt_in, (0, 2)), F.pad(tgt_out, (0, 2), value=-1))
    torch.testing.assert_close(wide[0][:, :5][real], logits[real], **TOL)
    torch.testing.assert_close(wide[1], loss, **TOL)
    # other values at padded target inputs: the decoder reads them only after the target ended
    noisy = tgt_in.masked_fill(tgt_in == 0, 5)
    torch.testing.assert_close(model(src, lengths, noisy)[0][real], logits[real], **TOL)
    # each example alone, without padding: its row of the batch
    for b, n in enumerate(LENGTHS):
        t = int(real[b].sum())
        alone, _ = model(src[b:b + 1, :n], lengths[b:b + 1], tgt_in[b:b + 1, :t])
        torch.testing.assert_close(alone[0], logits[b, :t], **TOL)


def test_loss_ignores_padding():
    model = make_model()
    src, lengths, tgt_in, tgt_out = make_batch()
    logits, loss = model(src, lengths, tgt_in, tgt_out)
    real = tgt_out != -1
    assert loss.dim() == 0 and 0 < real.sum() < real.numel()
    expected = F.cross_entropy(logits[real], tgt_out[real])  # (N, V) against (N,)
    torch.testing.assert_close(loss, expected, **TOL)
    assert model(src, lengths, tgt_in)[1] is None


# ---------------------------------------------------------------------------- decoder
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_step_equals_teacher_forced_forward(attention, cell):
    model = make_model(attention, cell, num_layers=2)
    src, lengths, tgt_in, _ = make_batch()
    logits, _ = model(src, lengths, tgt_in)
    enc, state, mask = model.encoder(src, lengths)
    _, _, weights = model.decoder(tgt_in, state, enc, mask)
    for t in range(tgt_in.shape[1]):
        lt, state, wt = model.decoder.step(tgt_in[:, t], state, enc, mask)
        assert lt.shape == (B, TV)
        torch.testing.assert_close(lt, logits[:, t], **TOL)
        if attention is None:
            assert wt is None and weights is None
        else:
            torch.testing.assert_close(wt, weights[:, t], **TOL)
            assert (wt[~mask] == 0).all()


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_greedy_decode_reads_its_own_outputs(attention):
    model = make_model(attention, eos_bias=1.5)
    src, lengths, _, _ = make_batch(seed=3)
    tokens, attn = model.greedy_decode(src, lengths, max_len=9)
    assert len(tokens) == B and any(len(t) < 9 for t in tokens)
    for b, toks in enumerate(tokens):
        tgt_in = torch.tensor([[BOS] + toks])  # teacher forcing on the model's own outputs
        logits, _ = model(src[b:b + 1, :LENGTHS[b]], lengths[b:b + 1], tgt_in)
        best = logits[0].argmax(-1).tolist()  # (T,)
        assert best[:len(toks)] == toks and EOS not in toks
        if len(toks) < 9:  # it ended: </s> came next
            assert best[-1] == EOS
    if attention is None:
        assert attn is None
        return
    T = min(9, max(len(t) + 1 for t in tokens))  # steps run: until every output has ended
    assert attn.shape == (B, T, 7)
    for b, toks in enumerate(tokens):
        steps = min(len(toks) + 1, T)  # the rows that produced a token, </s> included
        torch.testing.assert_close(attn[b, :steps].sum(-1), torch.ones(steps, dtype=torch.float64), **TOL)
        assert (attn[b, steps:] == 0).all() and (attn[b, :, LENGTHS[b]:] == 0).all()


# ---------------------------------------------------------------------------- beam search
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attention,cell", [(None, "gru"), ("additive", "lstm"), ("dot", "gru")])
def test_beam_of_one_is_greedy(attention, cell, seed):
    model = make_model(attention, cell, num_layers=2, seed=seed, eos_bias=1.0)
    src, lengths, _, _ = make_batch(seed=seed)
    greedy, _ = model.greedy_decode(src, lengths, max_len=8)
    beams = model.beam_search(src, lengths, beam_size=1, max_len=8)
    assert [toks for toks, _ in beams] == greedy


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_score_is_the_models_normalized_log_prob(alpha):
    model = make_model("additive", eos_bias=2.0, seed=4)
    src, lengths, _, _ = make_batch(seed=4)
    for b, (toks, score) in enumerate(model.beam_search(src, lengths, beam_size=3, max_len=12, length_penalty=alpha)):
        target = torch.tensor([toks + [EOS]])
        logits, _ = model(src[b:b + 1, :LENGTHS[b]], lengths[b:b + 1], torch.tensor([[BOS] + toks]))
        logp = F.log_softmax(logits[0], -1).gather(-1, target[0, :, None]).sum().item()
        assert score == pytest.approx(length_normalized(logp, len(toks) + 1, alpha), abs=1e-9)


def chain(table, V=5):
    """A fake step function: the next token's distribution depends on the previous token only.
    ``table[prev] = {token: probability}``; the state is a dummy (1, K, 1) tensor."""
    logp = torch.full((V, V), -1e9, dtype=torch.float64)
    for prev, row in table.items():
        for tok, p in row.items():
            logp[prev, tok] = math.log(p)

    def step(y, state):
        return logp[y], state

    return step, torch.zeros(1, 1, 1)


A, Bt = 3, 4  # two ordinary tokens; 0 = <pad>, 1 = <s>, 2 = </s>


def test_beam_search_beats_greedy_on_a_hand_made_chain():
    # greedy takes A (0.6) then ends (0.4): P = 0.24; B (0.4) then </s> (1.0) is likelier: P = 0.4
    step, state = chain({BOS: {A: 0.6, Bt: 0.4}, A: {A: 0.3, Bt: 0.3, EOS: 0.4}, Bt: {EOS: 1.0}})
    greedy = beam_search(step, state, beam_size=1, max_len=5, bos_id=BOS, eos_id=EOS, length_penalty=0.0)
    best = beam_search(step, state, beam_size=2, max_len=5, bos_id=BOS, eos_id=EOS, length_penalty=0.0)
    assert greedy[0] == [A] and greedy[1] == pytest.approx(math.log(0.24))
    assert best[0] == [Bt] and best[1] == pytest.approx(math.log(0.4))
    assert best[1] > greedy[1]


def test_length_penalty_on_a_hand_made_chain():
    # </s> at once: P = 0.4, length 1; A </s>: 0.3, length 2; A B </s>: 0.3, length 3
    step, state = chain({BOS: {EOS: 0.4, A: 0.6}, A: {EOS: 0.5, Bt: 0.5}, Bt: {EOS: 1.0}})
    def run(alpha):
        return beam_search(step, state, beam_size=3, max_len=6, bos_id=BOS, eos_id=EOS, length_penalty=alpha)
    assert run(0.0) == ([], pytest.approx(math.log(0.4)))  # log P alone favours the shortest
    assert run(2.0) == ([A, Bt], pytest.approx(math.log(0.3) / (8 / 6) ** 2))  # -0.68 beats -0.92 and -0.88
    assert length_normalized(-2.0, 1, 1.0) == -2.0 and length_normalized(-4.0, 7, 1.0) == -2.0
    assert length_normalized(-3.0, 10, 0.0) == -3.0


def test_beam_search_without_end_stops_at_max_len():
    step, state = chain({BOS: {A: 1.0}, A: {A: 0.9, Bt: 0.1}, Bt: {A: 1.0}})
    assert beam_search(step, state, 2, max_len=4, bos_id=BOS, eos_id=EOS, length_penalty=0.0) == \
        ([A, A, A, A], pytest.approx(3 * math.log(0.9)))


# ---------------------------------------------------------------------------- learning
def test_learns_to_reverse_strings():
    g = torch.Generator().manual_seed(0)
    letters = "abcdef"

    def pairs(n):
        out = []
        for _ in range(n):
            k = int(torch.randint(2, 6, (1,), generator=g))
            s = "".join(letters[i] for i in torch.randint(0, 6, (k,), generator=g).tolist())
            out.append((s, s[::-1]))
        return out

    train, valid = pairs(3000), pairs(200)
    vocab = CharVocab(letters)
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(len(vocab), len(vocab), n_embd=16, hidden_size=48, attention="additive",
                                  fused=True))
    history = train_seq2seq(model, train, vocab, vocab, valid, steps=600, batch_size=64, lr=1e-2, eval_every=100,
                            eval_size=200, target_accuracy=0.9, device="cpu", progress=False)
    assert history.valid_loss[-1] < 0.3 * history.valid_loss[0]
    assert history.valid_accuracy[-1] >= 0.9 and len(history.valid_accuracy) == len(history.steps)
    assert exact_match(model, valid, vocab, vocab) == history.valid_accuracy[-1]
    assert translate(model, ["abc"], vocab, vocab, max_len=6, beam_size=3) == ["cba"]


# ---------------------------------------------------------------------------- errors
def test_config_errors():
    with pytest.raises(ValueError, match="unknown attention 'general'; expected None, 'additive' or 'dot'"):
        Seq2SeqConfig(SV, TV, attention="general")
    with pytest.raises(ValueError, match="unknown cell 'rnn'; expected 'gru' or 'lstm'"):
        Seq2SeqConfig(SV, TV, cell="rnn")
    with pytest.raises(ValueError, match="eos_id must be a target id in 0..7"):
        Seq2SeqConfig(SV, TV, eos_id=8)
    with pytest.raises(ValueError, match="dropout"):
        Seq2SeqConfig(SV, TV, dropout=1.0)
    with pytest.raises(TypeError, match="Seq2SeqConfig"):
        Seq2Seq({"src_vocab": SV})


def test_input_errors():
    model = make_model()
    src, lengths, tgt_in, tgt_out = make_batch()
    with pytest.raises(ValueError, match=r"src_lengths must be in 1..S = 1..7.*got 0..7"):
        model(src, torch.tensor([7, 0, 1, 5]), tgt_in)
    with pytest.raises(ValueError, match=r"src_lengths must be in 1..S = 1..7.*got 1..8"):
        model(src, torch.tensor([8, 4, 1, 5]), tgt_in)
    with pytest.raises(ValueError, match=r"expected src_lengths of shape \(B,\) = \(4,\)"):
        model(src, lengths[:3], tgt_in)
    with pytest.raises(ValueError, match="same batch size"):
        model(src, lengths, tgt_in[:2])
    with pytest.raises(ValueError, match="src holds ids from 0 to 9"):
        model(src.masked_fill(src == 3, 9), lengths, tgt_in)
    with pytest.raises(ValueError, match=r"expected targets of shape \(B, T\)"):
        model(src, lengths, tgt_in, tgt_out[:, :3])
    with pytest.raises(ValueError, match="max_len must be an integer > 0"):
        model.greedy_decode(src, lengths, max_len=0)
    with pytest.raises(ValueError, match="beam_size must be an integer > 0"):
        model.beam_search(src, lengths, beam_size=0, max_len=5)
