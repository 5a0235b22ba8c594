"""Exercise 8 (BERT): the graded parts and their visible cases.

The parts do not build on one another: each is handed its inputs as data. The course_lib
objects a part works on (a ``BertEmbeddings``, the pooler and classifier layers) are built
inside the call from plain arguments (shapes and a seed, or the weights themselves); the
``BertEmbeddings`` is made without running course_lib code, so its own ``forward`` stays
switched off like the rest of course_lib while the student's code runs.

Large inputs travel as a recipe (a shape and a seed for a ``torch.Generator``) that this
module turns into tensors the same way on both sides. ``mask_tokens`` is random: its result
is judged statistically by the grader, and it comes back packed (``pack_masks``: the chosen
and changed positions as bitmaps, the values there, compressed), losslessly, so that tens
of thousands of positions fit in a few kilobytes.
"""

from __future__ import annotations

import base64
import importlib.util
import zlib

import numpy as np
import torch

from course_lib.bert import BertEmbeddings
from course_lib.grading.kernel import Part

SPECIALS = [0, 1, 2, 3]  # [PAD] [CLS] [SEP] [MASK]
LN_EPS = 1e-12  # BERT's LayerNorm epsilon


# ---------------------------------------------------------------- Part 1: mask_tokens
def mask_batch(ids, special_ids):
    """The input_ids of a case: a tensor as it is, or a recipe (dict) made into one.

    Recipe: ``shape`` (B, T), ``seed``: ordinary tokens (those not in ``special_ids``)
    drawn uniformly, ``cls`` first and ``sep`` last in every row, ``pad`` over the last
    quarter of every other row, ``unk`` at position 10 of every fifth row if given;
    ``one_d``: the first row alone; ``fill``: every position that token instead."""
    if isinstance(ids, torch.Tensor):
        return ids
    B, T = ids["shape"]
    if "fill" in ids:
        return torch.full((B, T), int(ids["fill"]), dtype=torch.long)
    ordinary = torch.tensor([i for i in range(ids["vocab_size"]) if i not in set(special_ids)], dtype=torch.long)
    out = ordinary[torch.randint(len(ordinary), (B, T), generator=torch.Generator().manual_seed(ids["seed"]))]
    out[:, 0], out[:, -1] = ids["cls"], ids["sep"]
    out[::2, T * 3 // 4:] = ids["pad"]
    if "unk" in ids:
        out[::5, 10] = ids["unk"]
    return out[0] if ids.get("one_d") else out


def _b64z(array) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(array).tobytes(), 9)).decode("ascii")


def _values(array, bases: dict) -> list:
    """[dtype, packed bytes, base] of a 1-D int64 array less one of ``bases`` (name -> an
    array of its length), the one that packs smallest (int16 where the values fit)."""
    best = None
    for name, base in bases.items():
        diff = array - base
        if diff.size == 0 or (diff.min() >= -2 ** 15 and diff.max() < 2 ** 15):
            diff = diff.astype(np.int16)
        packed = [str(diff.dtype), _b64z(diff), name]
        if best is None or len(packed[1]) < len(best[1]):
            best = packed
    return best


def pack_masks(input_ids, inputs, labels, after) -> dict:
    """The result of one run, lossless given input_ids (as it was before the call): bitmaps of
    the positions chosen (labels != -1), changed (inputs != input_ids) and moved (input_ids
    changed by the call), and the values there (``_values``: as differences, mostly 0, from
    input_ids or the inputs, so that the usual mistakes pack small too)."""
    ids, inp, lab, aft = (t.detach().cpu().reshape(-1).numpy() for t in (input_ids, inputs, labels, after))
    chosen, changed, moved = lab != -1, inp != ids, aft != ids
    return {"n": int(ids.size),
            "chosen": _b64z(np.packbits(chosen)),
            "labels": _values(lab[chosen], {"input_ids": ids[chosen], "inputs": inp[chosen]}),
            "changed": _b64z(np.packbits(changed)),
            "inputs": _values(inp[changed], {"zero": 0 * inp[changed]}),
            "moved": _bitmap_beside(moved, changed),
            "after": _values(aft[moved], {"inputs": inp[moved], "input_ids": ids[moved]})}


