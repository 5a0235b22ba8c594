"""Exercise 5 (sequence to sequence, attention and BLEU): the graded parts and their visible cases.

Nothing that is not plain data crosses, so the call adapters build what the graded code is
handed from plain arguments: Part 2's GRU from a state dict, Part 3's ``Decoder`` from its
sizes and a state dict, Part 4's ``step`` function from a table of probabilities, a table
of log-probabilities or the weights of a tiny GRU language model.

Part 2's GRU runs only on the whole batch (``WholeBatchGRU``): a call on fewer rows than
the batch, or on a packed sequence, raises. So the part asks for a batched encoder, not a
loop over the sources nor ``pack_padded_sequence``.

No cascades: Part 3 (``decoder_step``) and Part 6 (``bleu``) build on Parts 1 and 5. While
their cases run, ``additive_attention`` and ``modified_precision`` in the notebook are the
course's references (the chapter's ``AdditiveAttention`` with the given weights, and
``course_lib.metrics.modified_precision``), restored afterwards; the functions those need
are exempt from the guard for the time. So a bug in Part 1 or 5 costs that part only.
"""

import importlib
import importlib.util
import math
import random

import torch

from course_lib import metrics, seq2seq, train
from course_lib.grading.kernel import Part, lend

BOS, EOS = 1, 2  # the chapter's numbering: 0 = <pad>, 1 = <s>, 2 = </s>
A_, B_ = 3, 4  # Part 4's two words, a and b


# ----------------------------------------------------------------------------- Part 1: attention
def _softmax_family():
    pairs = []
    owners = (("torch", "", torch), ("torch", "Tensor.", torch.Tensor), ("torch.special", "", torch.special),
              ("torch.nn.functional", "", torch.nn.functional))
    for module, prefix, owner in owners:
        pairs += [(module, prefix + name) for name in ("softmax", "log_softmax", "logsumexp") if hasattr(owner, name)]
    return tuple(pairs)


SOFTMAX_FAMILY = _softmax_family()


def attention_inputs(B, S, Dq, Dk, A, seed, lengths=None, dtype=torch.float32, scale=1.0):
    """query (B, Dq), keys (B, S, Dk), mask (B, S), W_q (A, Dq), W_k (A, Dk), v (A,), seeded.
    Source b has lengths[b] real tokens (all S by default); its padded keys hold 100s."""
    g = torch.Generator().manual_seed(seed)
    query, keys, W_q, W_k, v = [torch.randn(*shape, generator=g, dtype=dtype) * scale
                                for shape in [(B, Dq), (B, S, Dk), (A, Dq), (A, Dk), (A,)]]
    lengths = torch.tensor([S] * B if lengths is None else lengths)
    mask = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    keys = keys.masked_fill(~mask[:, :, None], 100.0)  # whatever sits at padding must not count
    return (query, keys, mask, W_q, W_k, v)


def reference_attention(query, keys, mask, W_q, W_k, v):
    """The same weights in the chapter's AdditiveAttention: (context, weights)."""
    layer = seq2seq.AdditiveAttention(W_q.shape[1], W_k.shape[1], W_q.shape[0]).to(query.dtype)
    with torch.no_grad():
        layer.W_q.weight.copy_(W_q)
        layer.W_k.weight.copy_(W_k)
        layer.v.weight.copy_(v.reshape(1, -1))  # the layer stores v as (1, A)
        context, weights = layer(query, keys, mask)
    return context.clone(), weights.clone()


def _attention_exempt():
    """What ``reference_attention`` runs in course_lib."""
    return (reference_attention, seq2seq.AdditiveAttention, seq2seq._check_attention_inputs, seq2seq._attend,
            train._check_positive_int)


R = math.atanh(0.5)
t = torch.tensor
# real scores [0, ln 3] -> weights [1/4, 3/4, 0]; context 1/4 k_1 + 3/4 k_2 = [0.75 atanh(1/2), 1.75]
TINY = (t([[0.0]]), t([[[0.0, 1.0], [R, 2.0], [9.0, 9.0]]]), t([[True, True, False]]),
        t([[1.0]]), t([[1.0, 0.0]]), t([2 * math.log(3.0)]))


# ----------------------------------------------------------------------------- Part 2: the encoder over a padded batch
class WholeBatchGRU(torch.nn.GRU):
    """``torch.nn.GRU(batch_first=True)`` that runs on the whole batch only: an input (B, n, C)
    with the batch's B rows, never a packed sequence."""

    def __init__(self, *args, batch, **kwargs):
        super().__init__(*args, **kwargs)
        self.batch = batch

    def forward(self, input, hx=None):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"in this part rnn takes a tensor (B, n, C), got {type(input).__name__}: "
                            "packed sequences are not allowed, write the masking yourself")
        if input.dim() != 3 or input.shape[0] != self.batch:
            raise ValueError(f"call rnn on the whole batch: an input (B, n, C) with B = {self.batch} rows, "
                             f"got {tuple(input.shape)}")
        return super().forward(input, hx)


