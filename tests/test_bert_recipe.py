"""What chapter 8's pre-training recipe adds to course_lib: pre-LN BERT blocks
(``BertConfig.norm_first``) against ``torch.nn.TransformerEncoderLayer``, the warm-up /
stable / decay schedule by hand, the measurements of a masked LM (``fill_blanks``,
``unigram_blanks``, ``neighbour_attention``) against direct computations, a GPT pre-trained
on the same windows (``pretrain_causal``, ``--objective causal``) and classified on its
last token (``GPTForSequenceClassification``). The shipped checkpoints:
tests/test_bert_shipped.py."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import bert_cli, bert_train
from course_lib.bert import BertConfig, BertForMaskedLM, BertLayer, BertModel, attention_maps
from course_lib.bert_cli import load_pretrained, save_pretrained
from course_lib.bert_train import (Specials, fill_blanks, finetune_classifier, neighbour_attention, predict_classes,
                                   pretrain_causal, pretrain_mlm, train_tokenizer, unigram_blanks)
from course_lib.data import load_split
from course_lib.gpt import GPT, GPTConfig, GPTForSequenceClassification
from course_lib.train import get_batch, warmup_stable_decay

pytestmark = pytest.mark.usefixtures("one_thread")

F32 = dict(atol=1e-5, rtol=1e-5)


def config(**kw):
    base = dict(vocab_size=31, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0)
    return BertConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_split("train")[0].text[:20_000], 300)


def torch_layer(layer: BertLayer, norm_first: bool) -> torch.nn.TransformerEncoderLayer:
    """torch.nn's encoder layer with ``layer``'s weights: an independent reference."""
    C, nh = layer.fc1.in_features, layer.attn.n_head
    ref = torch.nn.TransformerEncoderLayer(C, nh, dim_feedforward=layer.fc1.out_features, dropout=0.0,
                                           activation="gelu", layer_norm_eps=layer.ln_1.eps, batch_first=True,
                                           norm_first=norm_first).eval()
    a = layer.attn
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(torch.cat([a.query.weight, a.key.weight, a.value.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([a.query.bias, a.key.bias, a.value.bias]))
        ref.self_attn.out_proj.weight.copy_(a.proj.weight)
        ref.self_attn.out_proj.bias.copy_(a.proj.bias)
        for mine, theirs in [(layer.fc1, ref.linear1), (layer.fc2, ref.linear2), (layer.ln_1, ref.norm1),
                             (layer.ln_2, ref.norm2)]:
            theirs.weight.copy_(mine.weight)
            theirs.bias.copy_(mine.bias)
    return ref


@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_layer_equals_torch_transformer_encoder_layer(norm_first):
    torch.manual_seed(0)
    layer = BertLayer(config(norm_first=norm_first, layer_norm_eps=1e-5)).eval()
    for p in layer.parameters():  # LayerNorm gains and biases away from 1 and 0, so a swap would show
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[1, 5:] = False
    ours = layer(x, mask[:, None, None, :])  # (B, 1, 1, T): True where a key may be attended
    ref = torch_layer(layer, norm_first)
    theirs = ref(x, src_key_padding_mask=~mask)  # True where a key is padding
    torch.testing.assert_close(ours[mask], theirs[mask], **F32)  # padded queries are undefined in both
    other = torch_layer(layer, not norm_first)(x, src_key_padding_mask=~mask)
    assert (ours[mask] - other[mask]).abs().max() > 1e-2  # the two orders are different functions


def test_pre_ln_model_normalises_once_at_the_end():
    torch.manual_seed(0)
    post, pre = BertModel(config(), pooler=False), BertModel(config(norm_first=True), pooler=False)
    assert post.ln_f is None and isinstance(pre.ln_f, torch.nn.LayerNorm)
    assert set(pre.state_dict()) - set(post.state_dict()) == {"ln_f.weight", "ln_f.bias"}
    ids = torch.randint(31, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        x = pre.embeddings(ids)
        for layer in pre.layers:
            x = layer(x)
        torch.testing.assert_close(pre.eval()(ids)[0], pre.ln_f(x), **F32)
        h = pre(ids)[0]
    assert torch.allclose(h.mean(-1), torch.zeros(2, 9), atol=1e-5)  # LayerNorm's output, gain 1 and bias 0
    with pytest.raises(ValueError, match="norm_first must be True or False"):
        config(norm_first=1)


def test_from_hf_config_keeps_post_ln():
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertConfig(vocab_size=31, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=16)
    assert BertConfig.from_hf(hf).norm_first is False  # BERT is post-LN; the transformers tests hold for it


@pytest.mark.parametrize("norm_first", [False, True])
def test_attention_maps_are_the_weights_of_either_block(norm_first):
    torch.manual_seed(0)
    model = BertModel(config(n_layer=1, norm_first=norm_first)).eval()
    ids = torch.randint(31, (2, 7), generator=torch.Generator().manual_seed(3))
    maps = attention_maps(model, ids)  # (1, B, nh, T, T)
    layer = model.layers[0]
    with torch.no_grad():
        x = model.embeddings(ids)
        a = layer.ln_1(x) if norm_first else x  # what the attention reads
        v = layer.attn.value(a).view(2, 7, 2, 8).transpose(1, 2)  # (B, nh, T, hs)
        y = (maps[0] @ v).transpose(1, 2).reshape(2, 7, 16)
        torch.testing.assert_close(layer.attn.proj(y), layer.attn(a), **F32)


def test_warmup_stable_decay_by_hand():
    assert [warmup_stable_decay(s, 1, 4, 2) for s in range(6)] == [0.5, 1.0, 0.5, 0.0, 0.0, 0.0]
    lr = [warmup_stable_decay(s, 2, 10, 4, max_lr=2.0, min_lr=0.4) for s in range(11)]
    assert lr[:2] == pytest.approx([2 / 3, 4 / 3]) and lr[2:6] == [2.0] * 4  # warm-up, then held
    assert lr[6:] == pytest.approx([1.6, 1.2, 0.8, 0.4, 0.4])  # 4 decay steps, linear to min_lr, then min_lr
    assert warmup_stable_decay(3, 0, 5, 0) == 1.0  # no warm-up, no decay: constant
    for call, match in [(lambda: warmup_stable_decay(0, 3, 5, 3), "longer than total_steps"),
                        (lambda: warmup_stable_decay(0, 1, 5, -1), "decay_steps must be an integer"),
                        (lambda: warmup_stable_decay(0, 1, 5, 1, min_lr=2.0), "0 <= min_lr <= max_lr")]:
        with pytest.raises(ValueError, match=match):
            call()


def test_pretrain_mlm_follows_the_schedule_and_records_attention(tokenizer, monkeypatch):
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("train")[0].text[:6000]))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=300, block_size=16, n_layer=2, n_head=2, n_embd=16,
                                       norm_first=True))
    seen = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    history = pretrain_mlm(model, ids, ids, specials=sp, steps=10, batch_size=4, lr=1e-3, min_lr=1e-4,
                           warmup_steps=2, decay_steps=3, eval_every=5, eval_batches=1, device="cpu",
                           progress=False, mask_prob=0.3)
    expected = [1e-3 * warmup_stable_decay(s, 2, 10, 3, min_lr=0.1) for s in range(10)]
    assert seen == pytest.approx(expected)
    assert len(history.attention_prev) == len(history.attention_next) == len(history.steps) == 3
    assert len(history.mask_loss) == len(history.mask_accuracy) == 3
    loss, acc = bert_train.evaluate_mlm(model, ids, sp, 16, 4, 1, seed=1338, mask_only=True)
    assert (loss, acc) == (history.mask_loss[-1], history.mask_accuracy[-1])  # the [MASK] positions of step 10
    assert torch.tensor(history.attention_prev).shape == (3, 2, 2)  # evaluations, layers, heads
    peak = history.neighbour_peak()
    assert len(peak) == 3 and all(0 < p <= 1 for p in peak)


def test_neighbour_attention_equals_the_maps_and_is_uniform_for_a_blind_model(tokenizer):
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("train")[0].text[:3000]))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=300, block_size=12, n_layer=2, n_head=2, n_embd=16)).eval()
    prev, nxt = neighbour_attention(model, ids, sp, n_windows=3, seed=4)
    assert prev.shape == nxt.shape == (2, 2)
    x, _ = get_batch(ids, 10, 3, torch.Generator().manual_seed(4))  # the same windows
    x = torch.cat([torch.full((3, 1), sp.cls), x, torch.full((3, 1), sp.sep)], dim=1)  # (3, 12)
    maps = attention_maps(model, x)  # (L, B, nh, T, T)
    by_hand_prev = torch.stack([maps[:, :, :, t, t - 1] for t in range(1, 11)], -1).mean(dim=(1, 3))
    by_hand_next = torch.stack([maps[:, :, :, t, t + 1] for t in range(1, 11)], -1).mean(dim=(1, 3))
    torch.testing.assert_close(prev, by_hand_prev, **F32)
    torch.testing.assert_close(nxt, by_hand_next, **F32)
    with torch.no_grad():  # queries and keys of 0: every key gets the same weight, 1 / T
        for layer in model.bert.layers:
            layer.attn.query.weight.zero_()
            layer.attn.query.bias.zero_()
    prev, nxt = neighbour_attention(model, ids, sp, n_windows=3, seed=4)
    torch.testing.assert_close(prev, torch.full((2, 2), 1 / 12), **F32)
    torch.testing.assert_close(nxt, torch.full((2, 2), 1 / 12), **F32)
    with pytest.raises(ValueError, match="block_size must be >= 4"):
        neighbour_attention(model, ids, sp, block_size=3)


def test_fill_blanks_equals_one_blank_at_a_time(tokenizer):
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("valid")[0].text[:3000]))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    positions = [7, 30, 100, 101]
    for left, right in [(6, 5), (6, 0), (0, 4)]:
        losses, right_guesses = [], []
        for p in positions:
            x = torch.tensor([[sp.cls, *ids[p - left:p].tolist(), sp.mask, *ids[p + 1:p + 1 + right].tolist(), sp.sep]])
            with torch.no_grad():
                logits = model(x)[0][0, 1 + left]
            losses.append(F.cross_entropy(logits[None], ids[p:p + 1]).item())
            right_guesses.append(int(logits.argmax()) == int(ids[p]))
        loss, acc = fill_blanks(model, ids, positions, sp, left, right, batch_size=3)
        assert loss == pytest.approx(sum(losses) / 4, rel=1e-5) and acc == sum(right_guesses) / 4
    for kw, match in [(dict(left=10, right=10), "do not fit"), (dict(left=8, right=0, positions=[3]), "leave 8"),
                      (dict(left=-1, right=0), "left must be"), (dict(left=1, right=1, positions=[]), "no positions")]:
        with pytest.raises(ValueError, match=match):
            fill_blanks(model, ids, kw.pop("positions", positions), sp, **kw)


def test_unigram_blanks_by_hand():
    train_ids = torch.tensor([0, 0, 0, 1, 2])  # counts + 1 over V = 4: 4, 2, 2, 1 of 9
    loss, acc = unigram_blanks(train_ids, torch.tensor([3, 0, 1]), [1, 2], vocab_size=4)
    assert loss == pytest.approx(-(math.log(4 / 9) + math.log(2 / 9)) / 2)
    assert acc == 0.5  # the most frequent token, 0, is right at position 1 only


def test_gpt_classifier_reads_the_last_real_token():
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    model = GPTForSequenceClassification(gpt, 3).eval()
    ids = torch.randint(30, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        logits, _ = model(ids, attention_mask=mask)
        alone, _ = model(ids[1:, :6])  # row 1 without its padding
        torch.testing.assert_close(logits[1], alone[0], **F32)
        h = {}
        handle = gpt.transformer.ln_f.register_forward_hook(lambda m, i, o: h.setdefault("ln_f", o))
        gpt(ids[:1])  # the GPT's own forward: ln_f of every position
        handle.remove()
        torch.testing.assert_close(logits[0], model.classifier(h["ln_f"][0, -1]), **F32)
        _, loss = model(ids, attention_mask=mask, labels=torch.tensor([0, 2]))
        torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([0, 2])), **F32)
    for kw, match in [(dict(attention_mask=torch.zeros(2, 10)), "at least one token"),
                      (dict(token_type_ids=torch.zeros(2, 10)), "no segments"),
                      (dict(attention_mask=torch.ones(2, 9)), "attention_mask of shape")]:
        with pytest.raises(ValueError, match=match):
            model(ids, **kw)
    with pytest.raises(TypeError, match="expected a GPT"):
        GPTForSequenceClassification(torch.nn.Linear(2, 2), 3)


def test_gpt_classifier_learns_a_separable_task_with_the_same_loop():
    """Class 1 iff token 5 occurs, anywhere: the last token has read them all."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 20, (256, 10), generator=g)
    labels = torch.randint(2, (256,), generator=g)
    ids[labels == 1, torch.randint(0, 7, (int(labels.sum()),), generator=g)] = 5
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0
    ids[::3, 7:] = 0
    labels = ((ids * mask == 5).any(dim=1)).long()
    torch.manual_seed(0)
    model = GPTForSequenceClassification(GPT(GPTConfig(vocab_size=20, block_size=10, n_layer=1, n_head=2,
                                                       n_embd=32)), 2)
    history = finetune_classifier(model, (ids[:192], mask[:192], labels[:192]), (ids[192:], mask[192:], labels[192:]),
                                  steps=150, batch_size=32, lr=3e-3, eval_every=50, device="cpu", progress=False)
    assert history.valid_accuracy[-1] >= 0.9, history.valid_accuracy
    assert (predict_classes(model, ids[192:], mask[192:]) == labels[192:]).float().mean() == history.valid_accuracy[-1]


