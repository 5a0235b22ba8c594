"""course_lib.gpt: GPT against transformers' GPT2LMHeadModel with the same weights (logits
in float32 and float64, the loss, greedy and seeded sampled generations), the KV cache
against the full forward pass, cached against uncached generation and against
course_lib.train.generate (nanoGPT's loop), the filters against TopKLogitsWarper and
TopPLogitsWarper, the attention against chapter 6's MultiHeadAttention, GPT-2's
initialisation and parameter count by formula, weight tying, causality, the loss's -1
targets, left padding (each row of a padded batch against the row alone, cached and
uncached, and greedy decoding), bad input. Nothing is downloaded: the GPT-2s are small
random ones."""

import doctest
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: every reference model is built here

from course_lib import gpt  # noqa: E402
from course_lib.attention import MultiHeadAttention, causal_mask  # noqa: E402
from course_lib.gpt import GPT, GPTConfig, KVCache, LayerNorm, top_k_filter, top_p_filter  # noqa: E402
from course_lib.train import evaluate  # noqa: E402
from course_lib.train import generate as train_generate  # noqa: E402
from course_lib.transformer import LayerNorm as Chapter6LayerNorm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

F32 = dict(atol=1e-5, rtol=1e-5)
F64 = dict(atol=1e-10, rtol=1e-10)


def config(**kw):
    """A tiny GPT: n_embd = n_head * head size = 2 * 8."""
    base = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPTConfig(**{**base, **kw})


def make_gpt(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    model = GPT(config(**kw)).to(dtype).eval()
    with torch.no_grad():  # weights far from the initialisation: LayerNorms and biases matter, logits spread out
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def randint(high, shape, seed=0):
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def test_module_examples():
    assert doctest.testmod(gpt).failed == 0


# ---------------------------------------------------------------------------- the reference: transformers' GPT-2
def hf_gpt2(n_head=4, dtype=torch.float32, seed=0, **kw):
    """A random GPT2LMHeadModel (2 layers, 48 dims, V=97, 32 positions, no dropout) with every
    parameter moved off its initialisation, so that biases and LayerNorm gains count."""
    transformers = pytest.importorskip("transformers")
    settings = dict(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=n_head, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None, pad_token_id=0,
                    attn_implementation="eager")  # the attention written out, not a fused kernel
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**settings, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():  # the tied wte / lm_head once
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype)


@pytest.mark.parametrize("n_head", [2, 4])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
def test_from_hf_gives_gpt2s_logits(n_head, dtype, tol):
    hf = hf_gpt2(n_head, dtype)
    ours = GPT.from_hf(hf).eval()
    assert ours.config == GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=n_head, n_embd=48)
    assert ours.lm_head.weight.dtype == dtype and ours.lm_head.weight is ours.transformer.wte.weight
    idx = randint(97, (3, 32))
    with torch.no_grad():
        logits, loss = ours(idx)
        expected = hf(idx).logits
    assert logits.shape == (3, 32, 97) and logits.dtype == dtype and loss is None
    torch.testing.assert_close(logits, expected, **tol)
    # Conv1D keeps (in, out): our nn.Linear weight is its transpose
    torch.testing.assert_close(ours.transformer.h[0].attn.c_attn.weight, hf.transformer.h[0].attn.c_attn.weight.T)


def test_from_hf_loss_equals_gpt2s_shifted_loss():
    """HF shifts inside: logits[:, t] against labels[:, t + 1], -100 skipped. Ours takes the
    targets already shifted, -1 skipped; the last position has no target."""
    hf = hf_gpt2()
    ours = GPT.from_hf(hf)
    idx = randint(97, (2, 20), seed=1)
    labels = idx.clone()
    labels[0, 3] = labels[1, 10:] = -100
    shifted = labels[:, 1:].masked_fill(labels[:, 1:] == -100, -1)  # (B, T - 1)
    targets = torch.cat([shifted, torch.full((2, 1), -1)], dim=1)  # (B, T)
    with torch.no_grad():
        _, loss = ours(idx, targets)
        expected = hf(idx, labels=labels).loss
    torch.testing.assert_close(loss, expected, **F32)