def _bitmap_beside(bits, other) -> list:
    """["xor", bits ^ other] where that packs smaller (input_ids changed in place: moved is
    changed), else ["plain", bits]."""
    plain_, xor = _b64z(np.packbits(bits)), _b64z(np.packbits(bits ^ other))
    return ["xor", xor] if len(xor) < len(plain_) else ["plain", plain_]


def _packed_size(packed: dict) -> int:
    return sum(len(v[1]) if type(v) is list else len(v) for v in packed.values() if type(v) in (str, list))


def _as_data(result, before, input_ids) -> dict:
    """One masking's result as compact data for the grader, or what is wrong with its form."""
    problem = _mask_type(result, input_ids.shape)
    if problem:
        return {"problem": problem, "kind": "type"}
    packed = pack_masks(before, result[0], result[1], input_ids)
    if _packed_size(packed) > MAX_PACKED_PER_POSITION * before.numel() + 1024:
        return {"problem": "inputs and labels differ from a masking at far more positions than one changes (the "
                           "result is too irregular to send back for grading)", "kind": "values (far from a masking)"}
    return packed


def _mask_runs(ns, ids, vocab_size, mask_id, special_ids, mask_prob, runs, checks):
    """Call mask_tokens once per run (a generator seed, a global seed); each result packed,
    or what is wrong with its type. ``checks`` is for the grader."""
    input_ids = mask_batch(ids, special_ids)
    out = []
    for seed, global_seed in runs:
        before = input_ids.clone()
        torch.manual_seed(global_seed)
        result = ns["mask_tokens"](input_ids, vocab_size, mask_id, special_ids, mask_prob,
                                   torch.Generator().manual_seed(seed))
        out.append(_as_data(result, before, input_ids))
        input_ids = before
    return out


def _mask_type(result, shape) -> str | None:
    if type(result) is not tuple or len(result) != 2:
        what = f"a tuple of {len(result)} items" if type(result) is tuple else f"a {type(result).__name__}"
        return f"expected a tuple (inputs, labels), got {what}"
    for name, t in zip(("inputs", "labels"), result):
        if type(t) is not torch.Tensor:
            return f"{name}: expected a torch.Tensor, got a {type(t).__name__}"
        if t.dtype != torch.int64:
            return f"{name}: expected dtype torch.int64, got {t.dtype}"
        if t.shape != shape:
            return f"{name}: expected the shape of input_ids {tuple(shape)}, got {tuple(t.shape)}"
    return None


MAX_PACKED_PER_POSITION = 1.0  # bytes; a right masking packs into 0.2-0.6 (keeps a part's results < 256 KB)


def _recipe(B, T, vocab_size, seed, cls=1, sep=2, pad=0, **more):
    return {"shape": (B, T), "vocab_size": vocab_size, "seed": seed, "cls": cls, "sep": sep, "pad": pad, **more}


# transformers (preinstalled on Colab) masks tokens in its data collator; a name it lacks is skipped
COLLATOR = tuple(("transformers", f"DataCollatorForLanguageModeling.{name}")
                 for name in ("torch_mask_tokens", "numpy_mask_tokens")
                 if importlib.util.find_spec("transformers") is not None)


