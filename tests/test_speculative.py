"""course_lib.speculative: greedy speculative decoding returns the target's own greedy
tokens (GPT and n-gram drafts, k = 1..8), sampled speculative decoding follows the target's
distribution (a chi-square test on the joint of two tokens, with a draft that disagrees with
the target, and the same test rejecting the draft's own samples), the KV cache's crop,
the statistics, and bad input."""

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare

from course_lib.gpt import GPT, GPTConfig, KVCache
from course_lib.speculative import GPTDraft, NGramDraft, accept_or_resample, expected_speedup, speculative_generate

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(seed, vocab=13, n_embd=16, n_layer=2, block=40):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=n_layer, n_head=2, n_embd=n_embd)).eval()
    with torch.no_grad():  # sharper distributions than the initialisation's near-uniform ones
        model.lm_head.weight.mul_(20)
    return model


class FixedDraft:
    """A draft that ignores the context: always the same distribution."""

    def __init__(self, q):
        self.q = q

    def probs(self, ids):
        return self.q


def test_kv_cache_crop():
    model = tiny_gpt(0)
    x = torch.randint(0, 13, (1, 9))
    cache = KVCache()
    model(x, cache=cache)
    cache.crop(5)
    assert len(cache) == 5
    logits, _ = model(x[:, 5:], cache=cache)
    assert torch.allclose(logits, model(x)[0][:, 5:], atol=1e-5)
    with pytest.raises(ValueError, match="keep 0 to 9"):
        cache.crop(10)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_greedy_equals_the_targets_greedy_decoding(k):
    target, draft = tiny_gpt(0), tiny_gpt(1, n_embd=8, n_layer=1)
    prompt = torch.randint(0, 13, (1, 5), generator=torch.Generator().manual_seed(k))
    want = target.generate(prompt, 30, top_k=1)[0].tolist()
    got, stats = speculative_generate(target, GPTDraft(draft), prompt, 30, k=k, temperature=0)
    assert got == want
    assert stats.new_tokens == 30 and stats.rounds <= 30


def test_greedy_with_an_ngram_draft():
    target = tiny_gpt(2)
    data = target.generate(torch.zeros(1, 1, dtype=torch.long), 39, generator=torch.Generator().manual_seed(0))
    draft = NGramDraft.fit([data[0].tolist()] * 3, vocab_size=13, order=3)
    prompt = [3, 1, 4]
    want = target.generate(torch.tensor([prompt]), 25, top_k=1)[0].tolist()
    got, stats = speculative_generate(target, draft, prompt, 25, k=4, temperature=0)
    assert got == want
    assert 0 <= stats.acceptance_rate <= 1


def test_the_draft_equal_to_the_target_is_always_accepted():
    target = tiny_gpt(3)
    for temperature in (0, 1.0):
        _, stats = speculative_generate(target, GPTDraft(target), [1, 2], 20, k=4, temperature=temperature,
                                        generator=torch.Generator().manual_seed(0))
        assert stats.acceptance_rate == 1.0
        assert stats.tokens_per_pass > 4  # k accepted + 1 from the target per pass (the last pass is shorter)


def exact_joint(target, prompt, V):
    """P(t1, t2 | prompt) by enumeration."""
    with torch.no_grad():
        p1 = F.softmax(target(torch.tensor([prompt]))[0][0, -1], -1)
        joint = torch.zeros(V, V)
        for a in range(V):
            p2 = F.softmax(target(torch.tensor([prompt + [a]]))[0][0, -1], -1)
            joint[a] = p1[a] * p2
    return joint.flatten()


def chi2_pvalue(counts, probs, n):
    expected = probs.double() * n
    keep = expected >= 5  # pool the rare cells, if any
    obs, exp = counts[keep].double(), expected[keep]
    if not bool(keep.all()):
        obs, exp = torch.cat([obs, counts[~keep].sum().view(1)]), torch.cat([exp, expected[~keep].sum().view(1)])
    return chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


def test_sampled_tokens_follow_the_target_distribution():
    V, n = 5, 3000
    target = tiny_gpt(4, vocab=V, block=8)
    with torch.no_grad():
        target.lm_head.weight.mul_(0.1)  # moderate distributions: every pair of tokens is likely enough
    q = torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1])  # a draft that disagrees with the target
    prompt = [0]
    joint = exact_joint(target, prompt, V)
    g = torch.Generator().manual_seed(0)
    counts, naive = torch.zeros(V * V), torch.zeros(V * V)
    for _ in range(n):
        ids, _ = speculative_generate(target, FixedDraft(q), prompt, 2, k=2, generator=g)
        counts[ids[1] * V + ids[2]] += 1
        a, b = torch.multinomial(q, 2, replacement=True, generator=g).tolist()  # the draft's own samples
        naive[a * V + b] += 1
    assert chi2_pvalue(counts, joint, n) > 1e-3
    assert chi2_pvalue(naive, joint, n) < 1e-6  # the test can tell a wrong distribution


def test_accept_or_resample_rule():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.25, 0.25, 0.5]])
    g = torch.Generator().manual_seed(0)
    assert accept_or_resample(p, q, [0], torch.tensor([0.99]), g)[0] == 1  # p/q = 2 >= u: accepted
    for _ in range(20):  # token 2 has p = 0: always rejected, then drawn from max(p - q, 0) = (0.25, 0.25, 0)
        n, nxt = accept_or_resample(p, q, [2], torch.tensor([0.0]), g)
        assert n == 0 and nxt in (0, 1)
    counts = torch.zeros(3)
    for _ in range(2000):
        counts[accept_or_resample(p, q, [0], torch.tensor([1.0]), g)[1]] += 1  # all accepted: the bonus from p[1]
    assert torch.allclose(counts / 2000, p[1], atol=0.04)


def test_bad_input():
    target = tiny_gpt(5, block=10)
    draft = GPTDraft(target)
    with pytest.raises(ValueError, match="block of 10"):
        speculative_generate(target, draft, [1, 2, 3], 8)
    with pytest.raises(ValueError, match="k must be"):
        speculative_generate(target, draft, [1], 3, k=0)
    with pytest.raises(ValueError, match="empty"):
        speculative_generate(target, draft, [], 3)
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(target, draft, torch.zeros(2, 3, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="temperature"):
        speculative_generate(target, draft, [1], 3, temperature=-1)


def test_expected_speedup_formula():
    assert expected_speedup(0.0, 4, 0.25) == pytest.approx(1 / 2)  # nothing accepted: one token per 2 passes' time
    assert expected_speedup(1.0, 4, 0.0) == pytest.approx(5.0)  # all accepted, free draft: k + 1 tokens a pass
    assert expected_speedup(0.5, 2, 0.0) == pytest.approx(1.75)  # 1 + 0.5 + 0.25
    with pytest.raises(ValueError, match="alpha"):
        expected_speedup(1.5, 2, 0.1)


def test_ngram_draft_memo_returns_the_same_distribution():
    target = tiny_gpt(6)
    seq = target.generate(torch.zeros(1, 1, dtype=torch.long), 30, generator=torch.Generator().manual_seed(1))[0]
    draft = NGramDraft.fit([seq.tolist()], vocab_size=13, order=3)
    a = draft.probs([1, 2, 3])
    assert draft.probs([9, 2, 3]) is a  # the same 2-token context
    assert torch.isclose(a.sum(), torch.tensor(1.0))
    fresh = NGramDraft(draft.ngram, 13).probs([2, 3])
    assert torch.equal(fresh, a)