def test_from_hf_greedy_generation_equals_gpt2s():
    hf = hf_gpt2()
    ours = GPT.from_hf(hf)
    prompt = randint(97, (3, 5), seed=2)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False)
    for use_cache in (True, False):
        out = ours.generate(prompt, 20, top_k=1, use_cache=use_cache)
        assert out.shape == (3, 25) and torch.equal(out, expected), use_cache


def test_from_hf_sampling_equals_gpt2s_with_the_same_seed():
    """Temperature, then top-k, then top-p, then one torch.multinomial draw per step: with the
    same seed (HF draws from the global generator, ours from ``generator``) the same tokens."""
    hf = hf_gpt2()
    ours = GPT.from_hf(hf)
    prompt = randint(97, (3, 5), seed=3)
    torch.manual_seed(5)
    expected = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=True,
                           temperature=0.8, top_k=20, top_p=0.9)
    out = ours.generate(prompt, 20, temperature=0.8, top_k=20, top_p=0.9, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out, expected)


def test_from_hf_accepts_a_state_dict_with_config_the_inner_model_and_old_buffers():
    hf = hf_gpt2()
    idx = randint(97, (2, 12), seed=4)
    with torch.no_grad():
        expected = hf(idx).logits
    state = dict(hf.state_dict())
    for i in range(2):  # the causal-mask buffers that transformers 4.x keeps in the state dict
        state[f"transformer.h.{i}.attn.bias"] = torch.ones(1, 1, 32, 32, dtype=torch.bool).tril()
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    for source, kw in [(state, dict(config=GPTConfig.from_hf(hf.config))), (hf.transformer, {})]:
        ours = GPT.from_hf(source, **kw).eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(idx)[0], expected, **F32)


def test_from_hf_keeps_the_training_mode_and_one_dropout():
    hf = hf_gpt2(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1).train()
    ours = GPT.from_hf(hf)
    assert ours.training and ours.config.dropout == 0.1


def test_from_hf_parameter_counts_equal_gpt2s():
    hf = hf_gpt2()
    ours = GPT.from_hf(hf)
    assert ours.num_parameters() == hf.num_parameters()
    assert ours.num_parameters(non_embedding=True) == hf.num_parameters(exclude_embeddings=True)