# ---------------------------------------------------------------- Part 6: mask_whole_words (packed as Part 1)
def word_batch(ids, special_ids):
    """(input_ids, word_ids) of a whole-word case: tensors as they are, or a recipe (dict) made
    into them, the same way on both sides.

    Recipe: ``shape`` (B, T), ``seed``, ``vocab_size``, ``cls``, ``sep``, ``pad`` as in
    ``mask_batch``: ``cls`` first and ``sep`` last in every row, ``pad`` over the last quarter
    of every other row; the positions between hold words of ordinary tokens, each piece
    starting a new word with probability ``start`` (0.5 by default: words of 2 pieces on
    average, some of 6 or more), or every word ``pieces`` long if given; ``fill``: every
    ordinary position that token; ``one_d``: the first row alone. word_ids number the words
    of each row 0, 1, 2, ... and are -1 at [CLS], [SEP] and [PAD]."""
    if isinstance(ids, (tuple, list)):
        return ids[0], ids[1]
    B, T = ids["shape"]
    g = torch.Generator().manual_seed(ids["seed"])
    ordinary = torch.tensor([i for i in range(ids["vocab_size"]) if i not in set(special_ids)], dtype=torch.long)
    tokens = ordinary[torch.randint(len(ordinary), (B, T), generator=g)]
    if "fill" in ids:
        tokens = torch.full((B, T), int(ids["fill"]), dtype=torch.long)
    if "pieces" in ids:
        starts = (torch.arange(T) - 1) % int(ids["pieces"]) == 0
        starts = starts.expand(B, T).clone()
    else:
        starts = torch.rand(B, T, generator=g) < ids.get("start", 0.5)
    starts[:, 1] = True  # the first position after [CLS] starts a word
    word_ids = torch.cumsum(starts.long(), dim=1) - 1  # (B, T): 0, 0, 1, 2, 2, 2, ... from position 1
    text = torch.zeros(B, T, dtype=torch.bool)
    text[:, 1:T - 1] = True
    tokens[:, 0], tokens[:, -1] = ids["cls"], ids["sep"]
    tokens[::2, T * 3 // 4:] = ids["pad"]
    text[::2, T * 3 // 4:] = False
    word_ids = torch.where(text, word_ids, torch.full_like(word_ids, -1))
    if ids.get("one_d"):
        return tokens[0].clone(), word_ids[0].clone()
    return tokens, word_ids


def _words_runs(ns, ids, vocab_size, mask_id, special_ids, mask_prob, runs, checks):
    """Call mask_whole_words once per run (a generator seed, a global seed); each result packed
    (``pack_masks``), or what is wrong with its type. ``checks`` is for the grader."""
    input_ids, word_ids = word_batch(ids, special_ids)
    out = []
    for seed, global_seed in runs:
        before = input_ids.clone()
        torch.manual_seed(global_seed)
        result = ns["mask_whole_words"](input_ids, word_ids.clone(), vocab_size, mask_id, special_ids, mask_prob,
                                        torch.Generator().manual_seed(seed))
        out.append(_as_data(result, before, input_ids))
        input_ids = before
    return out


def _words(B, T, vocab_size, seed, **more):
    return {"shape": (B, T), "vocab_size": vocab_size, "seed": seed, "cls": 1, "sep": 2, "pad": 0, **more}


def _tiny_words():
    """[CLS] w0 w0 w1 w2 w2 w2 [SEP] [PAD]: three words of 2, 1 and 3 pieces."""
    return (torch.tensor([[1, 7, 8, 9, 10, 11, 12, 2, 0]]), torch.tensor([[-1, 0, 0, 1, 2, 2, 2, -1, -1]]))


WHOLE_WORD_COLLATOR = COLLATOR + tuple(
    ("transformers", f"DataCollatorForLanguageModeling.{name}")
    for name in ("_whole_word_mask", "_calc_word_ids_and_prob_mask")
    if importlib.util.find_spec("transformers") is not None)


# ---------------------------------------------------------------- Part 3: bert_embeddings
def emb_weights(weights) -> dict:
    """The tables of a BertEmbeddings: given (a dict of tensors) or drawn from a recipe
    (``V``, ``block_size``, ``C``, ``types``, ``dtype``, ``seed``), in the order of its parameters."""
    if "seed" not in weights:
        return weights
    g = torch.Generator().manual_seed(weights["seed"])
    dtype = getattr(torch, weights["dtype"])
    V, block_size, C, types = weights["V"], weights["block_size"], weights["C"], weights["types"]
    shapes = {"tok": (V, C), "pos": (block_size, C), "seg": (types, C), "ln.weight": (C,), "ln.bias": (C,)}
    return {name: torch.randn(shape, generator=g, dtype=dtype) for name, shape in shapes.items()}


def _embeddings(ns, input_ids, token_type_ids, weights):
    """A course_lib BertEmbeddings with these tables (made without running course_lib's code:
    its forward stays switched off), in eval mode, handed to bert_embeddings."""
    w = emb_weights(weights)
    C = w["tok"].shape[1]
    emb = BertEmbeddings.__new__(BertEmbeddings)
    torch.nn.Module.__init__(emb)
    emb.tok = torch.nn.Embedding.from_pretrained(w["tok"].clone(), freeze=False)
    emb.pos = torch.nn.Embedding.from_pretrained(w["pos"].clone(), freeze=False)
    emb.seg = torch.nn.Embedding.from_pretrained(w["seg"].clone(), freeze=False)
    emb.ln = torch.nn.LayerNorm(C, eps=LN_EPS, dtype=w["tok"].dtype)
    emb.drop = torch.nn.Dropout(0.1)
    with torch.no_grad():
        emb.ln.weight.copy_(w["ln.weight"])
        emb.ln.bias.copy_(w["ln.bias"])
    emb.eval()
    with torch.no_grad():
        return ns["bert_embeddings"](input_ids, token_type_ids, emb)


def _tiny_weights():
    return {"tok": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "pos": torch.tensor([[0.0, 0.0], [1.0, 1.0]]),
            "seg": torch.tensor([[0.0, 0.0], [0.0, 2.0]]), "ln.weight": torch.ones(2), "ln.bias": torch.zeros(2)}


def _emb_visible():
    g = torch.Generator().manual_seed(0)
    ids, types = torch.randint(50, (3, 10), generator=g), torch.randint(2, (3, 10), generator=g)
    weights = {"V": 50, "block_size": 16, "C": 8, "types": 2, "dtype": "float32", "seed": 1}
    return {
        "hand-worked example (C = 2)": (torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), _tiny_weights()),
        "batch of 3, length 10, with segments": (ids, types, weights),
        "no token_type_ids (None): segment 0 everywhere": (ids, None, weights),
    }


# ---------------------------------------------------------------- Part 4: mlm_loss
def loss_inputs(logits, labels):
    """(logits, labels) of a case: tensors as they are, or logits from a recipe (``B``, ``T``,
    ``V``, ``p``, ``seed``, ``dtype``, ``scale``) with its labels (each position chosen with
    probability p, a random label there) unless labels are given."""
    if isinstance(logits, torch.Tensor):
        return logits, labels
    s = logits
    g = torch.Generator().manual_seed(s["seed"])
    B, T, V = s["B"], s["T"], s["V"]
    x = torch.randn(B, T, V, generator=g, dtype=getattr(torch, s["dtype"])) * s.get("scale", 2.0)
    drawn = torch.where(torch.rand(B, T, generator=g) < s["p"], torch.randint(V, (B, T), generator=g), -1)
    return x, drawn if labels is None else labels


def _loss(ns, logits, labels, grad):
    """The loss (detached); with grad, (loss, the gradient of the logits)."""
    logits, labels = loss_inputs(logits, labels)
    x = logits.clone().requires_grad_(grad)
    result = ns["mlm_loss"](x, labels)
    if type(result) is not torch.Tensor:
        return result
    if not grad:
        return result.detach()
    result.backward()
    return result.detach(), x.grad


LOSS_BUILT_INS = (("torch.nn.functional", "cross_entropy"), ("torch.nn.functional", "nll_loss"),
                  ("torch.nn", "CrossEntropyLoss.forward"), ("torch.nn", "NLLLoss.forward"),
                  ("torch", "_C._nn.cross_entropy_loss"), ("torch", "_C._nn.nll_loss"),
                  ("torch", "_C._nn.nll_loss_nd"), ("torch", "_C._nn.nll_loss2d"),
                  ("torch.nn.functional", "linear_cross_entropy"))


def _loss_spec(B, T, V, p, seed, dtype="float32", scale=2.0):
    return {"B": B, "T": T, "V": V, "p": p, "seed": seed, "dtype": dtype, "scale": scale}


# ---------------------------------------------------------------- Part 5: cls_logits
def _cls(ns, hidden, pooler_weight, pooler_bias, classifier_weight, classifier_bias):
    """Linear layers with these weights, in eval mode, handed to cls_logits."""
    C, K, dtype = pooler_weight.shape[1], classifier_weight.shape[0], pooler_weight.dtype
    pooler = torch.nn.Linear(C, C, dtype=dtype)
    classifier = torch.nn.Linear(C, K, dtype=dtype)
    with torch.no_grad():
        pooler.weight.copy_(pooler_weight)
        pooler.bias.copy_(pooler_bias)
        classifier.weight.copy_(classifier_weight)
        classifier.bias.copy_(classifier_bias)
    pooler.eval()
    classifier.eval()
    with torch.no_grad():
        return ns["cls_logits"](hidden.clone(), pooler, classifier)


def encoder_case(C, nh, K, seed, input_ids, dtype=torch.float32, attention_mask=None):
    """(hidden, pooler weight, bias, classifier weight, bias) of a course_lib
    BertForSequenceClassification (V = 40, 2 layers, weights moved off their start): its
    encoder's last vectors for input_ids, and its head's layers. Run outside any graded call."""
    import course_lib.bert as bert

    torch.manual_seed(seed)
    config = bert.BertConfig(vocab_size=40, block_size=32, n_layer=2, n_head=nh, n_embd=C)
    model = bert.BertForSequenceClassification(config, n_classes=K).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    with torch.no_grad():
        hidden, _ = model.bert(input_ids, attention_mask=attention_mask)
    pooler, classifier = model.bert.pooler, model.classifier
    return (hidden.clone(), pooler.weight.detach().clone(), pooler.bias.detach().clone(),
            classifier.weight.detach().clone(), classifier.bias.detach().clone())


def _cls_visible():
    tiny = (torch.tensor([[[0.5, 0.5], [9.0, 9.0]]]), torch.eye(2), torch.zeros(2), torch.tensor([[1.0, 1.0]]),
            torch.zeros(1))
    ids = torch.randint(40, (4, 12), generator=torch.Generator().manual_seed(0))
    return {
        "hand-worked example (C = 2, one class)": tiny,
        "a 2-layer BERT's vectors, batch of 4, 3 classes": encoder_case(16, 2, 3, 0, ids),
    }


PARTS = {
    "mask_tokens": Part("test_mask_tokens", "mask_tokens", {
        "special tokens only, mask_prob = 1: nothing chosen":
            (torch.tensor([[1, 0, 0, 2], [1, 3, 2, 0]]), 50, 3, SPECIALS, 1.0, [(0, 0)], []),
        "mask_prob = 0: nothing changes": (torch.tensor([[1, 7, 8, 9, 2]]), 50, 3, SPECIALS, 0.0, [(0, 0)], ["rates"]),
        "the rates on 300 x 128 positions": (_recipe(300, 128, 50, 0), 50, 3, SPECIALS, 0.15, [(0, 0)], ["rates"]),
        "the same seed gives the same masks, whatever the global seed":
            (_recipe(4, 32, 50, 1), 50, 3, SPECIALS, 0.15, [(5, 0), (5, 1234)], ["same"]),
    }, call=_mask_runs, switched_off=COLLATOR,
        why="transformers' masking is switched off in this test: write the masking yourself"),
    "pair_inputs": Part("test_pair_inputs", "pair_inputs", {
        "hand-worked example: a pair": ([7, 8], [9], 1, 2),
        "hand-worked example: one sentence": ([7, 8], None, 1, 2),
        "a pair with BERT's ids for [CLS] and [SEP]": ([5, 6, 7], [8, 9, 10, 11], 101, 102),
    }),
    "bert_embeddings": Part("test_bert_embeddings", "bert_embeddings", _emb_visible(), call=_embeddings),
    "mlm_loss": Part("test_mlm_loss", "mlm_loss", {
        "hand-worked example: one chosen position":
            (torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]]), torch.tensor([[-1, 2]]), False),
        "batch of 4, length 16, V = 30": (_loss_spec(4, 16, 30, 0.15, 0), None, False),
        "nothing chosen: 0, not nan": (_loss_spec(4, 16, 30, 0.0, 0), None, False),
    }, call=_loss, switched_off=LOSS_BUILT_INS,
        why="torch's cross-entropy is switched off in this test: write the loss with torch.log_softmax"),
    "cls_logits": Part("test_cls_logits", "cls_logits", _cls_visible(), call=_cls),
    "mask_whole_words": Part("test_mask_whole_words", "mask_whole_words", {
        "the hand-worked example, mask_prob = 1: every word chosen, whole":
            (_tiny_words(), 50, 3, SPECIALS, 1.0, [(0, 0), (1, 0), (2, 0)], []),
        "the rates on 300 x 128 positions, words of 2 pieces on average, 2 seeds":
            (_words(300, 128, 50, 0), 50, 3, SPECIALS, 0.15, [(0, 0), (1, 0)], ["rates"]),
        "the same seed gives the same masks, whatever the global seed":
            (_words(4, 32, 50, 1), 50, 3, SPECIALS, 0.15, [(5, 0), (5, 1234)], ["same"]),
    }, call=_words_runs, switched_off=WHOLE_WORD_COLLATOR,
        why="transformers' masking is switched off in this test: write the masking yourself"),
}
