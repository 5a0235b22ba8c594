"""course_lib.rl: GRPO's group advantages against mean and sample standard deviation computed
one group at a time, the clipped loss and its KL penalty against a token-by-token loop (values
and gradients), the clip that stops the gradient, rollouts with the KV cache against a loop
that reads the whole context at every step (same tokens from the same seed), answers that stop
at <|end|>, the two silent failures turned into errors (a prompt without the chat template,
answers that never end), and GRPO and expert iteration raising the reward of a tiny model."""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F

from course_lib import rl
from course_lib.chat import END, chat_tokenizer, encode_chat, pad_batch, sft_targets
from course_lib.gpt import GPT, GPTConfig
from course_lib.rl import check_chat_prompt, group_advantages, grpo_loss, rollout
from course_lib.tokenizers import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TOK = chat_tokenizer(BPETokenizer([]))  # the 256 bytes and the chat tokens


def prompt(text="say"):
    return encode_chat(TOK, [{"role": "user", "content": text}], add_generation_prompt=True)[0]


def test_group_advantages_one_group_at_a_time():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(3, 6, generator=g, dtype=torch.float64)
    adv = group_advantages(r)
    for i in range(3):
        row = r[i].tolist()
        mu, sd = statistics.mean(row), statistics.stdev(row)
        assert adv[i].tolist() == pytest.approx([(x - mu) / (sd + 1e-4) for x in row], rel=1e-9)
    assert group_advantages(r, scale=False)[0].tolist() == pytest.approx([x - statistics.mean(r[0].tolist())
                                                                          for x in r[0].tolist()])
    assert group_advantages(torch.ones(2, 4)).abs().max() == 0  # all alike: nothing to learn
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(4))


def loop_loss(logp, old, adv, mask, eps, ref, beta):
    total = 0.0
    for i in range(logp.shape[0]):
        terms = []
        for t in range(logp.shape[1]):
            if mask[i, t]:
                ratio = torch.exp(logp[i, t] - old[i, t])
                surrogate = torch.minimum(ratio * adv[i], torch.clamp(ratio, 1 - eps, 1 + eps) * adv[i])
                d = ref[i, t] - logp[i, t]
                terms.append(-surrogate + beta * (torch.exp(d) - d - 1))
        total = total + sum(terms) / len(terms)
    return total / logp.shape[0]


def test_grpo_loss_against_a_loop_values_and_gradients():
    g = torch.Generator().manual_seed(2)
    N, T = 4, 5
    old = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3
    noise = 0.4 * torch.randn(N, T, generator=g, dtype=torch.float64)  # ratios in and out of the clip
    logp = (old + noise).requires_grad_()
    ref = old + 0.2 * torch.randn(N, T, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 1, 0], [1, 0, 1, 0, 1]])
    ours = grpo_loss(logp, old, adv, mask, 0.2, ref, 0.05)
    (g_ours,) = torch.autograd.grad(ours, logp)
    theirs = loop_loss(logp, old, adv, mask, 0.2, ref, 0.05)
    (g_theirs,) = torch.autograd.grad(theirs, logp)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    assert torch.allclose(g_ours, g_theirs, atol=1e-12)
    ratio = torch.exp(logp - old).detach()
    clipped = ((ratio > 1.2) & (adv[:, None] > 0)) | ((ratio < 0.8) & (adv[:, None] < 0))
    assert (clipped & mask.bool()).any()  # the draw exercises the clip
    g_no_kl = torch.autograd.grad(grpo_loss(logp, old, adv, mask, 0.2), logp)[0]
    assert torch.all(g_no_kl[clipped] == 0)  # outside the trust region the surrogate gives no gradient
    assert torch.all(g_no_kl[~mask.bool()] == 0)


def test_at_ratio_one_the_gradient_is_the_policy_gradient():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -1.0])
    loss = grpo_loss(logp, logp.detach(), adv, torch.ones(2, 2))
    loss.backward()  # -(1/N) sum_i A_i (1/|o_i|) sum_t grad log pi
    assert torch.allclose(logp.grad, -adv[:, None] / 2 / 2 * torch.ones(2, 2))


def test_kl_penalty_is_zero_at_the_reference_and_positive_away():
    logp = torch.log(torch.tensor([[0.2, 0.5]]))
    zero = grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), ref_logp=logp, kl_coef=1.0)
    assert zero.item() == 0.0
    away = grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), ref_logp=logp + 0.3, kl_coef=1.0)
    assert away.item() > 0
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(logp, logp, torch.zeros(1), torch.ones(1, 2), kl_coef=1.0)


def tiny(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=TOK.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)).to(dtype)


def full_context_sampling(model, p, G, steps, seed):
    """The reference: every step reads the whole context again (no cache), same draws."""
    gen = torch.Generator().manual_seed(seed)
    end = TOK.special_tokens[END]
    x = torch.tensor([p] * G)
    done = torch.zeros(G, dtype=torch.bool)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(x)
            nxt = torch.multinomial(F.softmax(logits[:, -1].float(), -1), 1, generator=gen)[:, 0]
            nxt[done] = end
            done |= nxt == end
            x = torch.cat([x, nxt[:, None]], 1)
            out.append(nxt)
            if done.all():
                break
    rows = [r.tolist() for r in torch.stack(out, 1)]
    return [r[:r.index(end) + 1] if end in r else r for r in rows], done