@pytest.mark.parametrize("kw, match", [
    (dict(activation_function="relu"), "activation_function"),
    (dict(n_inner=100), "n_inner"),
    (dict(layer_norm_epsilon=1e-6), "layer_norm_epsilon"),
    (dict(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
    (dict(attn_pdrop=0.1), "embd_pdrop == attn_pdrop == resid_pdrop"),
])
def test_from_hf_refuses_what_gpt_does_not_compute(kw, match):
    with pytest.raises(ValueError, match=match):
        GPT.from_hf(hf_gpt2(**kw))


def test_from_hf_errors():
    hf = hf_gpt2()
    state = hf.state_dict()
    with pytest.raises(ValueError, match="pass config=GPTConfig"):
        GPT.from_hf(state)
    wrong = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=64)
    with pytest.raises(ValueError, match=r"transformer.wte.weight: expected shape \(97, 64\).*got \(97, 48\)"):
        GPT.from_hf(state, config=wrong)
    with pytest.raises(ValueError, match="missing keys"):
        GPT.from_hf(state, config=GPTConfig(vocab_size=97, block_size=32, n_layer=3, n_head=4, n_embd=48))
    with pytest.raises(ValueError, match="unexpected keys"):
        GPT.from_hf(state, config=GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=48,
                                            bias=False))
    untied = dict(state)
    untied["lm_head.weight"] = untied["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="GPT ties them"):
        GPT.from_hf(untied, config=GPTConfig.from_hf(hf.config))
    with pytest.raises(TypeError, match="expected a transformers GPT2LMHeadModel"):
        GPT.from_hf(nn.Linear(2, 2))


# ---------------------------------------------------------------------------- the filters against transformers' warpers
def warper_logits():
    """Random rows, rows with ties (rounded), a row with -inf, a peaked row."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 50, generator=g) * 2
    x[2:4] = x[2:4].round()  # many ties
    x[4, ::3] = float("-inf")
    x[5, 7] = 20.0  # one token holds nearly all the mass
    return x


@pytest.mark.parametrize("k", [1, 2, 5, 49, 50, 80])
def test_top_k_filter_equals_transformers(k):
    warpers = pytest.importorskip("transformers.generation.logits_process")
    x = warper_logits()
    out = top_k_filter(x, k)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, warpers.TopKLogitsWarper(k)(None, x.clone()))
    assert torch.equal(x, warper_logits())  # the input is left as it was


@pytest.mark.parametrize("p", [1e-3, 0.3, 0.5, 0.9, 0.999, 1.0])
def test_top_p_filter_equals_transformers(p):
    warpers = pytest.importorskip("transformers.generation.logits_process")
    x = warper_logits()
    out = top_p_filter(x, p)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, warpers.TopPLogitsWarper(p)(None, x.clone()))
    assert ((out > float("-inf")).sum(dim=-1) >= 1).all()  # at least one token kept
    kept = F.softmax(x, dim=-1).masked_fill(out == float("-inf"), 0).sum(dim=-1)  # (6,)
    assert (kept >= p - 1e-6).all()  # the kept tokens reach p


def test_filters_by_hand_and_on_leading_dimensions():
    inf = float("-inf")
    assert top_k_filter(torch.tensor([1.0, 3.0, 2.0]), 2).tolist() == [inf, 3.0, 2.0]
    assert top_k_filter(torch.tensor([1.0, 3.0, 3.0]), 1).tolist() == [inf, 3.0, 3.0]  # ties both kept
    logits = torch.tensor([0.5, 0.3, 0.2]).log()
    assert top_p_filter(logits, 0.4).isfinite().tolist() == [True, False, False]
    assert top_p_filter(logits, 0.7).isfinite().tolist() == [True, True, False]
    assert top_p_filter(logits, 1.0).isfinite().tolist() == [True, True, True]
    x = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(1))  # (B, T, V): row by row
    assert torch.equal(top_k_filter(x, 4), top_k_filter(x.view(6, 11), 4).view(2, 3, 11))
    assert torch.equal(top_p_filter(x, 0.6), top_p_filter(x.view(6, 11), 0.6).view(2, 3, 11))


@pytest.mark.parametrize("call, match", [
    (lambda x: top_k_filter(x, 0), "k must be an integer >= 1"),
    (lambda x: top_k_filter(x, 1.5), "k must be an integer >= 1"),
    (lambda x: top_k_filter(x, True), "k must be an integer >= 1"),
    (lambda x: top_p_filter(x, 0), r"top_p must be a probability in \(0, 1\]"),
    (lambda x: top_p_filter(x, 1.5), r"top_p must be a probability in \(0, 1\]"),
    (lambda x: top_p_filter(x, True), r"top_p must be a probability in \(0, 1\]"),
    (lambda x: top_k_filter(x.long(), 2), r"expected logits as a float tensor of shape \(\.\.\., V\)"),
])
def test_filter_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(2, 5))


# ---------------------------------------------------------------------------- the model's contract
def test_shapes_contract_and_uniform_start():
    torch.manual_seed(0)
    model = GPT(config())
    idx = randint(23, (4, 16))
    logits, loss = model(idx, randint(23, (4, 16), seed=1))
    assert logits.shape == (4, 16, 23) and logits.dtype == torch.float32
    assert loss.dim() == 0 and model(idx)[1] is None
    assert model.get_block_size() == 16
    data = randint(23, (500,), seed=2)  # GPT-2's small initial weights: nearly uniform predictions
    assert evaluate(model, data, batch_size=8, n_batches=2) == pytest.approx(math.log(23), abs=0.05)


def test_loss_is_the_mean_cross_entropy_over_targets_not_minus_one():
    model = make_gpt()
    idx, targets = randint(23, (3, 10)), randint(23, (3, 10), seed=1)
    targets[0, :4] = targets[2, 9] = -1
    logits, loss = model(idx, targets)
    kept = targets != -1
    torch.testing.assert_close(loss, F.cross_entropy(logits[kept], targets[kept]))
    one = torch.full_like(targets, -1)
    one[1, 5] = targets[1, 5]  # a single target left: its own -log p
    assert model(idx, one)[1].item() == pytest.approx(-F.log_softmax(logits[1, 5], -1)[targets[1, 5]].item(), abs=1e-5)


def test_weight_tying_is_one_parameter():
    model = make_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["transformer.wte.weight"].data_ptr()
    _, loss = model(randint(23, (2, 8)), randint(23, (2, 8), seed=1))
    loss.backward()  # the gradient of both uses lands in one .grad
    assert model.lm_head.weight.grad is model.transformer.wte.weight.grad
    reloaded = GPT(config())
    reloaded.load_state_dict(state)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight


@pytest.mark.parametrize("bias", [True, False])
def test_num_parameters_by_formula(bias):
    """Per block: c_attn 3C^2, c_proj C^2, c_fc 4C^2, c_proj 4C^2 = 12 C^2, plus with biases
    3C + C + 4C + C and two LayerNorms 2 * 2C = 13C (without: the two gains, 2C); ln_f."""
    L, C, V, T = 2, 16, 23, 16
    model = GPT(config(bias=bias))
    per_block = 12 * C * C + (13 * C if bias else 2 * C)
    non_embedding = L * per_block + (2 * C if bias else C)
    assert model.num_parameters(non_embedding=True) == non_embedding
    assert model.num_parameters() == non_embedding + V * C + T * C  # the tied matrix once
    assert model.num_parameters() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_gpt2_initialisation():
    torch.manual_seed(0)
    L = 4
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=L, n_head=4, n_embd=64))
    params = dict(model.named_parameters())
    for kind in ("attn.c_proj.weight", "mlp.c_proj.weight"):  # 4096 and 16384 numbers per layer
        w = torch.cat([p.flatten() for name, p in params.items() if name.endswith(kind)])
        assert w.std().item() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.05), kind
        assert abs(w.mean().item()) < 1e-3
    for name in ("attn.c_attn.weight", "mlp.c_fc.weight"):
        w = torch.cat([p.flatten() for n, p in params.items() if n.endswith(name)])
        assert w.std().item() == pytest.approx(0.02, rel=0.05), name
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        assert params[name].std().item() == pytest.approx(0.02, rel=0.05), name
    for name, p in params.items():
        if name.endswith(".bias"):
            assert (p == 0).all(), name
        if "ln_" in name and name.endswith(".weight"):
            assert (p == 1).all(), name


def test_causal_a_future_token_changes_no_earlier_logit():
    model = make_gpt()
    idx = randint(23, (2, 12))
    changed = idx.clone()
    changed[:, 7] = (idx[:, 7] + 1) % 23
    a, b = model(idx)[0], model(changed)[0]
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_dropout_acts_in_training_only():
    model = make_gpt(dropout=0.5)
    idx = randint(23, (2, 8))
    assert torch.equal(model(idx)[0], model(idx)[0])  # eval: deterministic
    model.train()
    assert not torch.equal(model(idx)[0], model(idx)[0])


def test_layernorm_equals_chapter_6s_and_torchs():
    x = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 1
    ours, ch6 = LayerNorm(8).double(), Chapter6LayerNorm(8).double()
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    ch6.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), ch6(x), **F64)
    no_bias = LayerNorm(8, bias=False).double()
    assert no_bias.bias is None
    torch.testing.assert_close(no_bias(x), nn.LayerNorm(8, bias=False).double()(x), **F64)


def test_attention_equals_chapter_6s_multi_head_attention_with_a_causal_mask():
    """c_attn's (3C, C) weight is chapter 6's W^Q, W^K, W^V stacked; c_proj is W^O."""
    model = make_gpt(dtype=torch.float64)
    attn, C = model.transformer.h[0].attn, 16
    mha = MultiHeadAttention(C, 2).double()
    with torch.no_grad():
        for i, proj in enumerate([mha.q_proj, mha.k_proj, mha.v_proj]):
            proj.weight.copy_(attn.c_attn.weight[i * C:(i + 1) * C])
            proj.bias.copy_(attn.c_attn.bias[i * C:(i + 1) * C])
        mha.out_proj.load_state_dict(attn.c_proj.state_dict())
    x = torch.randn(2, 9, C, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(attn(x), mha(x, mask=causal_mask(9)), **F64)


# ---------------------------------------------------------------------------- the KV cache
@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
@pytest.mark.parametrize("chunks", [[5, 1, 1, 1], [1] * 16, [5, 3, 1, 4, 3], [16]])
def test_cached_forward_equals_the_full_forward(chunks, dtype, tol):
    """A prompt, then one token or several at a time (the mask aligned to the cached positions)."""
    model = make_gpt(dtype=dtype)
    idx = randint(23, (3, sum(chunks)))
    expected, _ = model(idx)
    cache, pieces, start = KVCache(), [], 0
    for n in chunks:
        logits, _ = model(idx[:, start:start + n], cache=cache)
        pieces.append(logits)
        start += n
        assert len(cache) == start and cache.batch_size == 3
        assert len(cache.keys) == 2 and cache.keys[1].shape == (3, 2, start, 8)  # (B, nh, P, hs) per layer
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, **tol)


def test_cache_errors():
    model = make_gpt()
    cache = KVCache()
    model(randint(23, (2, 10)), cache=cache)
    with pytest.raises(ValueError, match=r"P \+ T <= block_size=16.*the cache holds P=10 positions and idx adds T=7"):
        model(randint(23, (2, 7)), cache=cache)
    with pytest.raises(ValueError, match="the cache holds 2 sequences but idx has B=3"):
        model(randint(23, (3, 1)), cache=cache)
    with pytest.raises(TypeError, match="expected cache as a KVCache"):
        model(randint(23, (2, 1)), cache=[])


# ---------------------------------------------------------------------------- generation
def test_generation_with_and_without_cache_past_block_size():
    """30 new tokens after 5 with block_size 16: the context is cropped; the cache is rebuilt."""
    model = make_gpt()
    prompt = randint(23, (3, 5))
    greedy = model.generate(prompt, 30, top_k=1, use_cache=True)
    assert greedy.shape == (3, 35) and torch.equal(greedy[:, :5], prompt)
    assert torch.equal(greedy, model.generate(prompt, 30, top_k=1, use_cache=False))
    kw = dict(temperature=1.3, top_k=10, top_p=0.95)
    sampled = [model.generate(prompt, 30, use_cache=c, generator=torch.Generator().manual_seed(7), **kw)
               for c in (True, False)]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], greedy)


def test_generation_equals_the_course_loop():
    """``course_lib.train.generate`` re-reads the last block_size tokens at each step (nanoGPT)."""
    model = make_gpt()
    prompt = randint(23, (2, 20), seed=1)  # longer than block_size: cropped from the start
    for kw in [dict(top_k=1), dict(temperature=0.7), dict(temperature=1.5, top_k=5)]:
        expected = train_generate(model, prompt, 25, generator=torch.Generator().manual_seed(3), **kw)
        for use_cache in (True, False):
            out = model.generate(prompt, 25, use_cache=use_cache, generator=torch.Generator().manual_seed(3), **kw)
            assert torch.equal(out, expected), (kw, use_cache)


def test_generation_feeds_one_token_per_step_until_the_cache_is_full():
    model = make_gpt()
    lengths = []
    model.transformer.wte.register_forward_hook(lambda module, inputs, output: lengths.append(inputs[0].shape[1]))
    model.generate(randint(23, (1, 5)), 15, use_cache=True)
    assert lengths == [5] + [1] * 11 + [16] * 3  # the prompt; one token at a time to 16; then cropped contexts
    lengths.clear()
    model.generate(randint(23, (1, 5)), 4, use_cache=False)
    assert lengths == [5, 6, 7, 8]


def test_generate_restores_the_mode_and_handles_zero_tokens():
    model = make_gpt(dropout=0.3).train()
    prompt = randint(23, (2, 3))
    assert torch.equal(model.generate(prompt, 0), prompt)
    out = model.generate(prompt, 6, generator=torch.Generator().manual_seed(0))
    assert model.training and out.shape == (2, 9) and out.dtype == torch.long
    assert torch.equal(out, model.generate(prompt, 6, generator=torch.Generator().manual_seed(0)))  # no dropout


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=0), "temperature must be a finite number > 0"),
    (dict(top_k=0), "top_k must be an integer > 0"),
    (dict(top_p=0.0), r"top_p must be a probability in \(0, 1\]"),
    (dict(max_new_tokens=-1), "max_new_tokens must be an integer >= 0"),
    (dict(use_cache="yes"), "use_cache must be True or False"),
    (dict(idx=torch.zeros(2, 0, dtype=torch.long)), "idx has no tokens to continue"),
    (dict(idx=torch.zeros(4)), r"expected idx of shape \(B, T\) holding token ids"),
])
def test_generate_errors(kw, match):
    args = {**dict(idx=torch.zeros(1, 2, dtype=torch.long), max_new_tokens=3), **kw}
    with pytest.raises(ValueError, match=match):
        make_gpt().generate(**args)


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=15), "n_embd=15 is not divisible by n_head=2"),
    (dict(n_layer=0), "GPTConfig.n_layer must be an integer > 0"),
    (dict(block_size=2.0), "GPTConfig.block_size must be an integer > 0"),
    (dict(vocab_size=True), "GPTConfig.vocab_size must be an integer > 0"),
    (dict(dropout=1.0), r"GPTConfig.dropout must be a probability in \[0, 1\)"),
    (dict(dropout=-0.1), r"GPTConfig.dropout must be a probability in \[0, 1\)"),
    (dict(bias=1), "GPTConfig.bias must be True or False"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_forward_errors():
    model = make_gpt()
    with pytest.raises(ValueError, match=r"expected idx of shape \(B, T\) with T <= block_size=16, got \(2, 17\)"):
        model(randint(23, (2, 17)))
    with pytest.raises(ValueError, match="the vocabulary has ids 0..22"):
        model(torch.tensor([[3, 23]]))
    with pytest.raises(ValueError, match=r"expected idx of shape \(B, T\)"):
        model(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"expected targets of shape \(B, T\) = \(1, 2\)"):
        model(torch.tensor([[1, 2]]), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="expected a GPTConfig"):
        GPT(dict(vocab_size=3))


# ---------------------------------------------------------------------------- left padding (attention_mask)
PADDED_LENGTHS = (7, 1, 12, 4)  # prompts of different lengths in one batch


def left_pad(rows, pad=0):
    """Rows of token ids padded on the left to the longest: (idx (B, T), mask (B, T) True on real tokens)."""
    T = max(len(r) for r in rows)
    idx = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.bool)
    for b, r in enumerate(rows):
        idx[b, T - len(r):] = torch.tensor(r)
        mask[b, T - len(r):] = True
    return idx, mask


def padded_rows(n_extra=0):
    return [randint(23, (n + n_extra,), seed=n).tolist() for n in PADDED_LENGTHS]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
def test_left_padded_logits_equal_each_row_alone(dtype, tol):
    model = make_gpt(dtype=dtype)
    rows = padded_rows()
    idx, mask = left_pad(rows, pad=5)
    with torch.no_grad():
        logits, _ = model(idx, attention_mask=mask)  # (B, T, V)
        assert torch.isfinite(logits).all(), "a padding query must not give NaN"
        for b, r in enumerate(rows):
            alone, _ = model(torch.tensor([r]))  # (1, len(r), V)
            torch.testing.assert_close(logits[b, idx.shape[1] - len(r):], alone[0], **tol)


@pytest.mark.parametrize("chunks", [[1, 1, 1, 1], [3, 1]])
def test_left_padded_cached_steps_equal_each_row_alone(chunks):
    """The prompts through the cache, then the continuations a chunk at a time, the mask growing with them."""
    model = make_gpt()
    n = sum(chunks)
    full = padded_rows(n_extra=n)  # each row: its prompt, then n tokens more
    prompts = [r[:-n] for r in full]
    idx, mask = left_pad(prompts)
    cont = torch.tensor([r[-n:] for r in full])  # (B, n)
    cache = KVCache()
    with torch.no_grad():
        pieces = [model(idx, cache=cache, attention_mask=mask)[0]]
        start = 0
        for k in chunks:
            mask = torch.cat([mask, torch.ones(len(full), k, dtype=torch.bool)], dim=1)  # (B, P + k)
            pieces.append(model(cont[:, start:start + k], cache=cache, attention_mask=mask)[0])
            start += k
            assert len(cache) == idx.shape[1] + start
        logits = torch.cat(pieces, dim=1)  # (B, T + n, V)
        for b, r in enumerate(full):
            alone, _ = model(torch.tensor([r]))
            torch.testing.assert_close(logits[b, logits.shape[1] - len(r):], alone[0], **F32)


def test_a_mask_without_padding_equals_no_mask():
    model = make_gpt()
    idx = randint(23, (3, 9))
    with torch.no_grad():
        expected, _ = model(idx)
        got, _ = model(idx, attention_mask=torch.ones(3, 9, dtype=torch.bool))
    torch.testing.assert_close(got, expected, **F32)


def greedy_left_padded(model, rows, n):
    """Greedy decoding of left-padded rows together: one forward pass of the batch per new token."""
    idx, mask = left_pad(rows)
    cache = KVCache()
    out = []
    with torch.no_grad():
        logits, _ = model(idx, cache=cache, attention_mask=mask)
        for _ in range(n):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)  # (B, 1)
            out.append(nxt)
            mask = torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], dim=1)  # (B, P + 1)
            logits, _ = model(nxt, cache=cache, attention_mask=mask)
    return torch.cat(out, dim=1)  # (B, n)


def test_greedy_batched_generation_equals_each_row_alone():
    model = make_gpt()
    rows = padded_rows()
    batched = greedy_left_padded(model, rows, 4)  # the longest row: 12 + 4 = block_size
    for b, r in enumerate(rows):
        alone = model.generate(torch.tensor([r]), 4, top_k=1)[0, len(r):]
        assert batched[b].tolist() == alone.tolist(), f"row {b} (length {len(r)})"


def test_attention_mask_errors():
    model = make_gpt()
    with pytest.raises(ValueError, match=r"expected attention_mask of shape \(B, P \+ T\) = \(2, 5\)"):
        model(randint(23, (2, 5)), attention_mask=torch.ones(2, 4, dtype=torch.bool))
    cache = KVCache()
    model(randint(23, (2, 5)), cache=cache)
    with pytest.raises(ValueError, match=r"= \(2, 6\): the cached P=5 positions and the T=1 new ones"):
        model(randint(23, (2, 1)), cache=cache, attention_mask=torch.ones(2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="reaches position 16, past the position table"):
        model(randint(23, (1, 17)), attention_mask=torch.ones(1, 17, dtype=torch.bool))