def gru_weights(C, H, L, seed, dtype=torch.float32):
    """The parameters of a torch.nn.GRU(C, H, L) initialized from torch's seed ``seed``, by name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gru = torch.nn.GRU(C, H, L, batch_first=True).to(dtype)
    return {name: p.detach().clone() for name, p in gru.named_parameters()}


def gru_sizes(weights):
    """(C, H, L) of the GRU these parameters belong to."""
    L = sum(name.startswith("weight_ih_l") for name in weights)
    return weights["weight_ih_l0"].shape[1], weights["weight_hh_l0"].shape[1], L


def encoder_inputs(B, S, C, lengths, seed, dtype=torch.float32, pad_value=100.0):
    """x (B, S, C), seeded, with ``pad_value`` at every padded position; lengths (B,) long."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, C, generator=g, dtype=dtype)
    lengths = torch.tensor(lengths)
    real = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    return x.masked_fill(~real[:, :, None], pad_value), lengths  # what sits at padding must not count


PACKING = tuple(("torch.nn.utils.rnn", name) for name in ("pack_padded_sequence", "pack_sequence"))


def _encode(ns, x, lengths, weights):
    """encode_padded on a WholeBatchGRU with these weights."""
    C, H, L = gru_sizes(weights)
    rnn = WholeBatchGRU(C, H, L, batch_first=True, batch=x.shape[0]).to(weights["weight_ih_l0"].dtype)
    rnn.load_state_dict(weights)
    with torch.no_grad():
        return ns["encode_padded"](x, lengths, rnn)


def _encoder_case(B, S, C, H, L, lengths, seed, dtype=torch.float32):
    return (*encoder_inputs(B, S, C, lengths, seed, dtype), gru_weights(C, H, L, seed, dtype))


# ----------------------------------------------------------------------------- Part 3: a decoder step
def decoder_weights(V, C, H, seed, A=None, L=1, dtype=torch.float32):
    """(sizes, state dict) of one of the chapter's decoders, initialized from torch's seed ``seed``."""
    sizes = {"V": V, "C": C, "H": H, "A": A, "L": L}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = build_decoder(sizes, None, dtype)
    return sizes, {k: v.detach().clone() for k, v in decoder.state_dict().items()}


def build_decoder(sizes, weights, dtype=None):
    """The chapter's Decoder (torch.nn.GRU layers, additive attention, no dropout) with these weights."""
    config = seq2seq.Seq2SeqConfig(src_vocab=sizes["V"], tgt_vocab=sizes["V"], n_embd=sizes["C"],
                                   hidden_size=sizes["H"], attn_dim=sizes["A"], num_layers=sizes["L"], fused=True)
    decoder = seq2seq.Decoder(config)
    if weights is not None:
        dtype = weights["lm_head.weight"].dtype
        decoder.to(dtype)
        decoder.load_state_dict(weights)
    elif dtype is not None:
        decoder.to(dtype)
    return decoder.eval()


def step_inputs(sizes, B, S, seed, lengths=None, dtype=torch.float32):
    """y_prev (B,), state (L, B, H), encoder_outputs (B, S, H), mask (B, S), seeded."""
    g = torch.Generator().manual_seed(seed)
    y_prev = torch.randint(0, sizes["V"], (B,), generator=g)
    state = torch.randn(sizes["L"], B, sizes["H"], generator=g, dtype=dtype)
    encoder_outputs = torch.randn(B, S, sizes["H"], generator=g, dtype=dtype)
    lengths = torch.tensor([S] * B if lengths is None else lengths)
    mask = torch.arange(S)[None, :] < lengths[:, None]  # (B, S)
    return (y_prev, state, encoder_outputs, mask)


def _decoder_step(ns, y_prev, state, encoder_outputs, mask, sizes, weights):
    """decoder_step on the decoder these weights make, with the reference's additive_attention lent."""
    decoder = build_decoder(sizes, weights)
    with torch.no_grad(), lend(ns, additive_attention=reference_attention):
        return ns["decoder_step"](y_prev, state, encoder_outputs, mask, decoder)


def _decoder_exempt():
    """What building the decoder and the lent attention run in course_lib (not ``Decoder.step``)."""
    return (*_attention_exempt(), seq2seq.Seq2SeqConfig, seq2seq.Decoder.__init__, seq2seq._layers)


