"""course_lib.compress: absmax quantization against torch's own per-channel int8 quantizer,
packing of 4-bit integers, QuantLinear and quantize_model against fake quantization, the
stored sizes, magnitude and structured pruning, head importance, and the distillation loss
against torch.nn.KLDivLoss plus cross_entropy."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib.compress import (QuantLinear, apply_masks, dequantize, distillation_loss, fake_quantize,
                                 fake_quantize_model, head_importance, magnitude_prune, mask_heads, pack_int4,
                                 prune_mlp_neurons, quantize, quantize_model, sparsity, state_bytes, train_student,
                                 unpack_int4)
from course_lib.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_gpt(seed=0, **kw):
    torch.manual_seed(seed)
    c = dict(vocab_size=31, block_size=16, n_layer=2, n_head=4, n_embd=32)
    return GPT(GPTConfig(**{**c, **kw})).eval()


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_int8_per_row_equals_torch_quantize_per_channel():
    torch.manual_seed(0)
    w = torch.randn(24, 40)
    q, scale = quantize(w, bits=8)
    ref = torch.quantize_per_channel(w, scale[:, 0].double(), torch.zeros(24, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(q, ref.int_repr())
    assert torch.allclose(dequantize(q, scale), ref.dequantize(), atol=1e-7)


@pytest.mark.parametrize("bits, group", [(8, None), (4, None), (4, 8), (3, 4), (2, 8)])
def test_quantize_range_and_round_trip_error(bits, group):
    torch.manual_seed(1)
    w = torch.randn(6, 16) * torch.linspace(0.1, 3, 16)
    q, scale = quantize(w, bits, group)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.shape == (6, 1 if group is None else 16 // group)
    assert int(q.abs().max()) == qmax  # each row's (group's) largest |w| lands on the grid's end
    err = (dequantize(q, scale) - w).abs()
    half_step = scale.repeat_interleave(16 // scale.shape[1], dim=1) / 2
    assert bool((err <= half_step + 1e-6).all())


def test_groups_beat_rows_and_more_bits_beat_fewer():
    torch.manual_seed(2)
    w = torch.randn(64, 128) * torch.rand(1, 128) * 4  # columns of very different sizes
    mse = {(b, g): (fake_quantize(w, b, g) - w).pow(2).mean().item() for b in (8, 4) for g in (None, 32)}
    assert mse[(4, 32)] < mse[(4, None)]
    assert mse[(8, None)] < mse[(4, 32)]


def test_zero_rows_and_bad_input():
    q, scale = quantize(torch.zeros(2, 4), 4)
    assert torch.equal(q, torch.zeros(2, 4, dtype=torch.int8)) and torch.equal(scale, torch.ones(2, 1))
    with pytest.raises(ValueError, match="bits"):
        quantize(torch.randn(2, 4), bits=1)
    with pytest.raises(ValueError, match="does not divide"):
        quantize(torch.randn(2, 6), 4, group_size=4)
    with pytest.raises(ValueError, match="float weight matrix"):
        quantize(torch.randn(4), 8)


def test_pack_int4_layout_and_round_trip():
    assert pack_int4(torch.tensor([-8, 7], dtype=torch.int8)).tolist() == [0xF0]
    assert pack_int4(torch.tensor([1, 0], dtype=torch.int8)).tolist() == [0x89]
    q = torch.randint(-8, 8, (5, 12), dtype=torch.int8)
    packed = pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 6)
    assert torch.equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([8, 0], dtype=torch.int8))
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(3, dtype=torch.int8))


@pytest.mark.parametrize("bits, group", [(8, None), (4, 8), (4, None), (2, 16)])
def test_quant_linear_computes_with_the_quantized_weights(bits, group):
    torch.manual_seed(3)
    lin = nn.Linear(32, 12)
    ql = QuantLinear(lin, bits, group)
    q, scale = quantize(lin.weight, bits, group)
    w = dequantize(q, scale.half().float())  # the scales are stored in float16
    x = torch.randn(3, 5, 32)
    assert torch.allclose(ql(x), F.linear(x, w, lin.bias), atol=1e-6)
    assert ql.qweight.dtype == (torch.int8 if bits == 8 else torch.uint8)
    assert ql.qweight.shape == (12, 32 if bits == 8 else 16)


def test_quantize_model_sizes_and_logits():
    model = tiny_gpt()
    x = torch.randint(0, 31, (2, 10))
    ref, _ = model(x)
    sizes = {}
    for bits, group in [(8, None), (4, 16)]:
        qm = quantize_model(model, bits, group)
        fq = fake_quantize_model(model, bits, group)
        assert isinstance(qm.transformer.h[0].attn.c_attn, QuantLinear)
        assert isinstance(qm.lm_head, nn.Linear) and qm.lm_head.weight is qm.transformer.wte.weight
        ql, _ = qm(x)
        fl, _ = fq(x)
        assert torch.allclose(ql, fl, atol=5e-3)  # float16 scales against float32 ones
        assert not torch.allclose(ql, ref, atol=1e-6)
        sizes[bits] = state_bytes(qm)
    fp32 = state_bytes(model)
    linear = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head")
    assert fp32 - sizes[8] > 2.6 * linear  # 4 bytes -> 1 byte per linear weight (plus scales and file overhead)
    assert sizes[8] - sizes[4] > 0.4 * linear  # 1 byte -> half a byte
    assert torch.equal(model(x)[0], ref)  # the original is untouched


def test_magnitude_prune_keeps_the_largest_and_masks_stick():
    model = tiny_gpt(1)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules()
              if isinstance(m, nn.Linear) and n != "lm_head"}
    masks = magnitude_prune(model, 0.5)
    assert set(masks) == set(before)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)
    for name, w in before.items():
        kept = w.abs()[masks[name]]
        dropped = w.abs()[~masks[name]]
        assert kept.min() >= dropped.max()
        assert masks[name].float().mean().item() == pytest.approx(0.5, abs=1e-3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    assert sparsity(model) < 0.01
    apply_masks(model, masks)
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="amount"):
        magnitude_prune(model, 1.0)


def test_prune_mlp_neurons_shrinks_and_drops_dead_units_first():
    model = tiny_gpt(2)
    x = torch.randint(0, 31, (2, 12))
    assert torch.allclose(prune_mlp_neurons(model, 0.0)(x)[0], model(x)[0], atol=1e-6)
    with torch.no_grad():  # make a quarter of each MLP's units write nothing
        for block in model.transformer.h:
            block.mlp.c_proj.weight[:, :32] = 0
    pruned = prune_mlp_neurons(model, 0.25)
    assert pruned.transformer.h[0].mlp.c_fc.weight.shape == (96, 32)
    assert pruned.transformer.h[0].mlp.c_proj.weight.shape == (32, 96)
    assert torch.allclose(pruned(x)[0], model(x)[0], atol=1e-5)
    assert pruned.num_parameters() < model.num_parameters()


def test_head_importance_and_mask_heads():
    model = tiny_gpt(3)
    torch.manual_seed(0)
    batches = [(torch.randint(0, 31, (4, 12)), torch.randint(0, 31, (4, 12))) for _ in range(2)]
    imp = head_importance(model, batches)
    assert imp.shape == (2, 4) and bool((imp > 0).all())
    masked = mask_heads(model, [(0, 1), (1, 3)])
    imp2 = head_importance(masked, batches)
    assert imp2[0, 1] == 0 and imp2[1, 3] == 0 and imp2[0, 0] > 0
    x = batches[0][0]
    assert not torch.allclose(masked(x)[0], model(x)[0])
    with pytest.raises(ValueError, match="no head"):
        mask_heads(model, [(2, 0)])


def test_distillation_loss_against_kldivloss_and_cross_entropy():
    torch.manual_seed(4)
    s, t = torch.randn(3, 5, 11, requires_grad=True), torch.randn(3, 5, 11)
    y = torch.randint(0, 11, (3, 5))
    y[0, 0] = -1
    T, a = 2.5, 0.3
    kl = nn.KLDivLoss(reduction="batchmean", log_target=True)(
        F.log_softmax(s.reshape(-1, 11) / T, -1), F.log_softmax(t.reshape(-1, 11) / T, -1))
    ref = a * T * T * kl + (1 - a) * F.cross_entropy(s.reshape(-1, 11), y.reshape(-1), ignore_index=-1)
    assert torch.allclose(distillation_loss(s, t, y, T, a), ref, atol=1e-6)
    only_teacher = distillation_loss(t.clone().requires_grad_(), t, None, T, 1.0)
    assert only_teacher.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="targets"):
        distillation_loss(s, t, None, T, 0.5)
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(s, t[:, :4], y, T, 0.5)


def test_train_student_learns_from_the_teacher_and_keeps_masks():
    teacher = tiny_gpt(5)
    torch.manual_seed(0)
    data = teacher.generate(torch.zeros(1, 1, dtype=torch.long), 15, generator=torch.Generator().manual_seed(0))[0]
    data = data.repeat(20)  # a short text, repeated: easy to learn
    student = tiny_gpt(6, n_embd=16, n_layer=1)
    before = distillation_loss(student(data[None, :16])[0], teacher(data[None, :16])[0], alpha=1.0).item()
    hist = train_student(student, data, teacher=teacher, alpha=1.0, steps=60, batch_size=8, lr=1e-2, progress=False)
    after = distillation_loss(student(data[None, :16])[0], teacher(data[None, :16])[0], alpha=1.0).item()
    assert hist.steps == 60 and len(hist.loss) == 60 and after < 0.5 * before
    pruned = tiny_gpt(7)
    masks = magnitude_prune(pruned, 0.5)
    train_student(pruned, data, steps=5, batch_size=4, masks=masks, progress=False)
    assert sparsity(pruned) == pytest.approx(0.5, abs=1e-3)
    short = train_student(tiny_gpt(8), data, steps=10_000, batch_size=4, max_seconds=0.2, progress=False)
    assert short.steps < 10_000
    with pytest.raises(ValueError, match="vocabulary"):
        train_student(tiny_gpt(9, vocab_size=40), data, teacher=teacher, steps=1)