def test_rollout_with_the_cache_draws_what_the_full_context_draws():
    model = tiny(dtype=torch.float64).eval()
    end = TOK.special_tokens[END]
    with torch.no_grad():  # <|end|>'s logit about as large as the others: some answers stop, some do not
        h = model.transformer.ln_f(model.hidden_states(torch.tensor([prompt()])))[0, -1]
        model.transformer.wte.weight[end] = 2.5 * h / h.norm() ** 2
    p = prompt()
    mixed = 0
    for seed in range(5):
        ro = rollout(model, TOK, p, G=6, max_new_tokens=8, generator=torch.Generator().manual_seed(seed))
        want, done = full_context_sampling(model, p, 6, 8, seed)
        assert ro.ended.tolist() == done.tolist()
        mixed += 0 < int(done.sum()) < 6
        for g in range(6):
            assert ro.ids[g][ro.mask[g].bool()].tolist() == want[g]
            assert ro.ids[g, :len(p)].tolist() == p
            assert ro.texts[g] == TOK.decode([t for t in want[g] if t != end])
    assert mixed >= 1  # some draws stop some answers and not others


def test_the_silent_failures_are_errors():
    model = tiny()
    with pytest.raises(ValueError, match="not a chat prompt"):
        rollout(model, TOK, TOK.encode("say"), G=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="not a chat prompt"):
        rl.grpo_train(model, None, TOK, [TOK.encode("plain text")], len, steps=1, progress=False)
    with torch.no_grad():  # <|end|> never drawn
        model.transformer.wte.weight[TOK.special_tokens[END]] = -100 * model.transformer.wte.weight.mean(0)
        model.transformer.wte.weight[TOK.special_tokens[END]] -= 1e3
    never = rollout(model, TOK, prompt(), G=4, max_new_tokens=3, generator=torch.Generator().manual_seed(0))
    assert not never.ended.any()
    with pytest.raises(RuntimeError, match="no sampled answer wrote <|end|>"):
        rl.grpo_train(model, None, TOK, [prompt()], len, steps=2, G=4, max_new_tokens=3, progress=False)
    check_chat_prompt(prompt(), TOK)  # a real one passes


def sft_on_ab(model, steps=150):
    """Teach a tiny model the format: two letters drawn from a and b, then <|end|>."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(64):
        answer = "".join("ab"[i] for i in torch.randint(2, (2,), generator=g).tolist())
        rows.append(encode_chat(TOK, [{"role": "user", "content": "say"}, {"role": "assistant", "content": answer}]))
    x, y = sft_targets(*pad_batch(rows, TOK.special_tokens[END]))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def share_of_a(text):
    return text.count("a") / max(1, len(text))


@pytest.mark.parametrize("method", ["grpo", "expert_iteration"])
def test_rl_raises_the_reward_of_a_tiny_model(method):
    model = sft_on_ab(tiny())
    def mean_share():
        texts = rollout(model, TOK, prompt(), 64, 4, generator=torch.Generator().manual_seed(9)).texts
        return statistics.mean(share_of_a(t) for t in texts)

    before = mean_share()
    if method == "grpo":
        hist = rl.grpo_train(model, None, TOK, [prompt()], share_of_a, steps=25, G=8, prompts_per_step=2, lr=3e-3,
                             max_new_tokens=4, progress=False)
    else:
        hist = rl.expert_iteration(model, TOK, [prompt()], share_of_a, rounds=4, G=8, prompts_per_round=4,
                                   threshold=1.0, sft_steps=10, lr=3e-3, max_new_tokens=4, progress=False)
    after = mean_share()
    assert 0.3 < before < 0.7  # the SFT model says a and b alike
    assert after > before + 0.25, (before, after)
    assert len(hist.reward) >= 1 and all(0 <= e <= 1 for e in hist.ended) and math.isfinite(hist.seconds)


def test_distinct_ngrams():
    assert rl.distinct_ngrams(["a b c", "a b d"], n=2) == pytest.approx(3 / 4)
    assert rl.distinct_ngrams(["a a a a"], n=1) == 0.25 and rl.distinct_ngrams([], 2) == 0.0


def test_replay_trains_the_language_model_beside_grpo():
    """With a constant reward every advantage is 0: GRPO alone changes no weight, and with
    replay rows the updates are the language model's on those rows, whose loss falls."""
    rows = [(TOK.encode(t), [1] * len(TOK.encode(t))) for t in ("to be or not to be", "that is the question")]
    x, y = sft_targets(*pad_batch(rows, TOK.special_tokens[END]))
    constant = lambda text: 1.0  # noqa: E731
    model = sft_on_ab(tiny())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rl.grpo_train(model, None, TOK, [prompt()], constant, steps=3, G=4, lr=1e-2, max_new_tokens=4, progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with torch.no_grad():
        lm_before = model(x, y)[1].item()
    rl.grpo_train(model, None, TOK, [prompt()], constant, steps=10, G=4, lr=1e-2, max_new_tokens=4,
                  replay_rows=rows, replay_coef=1.0, replay_batch=2, progress=False)
    with torch.no_grad():
        lm_after = model(x, y)[1].item()
    assert lm_after < lm_before - 0.5, (lm_before, lm_after)
    with pytest.raises(ValueError, match="replay_rows is empty"):
        rl.grpo_train(model, None, TOK, [prompt()], constant, steps=1, replay_rows=[], progress=False)
    with pytest.raises(ValueError, match="replay_coef"):
        rl.grpo_train(model, None, TOK, [prompt()], constant, steps=1, replay_rows=rows, replay_coef=-1,
                      progress=False)