def test_pretrain_causal_lowers_the_loss_and_saves_a_gpt(tokenizer, tmp_path):
    ids = torch.tensor(tokenizer.encode(load_split("train")[0].text[:6000]))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=32))
    history = pretrain_causal(gpt, ids, ids, steps=40, batch_size=16, lr=3e-3, decay_steps=10, eval_every=20,
                              eval_batches=3, device="cpu", progress=False)
    assert history.steps == [0, 20, 40] and history.valid_loss[-1] < history.valid_loss[0] - 0.5
    save_pretrained(tmp_path / "gpt", gpt.eval(), tokenizer, extra={"steps": history.steps})
    loaded, tok = load_pretrained(tmp_path / "gpt")
    assert isinstance(loaded, GPT) and loaded.lm_head.weight is loaded.transformer.wte.weight
    x = ids[:12][None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], gpt(x)[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match="expected a GPT"):
        pretrain_causal(BertForMaskedLM(config()), ids, steps=1)


def test_command_line_pretrains_either_objective_with_the_same_windows(tmp_path, capsys):
    common = ["--fast", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size",
              "4", "--max-steps", "4", "--decay-steps", "2", "--eval-batches", "1", "--quiet", "--device", "cpu"]
    bert_cli.main(["pretrain", "--out", str(tmp_path / "mlm"), "--norm-first", "--mask-prob", "0.3", *common])
    assert "validation MLM loss" in capsys.readouterr().out
    bert_cli.main(["pretrain", "--out", str(tmp_path / "gpt"), "--objective", "causal", *common])
    assert "validation next-token loss" in capsys.readouterr().out
    mlm, tok_m = load_pretrained(tmp_path / "mlm")
    gpt, tok_g = load_pretrained(tmp_path / "gpt")
    assert isinstance(mlm, BertForMaskedLM) and mlm.config.norm_first and isinstance(gpt, GPT)
    assert tok_m.merges == tok_g.merges  # one tokenizer for both
    rec_m = json.loads((tmp_path / "mlm" / "config.json").read_text())["extra"]
    rec_g = json.loads((tmp_path / "gpt" / "config.json").read_text())["extra"]
    assert len(rec_m["mask_loss"]) == len(rec_m["steps"])
    assert rec_m["settings"]["mask_prob"] == 0.3 and rec_m["settings"]["decay_steps"] == 2
    assert rec_g["settings"]["objective"] == "causal" and "valid_accuracy" not in rec_g
    assert len(rec_m["attention_prev"]) == len(rec_m["steps"])
    assert (gpt.config.n_layer, gpt.config.n_embd, gpt.config.block_size) == (1, 16, 16)


