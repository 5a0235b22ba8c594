"""Exercise 5: expected values from the chapter's references (course_lib.seq2seq's AdditiveAttention,
Decoder.step and beam_search; course_lib.metrics' modified_precision and corpus_bleu, equal to
sacrebleu's) and, for Part 2, from torch.nn.GRU run on each source alone; the hidden cases."""

import torch

from course_lib import metrics, seq2seq
from course_lib.grading import compare
from course_lib.grading.cases.ch05 import (A_, B_, BOS, CHAIN, EOS, MAT, attention_inputs, build_decoder,
                                           decoder_weights, encoder_inputs, gru_sizes, gru_weights, make_step,
                                           random_log_probs, random_tokens, reference_attention, step_inputs, TINY)
from course_lib.grading.verdict import Ref

s = str.split


def _seed(rng):
    return int(rng.integers(2 ** 31))


# ----------------------------------------------------------------------------- Part 1
def _attention_compare(result, expected, args):
    """The weights (rtol 1e-5, atol 1e-6), exactly 0 at padding, then the context (1e-5, 1e-5)."""
    if type(result) is not tuple or len(result) != 2:
        return compare.same(result, expected)
    mismatch = compare.same(result[1], expected[1], 1e-5, 1e-6, "the weights")
    if mismatch:
        return mismatch
    padded = [w for w, real in zip(result[1].values, args[2].values) if not real]
    if any(w != 0 for w in padded):
        return compare.Mismatch("value", f"the weights: padded positions must get weight exactly 0, got {padded[:8]}")
    return compare.same(result[0], expected[0], 1e-5, 1e-5, "the context")


def _attention_cases(rng):
    cases = {
        "the hand-worked example without its mask": (*TINY[:2], torch.ones(1, 3, dtype=torch.bool), *TINY[3:]),
        "float64, A < Dk": attention_inputs(B=4, S=7, Dq=5, Dk=5, A=3, seed=_seed(rng), lengths=[7, 1, 4, 2],
                                            dtype=torch.float64),
        "one source token": attention_inputs(B=1, S=1, Dq=2, Dk=3, A=4, seed=_seed(rng)),
        "saturated tanh": attention_inputs(B=2, S=6, Dq=3, Dk=4, A=5, seed=_seed(rng), lengths=[6, 2], scale=5.0),
        "no padding": attention_inputs(B=5, S=4, Dq=8, Dk=2, A=16, seed=_seed(rng)),
        "sizes of 1": attention_inputs(B=3, S=9, Dq=1, Dk=1, A=1, seed=_seed(rng), lengths=[1, 9, 5]),
        "large scores": attention_inputs(B=2, S=3, Dq=2, Dk=2, A=2, seed=_seed(rng), lengths=[3, 1], scale=30.0),
    }
    for i, dtype in enumerate((torch.float32, torch.float64)):
        B, S = (int(n) for n in rng.integers(1, 7, size=2))
        Dq, Dk, A = (int(n) for n in rng.integers(1, 9, size=3))
        lengths = [int(n) for n in rng.integers(1, S + 1, size=B)]
        cases[f"random sizes {i + 1}"] = attention_inputs(B=B, S=S, Dq=Dq, Dk=Dk, A=A, seed=_seed(rng),
                                                          lengths=lengths, dtype=dtype)
    return cases


# ----------------------------------------------------------------------------- Part 2
def _encode_expected(x, lengths, weights):
    """Each source alone, without its padding, through torch.nn.GRU with these weights, in float64:
    (outputs (B, S, H), zeros at padding; every layer's final state (L, B, H)), in x's dtype."""
    C, H, L = gru_sizes(weights)
    gru = torch.nn.GRU(C, H, L, batch_first=True).double()
    gru.load_state_dict({name: w.double() for name, w in weights.items()})
    B, S, _ = x.shape
    outputs = torch.zeros(B, S, H, dtype=torch.float64)
    states = []
    with torch.no_grad():
        for b, n in enumerate(lengths.tolist()):
            out, h = gru(x[b:b + 1, :n].double())  # (1, n, H), (L, 1, H): the source alone
            outputs[b, :n] = out[0]
            states.append(h[:, 0])
    return outputs.to(x.dtype), torch.stack(states, dim=1).to(x.dtype)  # (B, S, H), (L, B, H)


