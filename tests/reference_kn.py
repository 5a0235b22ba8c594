"""A plain, slow interpolated Kneser-Ney written from Chen & Goodman (1998), eq. (26)
with the lower orders on continuation counts. Dictionaries and loops only: it is the
independent reference that tests/test_ngram.py checks course_lib.ngram against.
"""

from collections import Counter

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class SlowKneserNey:
    def __init__(self, order, sentences, discounts):
        """discounts[k] = (D1, D2, D3+) for order k = 1..order."""
        self.n = n = order
        self.discounts = discounts
        self.vocab = sorted({t for s in sentences for t in s} | {EOS, UNK})  # <s> is never predicted
        seen = set(self.vocab)
        self.raw = Counter()  # k-gram tuples ending at a predicted position
        for s in sentences:
            padded = [BOS] * (n - 1) + [t if t in seen else UNK for t in s] + [EOS] * (n - 1)
            for i in range(n - 1, len(padded)):
                for k in range(1, n + 1):
                    self.raw[tuple(padded[i - k + 1: i + 1])] += 1
        # continuation counts: distinct left extensions among the (k+1)-grams seen
        self.cont = Counter()
        for g in self.raw:
            if len(g) >= 2:
                self.cont[g[1:]] += 1

    def _c(self, g):
        return self.raw[g] if len(g) == self.n else self.cont[g]

    def _D(self, k, c):
        if c == 0:
            return 0.0
        return self.discounts[k][min(c, 3) - 1]

    def prob(self, w, context):
        context = tuple(context)
        p = 1.0 / len(self.vocab)  # order 0: uniform over the tokens that can be predicted
        for k in range(1, self.n + 1):
            ctx = context[len(context) - (k - 1):] if k > 1 else ()
            conts = {v: self._c(ctx + (v,)) for v in self.vocab}
            total = sum(conts.values())
            if total == 0:
                continue  # unseen context: all weight on the lower order
            mass = sum(self._D(k, c) for c in conts.values())
            c = conts.get(w, 0)
            p = max(c - self._D(k, c), 0.0) / total + mass / total * p
        return p