def test_evaluate_mlm_mask_only_counts_the_positions_showing_mask(tokenizer):
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("valid")[0].text[:4000]))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    loss, acc = bert_train.evaluate_mlm(model, ids, sp, 16, 8, 2, seed=5, mask_only=True)
    g = torch.Generator().manual_seed(5)
    total, right, n = 0.0, 0, 0
    for _ in range(2):
        inputs, labels = bert_train.mlm_batch(ids, 16, 8, sp, 300, g)
        with torch.no_grad():
            logits = model(inputs)[0]
        at = (labels != -1) & (inputs == sp.mask)
        total += F.cross_entropy(logits[at], labels[at], reduction="sum").item()
        right += int((logits[at].argmax(-1) == labels[at]).sum())
        n += int(at.sum())
    assert n > 0 and loss == pytest.approx(total / n, rel=1e-6) and acc == right / n
    assert (loss, acc) != bert_train.evaluate_mlm(model, ids, sp, 16, 8, 2, seed=5)  # all chosen positions differ


def test_schedule_steps_resolves_the_defaults():
    base = dict(max_steps=2500, warmup=None, decay_steps=None)
    assert bert_cli.schedule_steps({**base, "schedule": "wsd"}) == (100, 500)
    assert bert_cli.schedule_steps({**base, "schedule": "wsd", "warmup": 7, "decay_steps": 9}) == (7, 9)
    assert bert_cli.schedule_steps({**base, "schedule": "cosine"}) == (100, None)
    assert bert_cli.schedule_steps({**base, "max_steps": 50}) == (5, None)  # an older record: a cosine
    assert bert_cli.schedule_steps({**base, "decay_steps": 40}) == (100, 40)  # ... unless it gave decay steps