def _zero_decoder():
    """All weights zero but the output bias arange(5): uniform weights, state / 2, logits = bias."""
    sizes, weights = decoder_weights(V=5, C=3, H=4, seed=0)
    weights = {k: torch.zeros_like(v) for k, v in weights.items()}
    weights["lm_head.bias"] = torch.arange(5.0)
    return sizes, weights


ZERO = _zero_decoder()
SMALL = decoder_weights(V=7, C=4, H=6, seed=1)


# ----------------------------------------------------------------------------- Part 4: beam search
def make_step(model):
    """(step, state) from a plain description of a model (see the three kinds below)."""
    kind = model["kind"]
    if kind == "table":  # next-token probabilities looked up in table[prefix] (</s> for sure elsewhere)
        table, V = model["table"], model["V"]

        def step(y_prev, state):
            state = torch.cat([state, y_prev.view(1, -1, 1)], dim=-1)  # (1, K, t + 1): each prefix, <s> first
            rows = [table.get(tuple(tokens[1:]), {EOS: 1.0}) for tokens in state[0].tolist()]
            probs = torch.tensor([[row.get(v, 0.0) for v in range(V)] for row in rows], dtype=torch.float64)
            return probs.log(), state  # (K, V)
        return step, torch.zeros(1, 1, 0, dtype=torch.long)
    if kind == "random":  # log-probabilities given the last two tokens, a (V, V, V) table
        logp = model["log_probs"]

        def step(y_prev, state):
            return logp[state[0, :, 0], y_prev], y_prev.view(1, -1, 1)  # (K, V), (1, K, 1)
        return step, torch.full((1, 1, 1), BOS)
    if kind == "gru":  # a tiny GRU language model; its state is (1, K, H)
        w = model["weights"]
        V, H = w["head.weight"].shape
        emb = torch.nn.Embedding(V, H).double()
        gru = torch.nn.GRU(H, H, batch_first=True).double()
        head = torch.nn.Linear(H, V).double()
        with torch.no_grad():
            emb.weight.copy_(w["emb.weight"])
            for name, p in gru.named_parameters():
                p.copy_(w[f"gru.{name}"])
            head.weight.copy_(w["head.weight"])
            head.bias.copy_(w["head.bias"])

        def step(y_prev, state):
            with torch.no_grad():
                out, state = gru(emb(y_prev)[:, None, :], state)  # (K, 1, H), (1, K, H)
                return torch.log_softmax(head(out[:, 0]), dim=-1), state  # (K, V)
        return step, model["state"].clone()
    raise ValueError(f"unknown model kind {kind!r}")


def random_log_probs(V, seed, eos_bonus=1.0):
    """(V, V, V) log-probabilities of the next token given the last two, from a seeded torch generator."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(V, V, V, generator=g, dtype=torch.float64)
    logits[..., EOS] += eos_bonus
    return torch.log_softmax(logits, dim=-1)


def _beam_search(ns, model, beam_size, max_len, length_penalty):
    step, state = make_step(model)
    return ns["beam_search"](step, state, beam_size, max_len, BOS, EOS, length_penalty)


# after <s>: a 0.6, b 0.4; after <s> a: a 0.35, b 0.25, </s> 0.4; after <s> b: </s> 1.0
CHAIN = {"kind": "table", "V": 5, "table": {(): {A_: 0.6, B_: 0.4}, (A_,): {A_: 0.35, B_: 0.25, EOS: 0.4}}}


# ----------------------------------------------------------------------------- Parts 5 and 6: BLEU
def _bleu_built_ins():
    """The BLEU functions of nltk and sacrebleu, where they are installed."""
    pairs = []
    if importlib.util.find_spec("nltk") is not None:
        pairs += [("nltk.translate.bleu_score", name) for name in ("modified_precision", "corpus_bleu",
                                                                   "sentence_bleu", "brevity_penalty",
                                                                   "closest_ref_length")]
        pairs += [("nltk.translate", "bleu")]
    if importlib.util.find_spec("sacrebleu") is not None:
        pairs += [("sacrebleu", "corpus_bleu"), ("sacrebleu", "sentence_bleu")]
        pairs += [("sacrebleu.metrics.bleu", f"BLEU.{name}") for name in ("corpus_score", "sentence_score",
                                                                         "compute_bleu", "_compute_score_from_stats")]
    out = []
    for module, path in pairs:
        owner = importlib.import_module(module)
        *parents, name = path.split(".")
        for p in parents:
            owner = getattr(owner, p)
        if hasattr(owner, name):
            out.append((module, path))
    return tuple(out)


BLEU_BUILT_INS = _bleu_built_ins()
WORDS = "the a cat dog sat on mat rug and is there".split()


def random_tokens(rng, low, high):
    """Words of WORDS drawn with ``rng`` (random.Random or numpy's Generator), low to high of them."""
    if isinstance(rng, random.Random):
        return [rng.choice(WORDS) for _ in range(rng.randint(low, high))]
    return [WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=int(rng.integers(low, high + 1)))]


