"""Exercise 8: expected values and the hidden cases.

- mask_tokens is random: judged statistically (``_mask_compare``) on the packed result, the
  checks of the old test cell (special tokens never chosen, labels, unchosen positions kept,
  random tokens ordinary and uniform, the rates within five standard deviations, the
  generator's seed decides everything); the expected value is the rates themselves.
- pair_inputs: course_lib's ``pair_inputs`` (a sentence pair is a list of ids, nothing to
  take from elsewhere).
- bert_embeddings, mlm_loss and cls_logits: torch.nn.functional (``F.embedding``,
  ``F.layer_norm``, ``F.cross_entropy`` with ``ignore_index=-1`` and its autograd gradient,
  ``F.linear``), independent of course_lib.
"""

from __future__ import annotations

import base64
import binascii
import math
import zlib
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

import course_lib.bert as ours
from course_lib.grading import plain
from course_lib.grading.cases.ch08 import LN_EPS, SPECIALS, _loss_spec, _recipe, _words, emb_weights, \
    encoder_case, loss_inputs, mask_batch, word_batch
from course_lib.grading.compare import Mismatch
from course_lib.grading.verdict import Ref


# ---------------------------------------------------------------- Part 1: mask_tokens
def _mask_cases(rng):
    hf_specials = [0, 100, 101, 102, 103]  # BERT's own: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103
    cases = {
        "BERT's special ids, a vocabulary of 500, some [UNK]":
            (_recipe(250, 128, 500, 3, cls=101, sep=102, pad=0, unk=100), 500, 103, hf_specials, 0.15, [(3, 0)],
             ["rates"]),
        "mask_prob = 0.4": (_recipe(300, 100, 30, 4), 30, 3, SPECIALS, 0.4, [(4, 0)], ["rates"]),
        "mask_prob = 1: every ordinary token chosen": (_recipe(100, 64, 30, 5), 30, 3, SPECIALS, 1.0, [(5, 0)],
                                                       ["rates"]),
        "one 1-D sequence of 5000": (_recipe(1, 5000, 40, 6, one_d=True), 40, 3, SPECIALS, 0.15, [(6, 0)], ["rates"]),
        "random tokens are uniform over the ordinary ones":
            ({"shape": (100, 300), "fill": 10}, 50, 3, SPECIALS, 1.0, [(7, 0)], ["uniform"]),
        "other seeds give other masks": (_recipe(4, 32, 50, 1), 50, 3, SPECIALS, 0.15, [(8, 0), (9, 0)], ["differ"]),
    }
    for i in range(2):  # a random vocabulary, special ids and mask_prob
        V = int(rng.integers(12, 400))
        special = sorted(int(x) for x in rng.choice(V, size=int(rng.integers(4, 7)), replace=False))
        pad, cls, sep, mask = special[0], special[1], special[2], special[-1]
        B, T = int(rng.integers(40, 80)), int(rng.integers(16, 128))
        order = [int(x) for x in rng.permutation(special)]
        cases[f"random vocabulary and special ids {i + 1}"] = (
            _recipe(B, T, V, int(rng.integers(2 ** 31)), cls=cls, sep=sep, pad=pad), V, mask, order,
            float(rng.uniform(0.05, 0.6)), [(int(rng.integers(2 ** 31)), int(rng.integers(2 ** 31)))], ["rates"])
    return cases


def _ordinary_count(vocab_size, special_ids, mask_id):
    return vocab_size - len(set(special_ids) | {mask_id})


def _mask_expected(ids, vocab_size, mask_id, special_ids, mask_prob, runs, checks):
    """The rates a right masking has: chosen, then among the chosen [MASK], another token,
    the same token (a random draw may give the original back)."""
    n_ordinary = _ordinary_count(vocab_size, special_ids, mask_id)
    return {"chosen": float(mask_prob), "mask": 0.8, "other": 0.1 * (1 - 1 / n_ordinary),
            "kept": 0.1 + 0.1 / n_ordinary}


MAX_BYTES = 1 << 24


def _unpack_bytes(text, dtype, count):
    if type(text) is not str or dtype not in ("int16", "int64", "uint8"):
        raise ValueError("malformed")
    d = zlib.decompressobj()
    raw = d.decompress(base64.b64decode(text.encode("ascii"), validate=True), MAX_BYTES)
    if d.unconsumed_tail:
        raise ValueError("too big")
    array = np.frombuffer(raw, dtype=dtype)
    if count is not None and array.size != count:
        raise ValueError("wrong length")
    return array.astype(np.int64)