def _encode_compare(result, expected, args):
    """A pair; the outputs exactly 0 at padding, then both within rtol 1e-5, atol 1e-6."""
    if type(result) is not tuple or len(result) != 2:
        return compare.same(result, expected)
    mismatch = compare.same(result[0], expected[0], 1e-5, 1e-6, "the outputs")
    if mismatch:
        return mismatch
    B, S, H = expected[0].shape
    lengths = args[1].values
    padded = [v for i, v in enumerate(result[0].values) if (i // H) % S >= lengths[i // (S * H)]]
    if any(v != 0 for v in padded):
        return compare.Mismatch("value", f"the outputs: padded positions must be exactly 0, got {padded[:8]}")
    return compare.same(result[1], expected[1], 1e-5, 1e-6, "the final state")


def _encode_case(rng, B, S, C, H, L, lengths=None, dtype=torch.float32, pad_value=100.0):
    if lengths is None:
        lengths = [int(n) for n in rng.integers(1, S + 1, size=B)]
    seed = _seed(rng)
    return (*encoder_inputs(B, S, C, lengths, seed, dtype, pad_value), gru_weights(C, H, L, seed, dtype))


def _encode_cases(rng):
    cases = {
        "float64, two layers": _encode_case(rng, B=4, S=7, C=5, H=6, L=2, lengths=[7, 3, 1, 5],
                                            dtype=torch.float64),
        "three layers, a batch of 5": _encode_case(rng, B=5, S=6, C=3, H=4, L=3, lengths=[2, 6, 6, 1, 4]),
        "a batch of one padded source": _encode_case(rng, B=1, S=5, C=4, H=5, L=2, lengths=[2]),
        "every source one token long": _encode_case(rng, B=3, S=4, C=2, H=3, L=2, lengths=[1, 1, 1]),
        "S = 1": _encode_case(rng, B=2, S=1, C=3, H=4, L=1, lengths=[1, 1]),
        "C = H = 1": _encode_case(rng, B=3, S=5, C=1, H=1, L=1, lengths=[5, 1, 3]),
        "long sources, the longest last": _encode_case(rng, B=4, S=12, C=4, H=8, L=1, lengths=[3, 9, 5, 12]),
        "no padding, two layers": _encode_case(rng, B=3, S=5, C=3, H=4, L=2, lengths=[5, 5, 5]),
        "padding of small numbers": _encode_case(rng, B=3, S=6, C=4, H=5, L=2, lengths=[6, 2, 4], pad_value=0.5),
    }
    for i, dtype in enumerate((torch.float32, torch.float64, torch.float32)):
        B, S, C, H, L = (int(n) for n in rng.integers([1, 1, 1, 1, 1], [6, 9, 6, 8, 4]))
        cases[f"random sizes {i + 1}"] = _encode_case(rng, B=B, S=S, C=C, H=H, L=L, dtype=dtype)
    return cases


# ----------------------------------------------------------------------------- Part 3
def _step_expected(y_prev, state, encoder_outputs, mask, sizes, weights):
    decoder = build_decoder(sizes, weights)
    with torch.no_grad():
        return tuple(t.clone() for t in decoder.step(y_prev, state, encoder_outputs, mask))


def _step_case(rng, V, C, H, B, S, A=None, L=1, dtype=torch.float32, lengths=None):
    sizes, weights = decoder_weights(V=V, C=C, H=H, seed=_seed(rng), A=A, L=L, dtype=dtype)
    return (*step_inputs(sizes, B=B, S=S, seed=_seed(rng), lengths=lengths, dtype=dtype), sizes, weights)


def _step_cases(rng):
    cases = {
        "attention size A different from H": _step_case(rng, V=11, C=5, H=8, A=3, B=4, S=6, lengths=[6, 1, 3, 5]),
        "2 layers: the query is the top layer's state": _step_case(rng, V=9, C=4, H=6, L=2, B=3, S=4,
                                                                   lengths=[4, 2, 3]),
        "float64 stays float64": _step_case(rng, V=6, C=3, H=5, A=7, dtype=torch.float64, B=2, S=7, lengths=[7, 3]),
        "one source token": _step_case(rng, V=4, C=2, H=3, B=1, S=1),
        "3 layers, float64": _step_case(rng, V=13, C=6, H=10, L=3, dtype=torch.float64, B=5, S=8,
                                        lengths=[8, 8, 1, 4, 6]),
    }
    V, C, H, A, L, B, S = (int(n) for n in rng.integers([3, 1, 1, 1, 1, 1, 1], [12, 6, 8, 8, 3, 5, 7]))
    cases["random sizes"] = _step_case(rng, V=V, C=C, H=H, A=A, L=L, B=B, S=S,
                                       lengths=[int(n) for n in rng.integers(1, S + 1, size=B)])
    return cases


# ----------------------------------------------------------------------------- Part 4
def _beam_expected(model, beam_size, max_len, length_penalty):
    step, state = make_step(model)
    return seq2seq.beam_search(step, state, beam_size, max_len, BOS, EOS, length_penalty)


def _random_model(rng, V, eos_bonus=1.0):
    return {"kind": "random", "log_probs": random_log_probs(V, seed=_seed(rng), eos_bonus=eos_bonus)}


def _gru_model(rng, V, H):
    """A tiny untrained GRU language model (torch's initialization, seeded) and its first state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(rng))
        emb = torch.nn.Embedding(V, H).double()
        gru = torch.nn.GRU(H, H, batch_first=True).double()
        head = torch.nn.Linear(H, V).double()
        state = torch.randn(1, 1, H, dtype=torch.float64)
    weights = {"emb.weight": emb.weight.detach().clone(), "head.weight": head.weight.detach().clone(),
               "head.bias": head.bias.detach().clone()}
    weights.update({f"gru.{name}": p.detach().clone() for name, p in gru.named_parameters()})
    return {"kind": "gru", "weights": weights, "state": state}


def _beam_cases(rng):
    # </s> at once: P = 0.4, length 1; a </s>: 0.27, length 2; a b </s>: 0.33, length 3
    by_length = {"kind": "table", "V": 5, "table": {(): {EOS: 0.4, A_: 0.6}, (A_,): {EOS: 0.45, B_: 0.55},
                                                    (A_, B_): {EOS: 1.0}}}
    cases = {
        "the hand-worked example, greedy, length penalty 0.6": (CHAIN, 1, 5, 0.6),
        "the hand-worked example, a beam of 2, length penalty 1": (CHAIN, 2, 5, 1.0),
        "log P alone favours the empty output": (by_length, 2, 5, 0.0),
        "a length penalty of 2 favours the longest": (by_length, 2, 5, 2.0),
        "three lengths, length penalty 0.6": (by_length, 2, 5, 0.6),
        "nothing ends: max_len cuts every prefix": (_random_model(rng, V=8, eos_bonus=-20.0), 3, 4, 0.6),
        "greedy on a random model": (_random_model(rng, V=5), 1, 10, 0.6),
    }
    for i, (beam_size, alpha) in enumerate([(2, 0.0), (4, 0.6), (5, 1.0), (3, 2.0)], start=1):
        cases[f"random model {i}, beam of {beam_size}"] = (_random_model(rng, V=7), beam_size, 8, alpha)
    cases["max_len = 1"] = (_random_model(rng, V=6), 3, 1, 0.6)
    cases["long sequences, beam of 4"] = (_random_model(rng, V=6, eos_bonus=-1.0), 4, 12, 0.6)
    cases["a GRU model's state (1, K, H)"] = (_gru_model(rng, V=9, H=8), 4, 7, 0.6)
    return cases


# ----------------------------------------------------------------------------- Part 5
def _precision_cases(rng):
    cases = {
        "no n-gram in the hypothesis": (s("the cat"), [s("the cat sat")], 3),
        "an empty hypothesis": ([], [s("the cat")], 1),
        "an empty reference counts nothing": (s("a a a b"), [[], s("a b a")], 1),
        "repeated bigrams, two references": (s("a b a b a b"), [s("a b a b"), s("b a b a b a")], 2),
        "any strings": (s("le café est très bon"), [s("le café est bon"), s("très bon café")], 1),
        "4-grams": (s("the cat sat on the mat"), [s("the cat sat on the mat")], 4),
    }
    for i in range(12):
        n = int(rng.integers(1, 5))
        hyp = random_tokens(rng, 0, 15)
        refs = [random_tokens(rng, 0, 15) for _ in range(int(rng.integers(1, 5)))]
        cases[f"random words {i + 1}"] = (hyp, refs, n)
    return cases


# ----------------------------------------------------------------------------- Part 6
def _bleu_expected(hypotheses, references, max_order):
    """The chapter's corpus_bleu (equal to sacrebleu's) on the texts that the tokens spell."""
    hyp_texts = [" ".join(h) for h in hypotheses]
    ref_texts = [[" ".join(r) for r in refs] for refs in references]
    for text, tokens in zip(hyp_texts + sum(ref_texts, []), hypotheses + sum(references, [])):
        assert metrics.tokenize_13a(text) == list(tokens), f"the case's text {text!r} has other 13a tokens"
    return metrics.corpus_bleu(hyp_texts, ref_texts, max_order=max_order)


def _bleu_cases(rng):
    cases = {
        "a perfect match": ([s("the cat sat on the mat")], MAT, 4),
        "closest reference length, a tie": ([s("a b c d e")], [[s("a b c"), s("a b c d e f g")]], 4),
        "closest reference length, a tie, the other order": ([s("a b c d e")], [[s("a b c d e f g"), s("a b c")]], 4),
        "no match at all": ([s("x y z w")], [[s("a b c d")]], 4),
        "three orders smoothed": ([s("mat cat the on")], MAT, 4),
        "an empty hypothesis in the corpus": ([[], s("the cat sat on the mat")],
                                              [[s("the cat")], [s("the cat sat on the mat")]], 4),
        "sums over the corpus before dividing": ([s("the cat"), s("a dog sat on the rug")],
                                                 [[s("the cat sat")], [s("a dog sat on a rug")]], 4),
        "max_order = 2": ([s("the cat sat on a mat")], MAT, 2),
        "max_order = 1": ([s("the the the")], [[s("the cat")]], 1),
    }
    for i in range(6):
        corpus = [random_tokens(rng, 3, 15) for _ in range(int(rng.integers(1, 7)))]
        refs = [[random_tokens(rng, 3, 15) for _ in range(int(rng.integers(1, 4)))] for _ in corpus]
        cases[f"random corpus {i + 1}"] = (corpus, refs, int(rng.integers(1, 5)))
    return cases


REFS = {
    "additive_attention": Ref(reference_attention, hidden=_attention_cases, compare=_attention_compare),
    "encode_padded": Ref(_encode_expected, hidden=_encode_cases, compare=_encode_compare),
    "decoder_step": Ref(_step_expected, hidden=_step_cases, rtol=1e-5, atol=1e-5),
    "beam_search": Ref(_beam_expected, hidden=_beam_cases, rtol=1e-9, atol=1e-12),
    "modified_precision": Ref(metrics.modified_precision, hidden=_precision_cases),
    "bleu": Ref(_bleu_expected, hidden=_bleu_cases, rtol=1e-9, atol=1e-9),
}