def _bleu(ns, hypotheses, references, max_order):
    """bleu with the reference's modified_precision lent."""
    with lend(ns, modified_precision=metrics.modified_precision):
        return ns["bleu"](hypotheses, references, max_order)


def _bleu_exempt():
    return (metrics.modified_precision, metrics.ngram_counts, metrics._check_tokens, metrics._check_order)


def _visible_random_precision():
    rng = random.Random(0)
    return (random_tokens(rng, 5, 12), [random_tokens(rng, 5, 12) for _ in range(2)], 2)


def _visible_random_bleu():
    rng = random.Random(0)
    corpus = [random_tokens(rng, 4, 12) for _ in range(5)]
    return (corpus, [[random_tokens(rng, 4, 12) for _ in range(2)] for _ in corpus], 4)


s = str.split
MAT = [[s("the cat sat on the mat")]]

PARTS = {
    "additive_attention": Part("test_additive_attention", "additive_attention", {
        "the hand-worked example": TINY,
        "batch of 3, S = 5, real tokens 5, 3, 1": attention_inputs(B=3, S=5, Dq=4, Dk=6, A=8, seed=0,
                                                                   lengths=[5, 3, 1]),
    }, switched_off=SOFTMAX_FAMILY,
        why="torch's softmax, log_softmax and logsumexp are switched off in this test: "
            "mask the scores and write the softmax yourself"),
    "encode_padded": Part("test_encode_padded", "encode_padded", {
        "no padding: rnn(x) itself": _encoder_case(B=2, S=4, C=3, H=5, L=1, lengths=[4, 4], seed=0),
        "one layer, lengths 5, 2, 3": _encoder_case(B=3, S=5, C=4, H=6, L=1, lengths=[5, 2, 3], seed=1),
        "two layers, lengths 4, 1, 6": _encoder_case(B=3, S=6, C=3, H=5, L=2, lengths=[4, 1, 6], seed=2),
    }, call=_encode, switched_off=PACKING,
        why="packing does the masking for you: in this part, write it yourself"),
    "decoder_step": Part("test_decoder_step", "decoder_step", {
        "all weights zero but the output bias": (*step_inputs(ZERO[0], B=2, S=3, seed=0, lengths=[3, 2]), *ZERO),
        "batch of 3, S = 5, H = 6": (*step_inputs(SMALL[0], B=3, S=5, seed=1, lengths=[5, 2, 4]), *SMALL),
    }, call=_decoder_step, exempt=_decoder_exempt),
    "beam_search": Part("test_beam_search", "beam_search", {
        "the hand-worked example, greedy": (CHAIN, 1, 5, 0.0),
        "the hand-worked example, a beam of 2": (CHAIN, 2, 5, 0.0),
        "random model, V = 6, beam of 3": ({"kind": "random", "log_probs": random_log_probs(V=6, seed=0)}, 3, 6, 0.6),
    }, call=_beam_search),
    "modified_precision": Part("test_modified_precision", "modified_precision", {
        "seven times 'the' (Papineni et al.)": (s("the the the the the the the"),
                                                [s("the cat is on the mat"), s("there is a cat on the mat")], 1),
        "the max over references, not their sum": (s("the the cat"), [s("the cat"), s("the dog")], 1),
        "bigrams": (s("the cat sat on a mat"), [s("the cat sat on the mat")], 2),
        "random words, two references": _visible_random_precision(),
    }, switched_off=BLEU_BUILT_INS,
        why="the BLEU functions of nltk and sacrebleu are switched off in this test: count the n-grams yourself"),
    "bleu": Part("test_bleu", "bleu", {
        "one word changed": ([s("the cat sat on a mat")], MAT, 4),
        "brevity penalty": ([s("the cat sat on")], MAT, 4),
        "two orders smoothed": ([s("the mat sat on a cat")], MAT, 4),
        "no trigram at all": ([s("the cat")], [[s("the cat sat")]], 4),
        "random corpus of 5, two references each": _visible_random_bleu(),
    }, call=_bleu, exempt=_bleu_exempt, switched_off=BLEU_BUILT_INS,
        why="the BLEU functions of nltk and sacrebleu are switched off in this test: compute BLEU yourself"),
}