def _unpack(run, input_ids):
    """(inputs, labels, input_ids after the call) from a packed run (``cases.ch08.pack_masks``)."""
    ids = input_ids.reshape(-1).numpy()
    n = ids.size
    if type(run) is not dict or run.get("n") != n:
        raise ValueError("malformed")

    def bits(key):
        packed = _unpack_bytes(run[key], "uint8", (n + 7) // 8).astype(np.uint8)
        return np.unpackbits(packed, count=n).astype(bool)

    def values(key, mask, bases):
        packed = run[key]
        if type(packed) is not list or len(packed) != 3 or packed[2] not in bases:
            raise ValueError("malformed")
        return bases[packed[2]][mask] + _unpack_bytes(packed[1], packed[0], int(mask.sum()))

    chosen, changed = bits("chosen"), bits("changed")
    mode, moved_bits = run["moved"] if type(run["moved"]) is list and len(run["moved"]) == 2 else (None, None)
    if mode not in ("plain", "xor"):
        raise ValueError("malformed")
    packed = _unpack_bytes(moved_bits, "uint8", (n + 7) // 8).astype(np.uint8)
    moved = np.unpackbits(packed, count=n).astype(bool) ^ (changed if mode == "xor" else False)
    labels = np.full(n, -1, dtype=np.int64)
    inputs, after = ids.copy(), ids.copy()
    inputs[changed] = values("inputs", changed, {"zero": np.zeros(n, dtype=np.int64)})
    labels[chosen] = values("labels", chosen, {"input_ids": ids, "inputs": inputs})
    after[moved] = values("after", moved, {"inputs": inputs, "input_ids": ids})
    shape = tuple(input_ids.shape)
    return (torch.from_numpy(inputs).reshape(shape), torch.from_numpy(labels).reshape(shape),
            torch.from_numpy(after).reshape(shape))


def _share(count, total, p, name, kind):
    tol = 5 * math.sqrt(p * (1 - p) / total)
    share = count / total
    if abs(share - p) > tol + 1e-12:
        return Mismatch(kind, f"{name} was {share:.4f}, expected {p:.4f} (within five standard deviations, "
                              f"+-{tol:.4f}, for n={total})")
    return None


def _uniform_random_tokens(others, want: set) -> Mismatch | None:
    """The random replacements ``others`` cover every token of ``want`` and are uniform over them
    (a chi-square statistic within 5 standard deviations of its mean)."""
    counts = Counter(others.tolist())
    if set(counts) != want:
        return Mismatch("random tokens (not every ordinary token drawn)",
                        f"random tokens should cover every ordinary token, got {sorted(counts)}")
    mean = len(others) / len(want)
    chi2 = sum((c - mean) ** 2 / mean for c in counts.values())
    df = len(want) - 1
    if chi2 >= df + 5 * math.sqrt(2 * df):
        return Mismatch("random tokens (not uniform)",
                        f"random tokens are not uniform over the ordinary ones (chi2 = {chi2:.1f}, {df} degrees "
                        f"of freedom)")
    return None


def _check_run(input_ids, inputs, labels, after, mask_id, special_ids, vocab_size, mask_prob, expected, checks):
    special_t = torch.tensor(sorted(set(special_ids) | {mask_id}))
    special = torch.isin(input_ids, special_t)
    if not torch.equal(after, input_ids):
        return Mismatch("input_ids (changed in place)",
                        "mask_tokens changed input_ids: work on a copy (input_ids.clone())")
    chosen = labels != -1
    if (chosen & special).any():
        return Mismatch("labels (a special token chosen)",
                        f"special tokens were chosen at {(chosen & special).nonzero().tolist()[:5]}; never choose them")
    if not torch.equal(labels[chosen], input_ids[chosen]):
        return Mismatch("labels", "labels must hold the original token at the chosen positions and -1 elsewhere")
    if not torch.equal(inputs[~chosen], input_ids[~chosen]):
        return Mismatch("inputs (an unchosen position changed)", "a position that was not chosen changed")
    replaced = inputs[chosen]
    bad = (replaced < 0) | (replaced >= vocab_size) | (torch.isin(replaced, special_t) & (replaced != mask_id))
    if bad.any():
        return Mismatch("inputs (a random token not ordinary)",
                        f"chosen positions became {replaced[bad].unique().tolist()[:10]}: random tokens must be "
                        "ordinary ones (not special, within the vocabulary)")
    n, k = int((~special).sum()), int(chosen.sum())
    if "rates" in checks and n:
        m = _share(k, n, mask_prob, "the share of ordinary positions chosen", "share of positions chosen")
        if m:
            return m
    if ("rates" in checks or "uniform" in checks) and k:
        as_mask = chosen & (inputs == mask_id)
        kept = chosen & (inputs == input_ids)
        other = chosen & ~as_mask & ~kept
        for count, key, name in [(as_mask, "mask", "turned into [MASK]"), (other, "other", "turned into another token"),
                                 (kept, "kept", "left unchanged")]:
            m = _share(int(count.sum()), k, expected[key], f"the share of chosen positions {name}",
                       f"share of chosen positions {name}")
            if m:
                return m
    if "uniform" in checks:
        original = int(input_ids.reshape(-1)[0])
        ordinary = set(range(vocab_size)) - set(special_t.tolist())
        others = inputs[(inputs != original) & (inputs != mask_id)]
        m = _uniform_random_tokens(others, ordinary - {original})
        if m is not None:
            return m
    return None


def _mask_compare(result, expected, args):
    ids, vocab_size, mask_id, special_ids, mask_prob, runs, checks = plain.native(args)
    input_ids = mask_batch(ids, special_ids)
    if type(result) is not list or len(result) != len(runs):
        return Mismatch("type", "expected the results of the calls (this check's own format)")
    outs = []
    for run in result:
        if type(run) is dict and type(run.get("problem")) is str:
            kind = run.get("kind") if run.get("kind") in ("type", "values (far from a masking)") else "type"
            return Mismatch(kind, run["problem"][:500])
        try:
            outs.append(_unpack(run, input_ids))
        except (ValueError, KeyError, TypeError, zlib.error, binascii.Error):
            return Mismatch("type", "the result could not be read back")
    for inputs, labels, after in outs:
        m = _check_run(input_ids, inputs, labels, after, mask_id, special_ids, vocab_size, mask_prob, expected,
                       checks)
        if m:
            return m
    if "same" in checks:
        (a_in, a_lab, _), (b_in, b_lab, _) = outs
        if not (torch.equal(a_in, b_in) and torch.equal(a_lab, b_lab)):
            return Mismatch("use of generator", "two generators with the same seed gave different masks: draw every "
                                                "random number from generator")
    if "differ" in checks:
        if torch.equal(outs[0][1], outs[1][1]):
            return Mismatch("use of generator", "two different seeds gave the same masks: draw every random number "
                                                "from generator")
    return None


# ---------------------------------------------------------------- Part 6: mask_whole_words
def _words_cases(rng):
    hf_specials = [0, 100, 101, 102, 103]
    cases = {
        "BERT's special ids, a vocabulary of 500": (
            {"shape": (300, 128), "vocab_size": 500, "seed": 3, "cls": 101, "sep": 102, "pad": 0}, 500, 103,
            hf_specials, 0.15, [(3, 0)], ["rates"]),
        "mask_prob = 0.4, long words (a new word at 1 piece in 4)": (
            _words(300, 100, 30, 4, start=0.25), 30, 3, SPECIALS, 0.4, [(4, 0), (5, 0)], ["rates"]),
        "words of one piece: token-level masking again": (
            _words(300, 64, 40, 6, pieces=1), 40, 3, SPECIALS, 0.15, [(7, 0)], ["rates"]),
        "mask_prob = 1: every word chosen": (_words(100, 64, 30, 7), 30, 3, SPECIALS, 1.0, [(9, 0)], ["rates"]),
        "mask_prob = 0: nothing changes": (_words(20, 64, 30, 8), 30, 3, SPECIALS, 0.0, [(10, 0)], ["rates"]),
        "one 1-D sequence of 8000": (_words(1, 8000, 40, 9, one_d=True), 40, 3, SPECIALS, 0.15, [(11, 0)],
                                     ["rates"]),
        "random pieces are uniform over the ordinary tokens": (
            _words(100, 302, 50, 10, fill=10, pieces=2), 50, 3, SPECIALS, 1.0, [(12, 0), (13, 0)], ["uniform"]),
        "other seeds give other masks": (_words(4, 32, 50, 1), 50, 3, SPECIALS, 0.15, [(14, 0), (15, 0)],
                                         ["differ"]),
    }
    for i in range(2):  # a random vocabulary, special ids, word lengths and mask_prob
        V = int(rng.integers(12, 400))
        special = sorted(int(x) for x in rng.choice(V, size=int(rng.integers(4, 7)), replace=False))
        pad, cls, sep, mask = special[0], special[1], special[2], special[-1]
        B, T = int(rng.integers(150, 300)), int(rng.integers(16, 128))
        order = [int(x) for x in rng.permutation(special)]
        recipe = {"shape": (B, T), "vocab_size": V, "seed": int(rng.integers(2 ** 31)), "cls": cls, "sep": sep,
                  "pad": pad, "start": float(rng.uniform(0.2, 1.0))}
        runs = [(int(rng.integers(2 ** 31)), int(rng.integers(2 ** 31))) for _ in range(2)]
        cases[f"random vocabulary, special ids and word lengths {i + 1}"] = (
            recipe, V, mask, order, float(rng.uniform(0.05, 0.6)), runs, ["rates"])
    return cases


def _words_expected(ids, vocab_size, mask_id, special_ids, mask_prob, runs, checks):
    """The rates of a right masking, per word: chosen, then among the chosen words all [MASK],
    all random tokens, unchanged (the grader adds, word by word, the chance that random tokens
    give every piece back)."""
    return {"chosen": float(mask_prob), "mask": 0.8, "random": 0.1, "kept": 0.1}


def _count(count, probs, name, kind):
    """``count`` successes of independent trials with probabilities ``probs``, within five
    standard deviations of their expected number."""
    mean, sd = float(probs.sum()), math.sqrt(float((probs * (1 - probs)).sum()))
    n = len(probs)
    if abs(count - mean) > 5 * sd + 1e-9:
        return Mismatch(kind, f"{name} was {count / n:.4f} ({count} of {n}), expected {mean / n:.4f} (within five "
                              f"standard deviations, +-{5 * sd / n:.4f})")
    return None


def _word_kinds(input_ids, word_ids, inputs, labels, after, mask_id, special_ids, vocab_size):
    """A Mismatch, or per word of the batch (a word is a row and a word id >= 0): its number of
    pieces, whether it was chosen, and how it shows (0 [MASK], 1 a random token, 2 unchanged)."""
    special_t = torch.tensor(sorted(set(special_ids) | {mask_id}))
    if not torch.equal(after, input_ids):
        return Mismatch("input_ids (changed in place)",
                        "mask_whole_words changed input_ids: work on a copy (input_ids.clone())")
    ids, inp, lab = (t.reshape(-1, t.shape[-1]).numpy() for t in (input_ids, inputs, labels))
    words = word_ids.reshape(ids.shape).numpy()
    chosen = lab != -1
    in_word = words >= 0
    if (chosen & ~in_word).any():
        where = [tuple(int(i) for i in w) for w in np.argwhere(chosen & ~in_word)[:5]]
        return Mismatch("labels (a position outside the words chosen)",
                        f"positions whose word id is -1 ([CLS], [SEP], [PAD]) were chosen at (row, position) {where}: "
                        "never choose them")
    if not np.array_equal(lab[chosen], ids[chosen]):
        return Mismatch("labels", "labels must hold the original token at the chosen positions and -1 elsewhere")
    if not np.array_equal(inp[~chosen], ids[~chosen]):
        return Mismatch("inputs (an unchosen position changed)", "a position that was not chosen changed")
    replaced = torch.from_numpy(inp[chosen])
    bad = (replaced < 0) | (replaced >= vocab_size) | (torch.isin(replaced, special_t) & (replaced != mask_id))
    if bad.any():
        return Mismatch("inputs (a random token not ordinary)",
                        f"chosen positions became {replaced[bad].unique().tolist()[:10]}: random tokens must be "
                        "ordinary ones (not special, within the vocabulary)")
    rows = np.broadcast_to(np.arange(ids.shape[0])[:, None], ids.shape)
    width = int(words.max()) + 1 if in_word.any() else 1
    key = (rows * width + words)[in_word]  # one number per word of the batch
    _, word = np.unique(key, return_inverse=True)
    n_words = int(word.max()) + 1 if word.size else 0
    size = np.bincount(word, minlength=n_words)
    n_chosen = np.bincount(word, weights=chosen[in_word], minlength=n_words)
    if ((n_chosen > 0) & (n_chosen < size)).any():
        w = int(np.argmax((n_chosen > 0) & (n_chosen < size)))
        return Mismatch("a word chosen in part",
                        f"a word of {size[w]} pieces had {int(n_chosen[w])} of them chosen: choose every piece of a "
                        "word or none")
    n_mask = np.bincount(word, weights=(inp == mask_id)[in_word], minlength=n_words)
    n_same = np.bincount(word, weights=(inp == ids)[in_word], minlength=n_words)
    word_chosen = n_chosen == size
    partly = word_chosen & (n_mask > 0) & (n_mask < size)
    if partly.any():
        w = int(np.argmax(partly))
        return Mismatch("a word shown in part as [MASK]",
                        f"a chosen word of {size[w]} pieces shows [MASK] at {int(n_mask[w])} of them: decide [MASK], "
                        "random or unchanged once per word, for all its pieces")
    kind = np.where(n_mask == size, 0, np.where(n_same == size, 2, 1))
    pieces = inp[in_word]
    starts = np.unique(word, return_index=True)[1]  # each word's first position among the pieces
    first = pieces[starts]  # each word's first piece (words run along the rows)
    alike = np.bincount(word, weights=pieces == first[word], minlength=n_words) == size  # every piece the same token
    place = np.stack([rows[in_word][starts], words[in_word][starts]], axis=1)  # each word's (row, word id)
    return size, word_chosen, kind, alike, place


def _rows_apart(place, chosen, p):
    """Words of the same number in neighbouring rows are chosen independently: they agree (both chosen or both
    not) with probability p^2 + (1 - p)^2, not always (one draw per word number for the whole batch)."""
    status = {(int(r), int(w)): bool(c) for (r, w), c in zip(place, chosen)}
    pairs = [(c, status[(r + 1, w)]) for (r, w), c in status.items() if (r + 1, w) in status]
    if not pairs:
        return None
    agree = sum(a == b for a, b in pairs)
    return _count(agree, np.full(len(pairs), p * p + (1 - p) * (1 - p)),
                  "the share of words chosen alike in neighbouring rows (the same word number)",
                  "words chosen alike across rows (word numbers start again in every row)")


def _words_compare(result, expected, args):
    ids, vocab_size, mask_id, special_ids, mask_prob, runs, checks = plain.native(args)
    input_ids, word_ids = word_batch(ids, special_ids)
    if type(result) is not list or len(result) != len(runs):
        return Mismatch("type", "expected the results of the calls (this check's own format)")
    outs = []
    for run in result:
        if type(run) is dict and type(run.get("problem")) is str:
            kind = run.get("kind") if run.get("kind") in ("type", "values (far from a masking)") else "type"
            return Mismatch(kind, run["problem"][:500])
        try:
            outs.append(_unpack(run, input_ids))
        except (ValueError, KeyError, TypeError, zlib.error, binascii.Error):
            return Mismatch("type", "the result could not be read back")
    found = []
    for inputs, labels, after in outs:
        words = _word_kinds(input_ids, word_ids, inputs, labels, after, mask_id, special_ids, vocab_size)
        if isinstance(words, Mismatch):
            return words
        found.append(words)
    size, chosen, kind, alike = (np.concatenate(x) for x in list(zip(*found))[:4])
    n_ordinary = _ordinary_count(vocab_size, special_ids, mask_id)
    if ("rates" in checks or "uniform" in checks) and size.size:
        m = _count(int(chosen.sum()), np.full(size.size, float(mask_prob)), "the share of words chosen",
                   "share of words chosen")
        if m:
            return m
        m = _rows_apart(found[0][4], found[0][1], float(mask_prob))
        if m:
            return m
        back = (1.0 / n_ordinary) ** size[chosen]  # random tokens give every piece back: it shows unchanged
        for code, probs, name in [(0, np.full(back.size, expected["mask"]), "all [MASK]"),
                                  (1, expected["random"] * (1 - back), "random tokens"),
                                  (2, expected["kept"] + expected["random"] * back, "unchanged")]:
            m = _count(int((kind[chosen] == code).sum()), probs, f"the share of chosen words shown as {name}",
                       f"share of chosen words shown as {name}")
            if m:
                return m
    if "uniform" in checks:
        original = int(input_ids.reshape(-1)[1])
        ordinary = set(range(vocab_size)) - set(special_ids) - {mask_id}
        others = torch.cat([inp[(inp != original) & (inp != mask_id) & (word_ids >= 0)] for inp, _, _ in outs])
        m = _uniform_random_tokens(others, ordinary - {original})
        if m is not None:
            return m
        shown_random = chosen & (kind == 1) & (size > 1)  # each piece's own draw: rarely all the same token
        m = _count(int(alike[shown_random].sum()), (1.0 / n_ordinary) ** (size[shown_random] - 1),
                   "the share of words shown as random tokens whose pieces are all one token",
                   "random tokens (one draw per word, not per piece)")
        if m:
            return m
    if "same" in checks:
        (a_in, a_lab, _), (b_in, b_lab, _) = outs
        if not (torch.equal(a_in, b_in) and torch.equal(a_lab, b_lab)):
            return Mismatch("use of generator", "two generators with the same seed gave different masks: draw every "
                                                "random number from generator")
    if "differ" in checks:
        if torch.equal(outs[0][1], outs[1][1]):
            return Mismatch("use of generator", "two different seeds gave the same masks: draw every random number "
                                                "from generator")
    return None


# ---------------------------------------------------------------- Part 2: pair_inputs
def _pair_cases(rng):
    cases = {
        "two empty sentences": ([], [], 1, 2),
        "one empty sentence alone": ([], None, 1, 2),
        "an empty second sentence": ([4], [], 1, 2),
        "a long first sentence": (list(range(10, 40)), list(range(50, 55)), 101, 102),
        "other ids for [CLS] and [SEP]": ([3, 3, 3], [3], 0, 1),
    }
    for i in range(3):
        a = [int(x) for x in rng.integers(0, 1000, size=int(rng.integers(0, 12)))]
        b = None if i == 2 else [int(x) for x in rng.integers(0, 1000, size=int(rng.integers(0, 12)))]
        cls, sep = (int(x) for x in rng.choice(1000, size=2, replace=False))
        cases[f"random sentences {i + 1}"] = (a, b, cls, sep)
    return cases


# ---------------------------------------------------------------- Part 3: bert_embeddings
def _emb_expected(input_ids, token_type_ids, weights):
    w = emb_weights(weights)
    T = input_ids.shape[1]
    types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
    x = F.embedding(input_ids, w["tok"]) + w["pos"][:T] + F.embedding(types, w["seg"])
    return F.layer_norm(x, (x.shape[-1],), w["ln.weight"], w["ln.bias"], LN_EPS)


def _emb_cases(rng):
    g = torch.Generator().manual_seed(1)
    w64 = {"V": 97, "block_size": 24, "C": 12, "types": 2, "dtype": "float64", "seed": 2}
    ids = torch.randint(97, (2, 24), generator=g)
    types = torch.randint(2, (2, 24), generator=g)
    a, b = ours.pair_inputs([5, 6, 7], [8, 9], 1, 2)
    cases = {
        "float64, T = block_size": (ids, types, w64),
        "T = 1": (ids[:, :1].clone(), types[:, :1].clone(), w64),
        "one sequence of 7, no token_type_ids": (ids[:1, :7].clone(), None, w64),
        "a sentence pair": (a[None], b[None], w64),
        "three segments": (ids[:, :9].clone(), torch.randint(3, (2, 9), generator=g),
                           {"V": 97, "block_size": 24, "C": 12, "types": 3, "dtype": "float32", "seed": 3}),
    }
    for i in range(2):
        V, block_size, C = int(rng.integers(5, 120)), int(rng.integers(1, 40)), int(rng.integers(2, 24))
        B, T = int(rng.integers(1, 5)), int(rng.integers(1, block_size + 1))
        types_n = int(rng.integers(1, 4))
        dtype = ["float32", "float64"][i]
        seed = int(rng.integers(2 ** 31))
        gi = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        tt = None if types_n == 1 and i == 0 else torch.randint(types_n, (B, T), generator=gi)
        cases[f"random sizes, {dtype} {i + 1}"] = (
            torch.randint(V, (B, T), generator=gi), tt,
            {"V": V, "block_size": block_size, "C": C, "types": types_n, "dtype": dtype, "seed": seed})
    return cases


# ---------------------------------------------------------------- Part 4: mlm_loss
def _loss_expected(logits, labels, grad):
    logits, labels = loss_inputs(logits, labels)
    x = logits.clone().requires_grad_(True)
    if (labels != -1).any():
        loss = F.cross_entropy(x.reshape(-1, x.shape[-1]), labels.reshape(-1), ignore_index=-1)
    else:
        loss = (x * 0.0).sum()  # nothing to predict: 0 and zero gradients
    if not grad:
        return loss.detach()
    loss.backward()
    return loss.detach(), x.grad


def _loss_cases(rng):
    one = torch.full((2, 8), -1)
    one[1, 3] = 4
    cases = {
        "the gradient, batch of 4, length 16": (_loss_spec(4, 16, 30, 0.15, 0), None, True),
        "float64, batch of 3, length 40, V = 100": (_loss_spec(3, 40, 100, 0.15, 1, "float64"), None, False),
        "the gradient in float64": (_loss_spec(3, 12, 40, 0.15, 1, "float64"), None, True),
        "every position chosen": (_loss_spec(2, 8, 5, 1.0, 2), None, False),
        "a single chosen position": (_loss_spec(2, 8, 5, 0.0, 3), one, False),
        "nothing chosen in float64": (_loss_spec(2, 8, 5, 0.0, 4, "float64"), None, False),
        "B = T = 1": (_loss_spec(1, 1, 7, 1.0, 5), None, False),
        "a peaked softmax": (_loss_spec(8, 32, 50, 0.15, 6, scale=20.0), None, False),
    }
    for i in range(2):
        B, T, V = int(rng.integers(1, 6)), int(rng.integers(1, 12)), int(rng.integers(2, 40))
        spec = _loss_spec(B, T, V, float(rng.uniform(0.1, 1.0)), int(rng.integers(2 ** 31)),
                          ["float32", "float64"][i], float(rng.uniform(0.5, 5.0)))
        cases[f"random sizes {i + 1}" + (", the gradient" if i else "")] = (spec, None, bool(i))
    return cases


# ---------------------------------------------------------------- Part 5: cls_logits
def _cls_expected(hidden, pooler_weight, pooler_bias, classifier_weight, classifier_bias):
    return F.linear(torch.tanh(F.linear(hidden[:, 0], pooler_weight, pooler_bias)), classifier_weight,
                    classifier_bias)


def _cls_cases(rng):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(40, (3, 20), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    model64 = encoder_case(24, 3, 5, 1, ids, torch.float64)
    head = model64[1:]
    hidden = torch.randn(5, 7, 24, generator=g, dtype=torch.float64)
    other = hidden.clone()
    other[:, 1:] = torch.randn(5, 6, 24, generator=g, dtype=torch.float64)
    cases = {
        "float64, a 2-layer BERT's vectors, 5 classes": model64,
        "padded sequences": encoder_case(24, 3, 5, 1, ids, torch.float64, attention_mask=mask),
        "T = 1": encoder_case(16, 4, 2, 2, torch.randint(40, (1, 1), generator=g)),
        "random vectors": (hidden, *head),
        "only the [CLS] position counts": (other, *head),
        "large vectors: tanh saturates": (hidden * 5, *head),
    }
    for i in range(2):
        B, T, C, K = (int(rng.integers(1, 6)), int(rng.integers(1, 10)), int(rng.integers(2, 20)),
                      int(rng.integers(1, 6)))
        dtype = [torch.float32, torch.float64][i]
        gi = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
        cases[f"random sizes, {str(dtype).removeprefix('torch.')}"] = (
            torch.randn(B, T, C, generator=gi, dtype=dtype) * 2, torch.randn(C, C, generator=gi, dtype=dtype),
            torch.randn(C, generator=gi, dtype=dtype), torch.randn(K, C, generator=gi, dtype=dtype),
            torch.randn(K, generator=gi, dtype=dtype))
    return cases


REFS = {
    "mask_tokens": Ref(_mask_expected, hidden=_mask_cases, compare=_mask_compare),
    "pair_inputs": Ref(lambda a, b, cls, sep: ours.pair_inputs(a, b, cls, sep), hidden=_pair_cases),
    "bert_embeddings": Ref(_emb_expected, hidden=_emb_cases, rtol=1e-5, atol=1e-5),
    "mlm_loss": Ref(_loss_expected, hidden=_loss_cases, rtol=1e-5, atol=1e-7),
    "cls_logits": Ref(_cls_expected, hidden=_cls_cases, rtol=1e-5, atol=1e-5),
    "mask_whole_words": Ref(_words_expected, hidden=_words_cases, compare=_words_compare),
}
