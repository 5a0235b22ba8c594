"""course_lib.bert, course_lib.genre, course_lib.bert_train and course_lib.bert_cli.

BERT against transformers' BertModel, BertForMaskedLM and BertForSequenceClassification
with the same weights (small random configs, eval mode, padding masks, segments, float32
and float64, the losses); mask_tokens' rates measured on large samples against the 15% /
80-10-10 rule, special tokens never chosen; the MLM loss by hand; the genre task split by
play; Naive Bayes by hand and against a direct count; the classification scores by hand (and
against scikit-learn where installed); the attention maps against transformers'
output_attentions; pre-training and fine-tuning that learn, files that load back, the
command line; bad input. Nothing is downloaded. The shipped checkpoint:
tests/test_bert_shipped.py."""

import doctest
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: every reference model is built here

from course_lib import bert, bert_cli, bert_train, genre  # noqa: E402
from course_lib.bert import (BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel,  # noqa: E402
                             mask_tokens, mlm_loss)
from course_lib.bert_cli import load_pretrained, save_pretrained  # noqa: E402
from course_lib.bert_train import (SPECIAL_TOKENS, Specials, encode_texts, evaluate_mlm, finetune_classifier,  # noqa: E402
                                   mlm_batch, predict_classes, pretrain_mlm, train_tokenizer)
from course_lib.data import load_split  # noqa: E402
from course_lib.genre import GENRES, NaiveBayes, cut_passages, dialogue, genre_passages, play_genre, scores  # noqa: E402
from course_lib.tokenizers import BPETokenizer  # noqa: E402
from course_lib.train import CHECKPOINT_NAME, History, load_checkpoint  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

F32 = dict(atol=1e-5, rtol=1e-5)
F64 = dict(atol=1e-10, rtol=1e-10)


def config(**kw):
    """A tiny BERT: n_embd = n_head * head size = 2 * 8, no dropout."""
    base = dict(vocab_size=31, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0, attn_dropout=0.0)
    return BertConfig(**{**base, **kw})


def randint(high, shape, seed=0):
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def padding_mask(B, T, lengths):
    """(B, T) ones on the first lengths[b] positions of row b, zeros after."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("module", [bert, genre, bert_train, bert_cli])
def test_module_examples(module):
    assert doctest.testmod(module).failed == 0


# ---------------------------------------------------------------------------- the reference: transformers' BERT
def hf_config(**kw):
    transformers = pytest.importorskip("transformers")
    settings = dict(vocab_size=53, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
                    max_position_embeddings=20, type_vocab_size=3, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return transformers.BertConfig(**{**settings, **kw})


def hf_model(name, dtype=torch.float32, seed=0, **kw):
    """A random transformers BERT (``name`` its class) with every parameter moved off its
    initialisation, so that biases, LayerNorm gains and the pooler count."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    extra = kw.pop("model_kwargs", {})
    model = getattr(transformers, name)(hf_config(**kw), **extra).eval()
    with torch.no_grad():
        for p in model.parameters():  # a tied parameter once
            p.add_(0.3 * torch.randn_like(p))
    return model.to(dtype)


def inputs(B=3, T=20, V=53, types=3, seed=0):
    """Ids, segments and a padding mask: row 0 full, row 1 padded after 13 tokens, row 2 after 4."""
    ids = randint(V, (B, T), seed)
    token_types = randint(types, (B, T), seed + 1)
    mask = padding_mask(B, T, [T, 13, 4][:B])
    return ids, token_types, mask


@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_bert_model_equals_transformers(dtype, tol, hidden_act):
    hf = hf_model("BertModel", dtype, hidden_act=hidden_act)
    ours = BertModel.from_hf(hf).eval()
    assert ours.config == BertConfig(vocab_size=53, block_size=20, n_layer=2, n_head=3, n_embd=24, n_inner=40,
                                     type_vocab_size=3, dropout=0.0, attn_dropout=0.0,
                                     activation={"gelu_new": "gelu_tanh"}.get(hidden_act, hidden_act))
    ids, types, mask = inputs()
    with torch.no_grad():
        hidden, pooled = ours(ids, token_type_ids=types, attention_mask=mask)
        expected = hf(ids, token_type_ids=types, attention_mask=mask)
    assert hidden.shape == (3, 20, 24) and hidden.dtype == dtype and pooled.shape == (3, 24)
    torch.testing.assert_close(hidden, expected.last_hidden_state, **tol)
    torch.testing.assert_close(pooled, expected.pooler_output, **tol)


def test_bert_model_defaults_equal_transformers_defaults():
    """No segments and no mask: segment 0 everywhere and every key visible, as transformers."""
    hf = hf_model("BertModel")
    ours = BertModel.from_hf(hf)
    ids = randint(53, (2, 11), seed=3)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).last_hidden_state, **F32)
        torch.testing.assert_close(ours(ids)[0], ours(ids, torch.zeros_like(ids), torch.ones_like(ids))[0])


def test_bert_model_without_pooler_and_from_a_model_with_a_head():
    hf = hf_model("BertModel", model_kwargs=dict(add_pooling_layer=False))
    ours = BertModel.from_hf(hf)
    assert ours.pooler is None
    ids, types, mask = inputs(seed=4)
    with torch.no_grad():
        hidden, pooled = ours(ids, types, mask)
        torch.testing.assert_close(hidden, hf(ids, token_type_ids=types, attention_mask=mask).last_hidden_state, **F32)
    assert pooled is None
    mlm = hf_model("BertForMaskedLM")  # its encoder .bert
    with torch.no_grad():
        torch.testing.assert_close(BertModel.from_hf(mlm)(ids, types, mask)[0],
                                   mlm.bert(ids, token_type_ids=types, attention_mask=mask).last_hidden_state, **F32)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, F32), (torch.float64, F64)])
def test_masked_lm_equals_transformers(dtype, tol):
    hf = hf_model("BertForMaskedLM", dtype)
    ours = BertForMaskedLM.from_hf(hf)
    assert ours.head.decoder.weight is ours.bert.embeddings.tok.weight and ours.bert.pooler is None
    ids, types, mask = inputs(seed=5)
    labels = torch.full_like(ids, -100)
    labels[0, [1, 5, 17]] = ids[0, [1, 5, 17]]
    labels[1, [0, 12]] = ids[1, [0, 12]]
    labels[2, 3] = 7
    with torch.no_grad():
        logits, loss = ours(ids, token_type_ids=types, attention_mask=mask, labels=labels.masked_fill(labels < 0, -1))
        expected = hf(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert logits.shape == (3, 20, 53) and logits.dtype == dtype
    torch.testing.assert_close(logits, expected.logits, **tol)
    torch.testing.assert_close(loss, expected.loss, **tol)


@pytest.mark.parametrize("num_labels", [2, 5])
def test_sequence_classification_equals_transformers(num_labels):
    hf = hf_model("BertForSequenceClassification", num_labels=num_labels)
    ours = BertForSequenceClassification.from_hf(hf)
    assert ours.n_classes == num_labels
    ids, types, mask = inputs(seed=6)
    labels = torch.tensor([0, num_labels - 1, 1])
    with torch.no_grad():
        logits, loss = ours(ids, token_type_ids=types, attention_mask=mask, labels=labels)
        expected = hf(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert logits.shape == (3, num_labels)
    torch.testing.assert_close(logits, expected.logits, **F32)
    torch.testing.assert_close(loss, expected.loss, **F32)


def test_from_hf_state_dict_with_config():
    hf = hf_model("BertForMaskedLM")
    config_ = BertConfig.from_hf(hf.config)
    ours = BertForMaskedLM.from_hf(hf.state_dict(), config=config_).eval()
    ids, types, mask = inputs(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, types, mask)[0], hf(ids, token_type_ids=types, attention_mask=mask).logits,
                                   **F32)
    with pytest.raises(ValueError, match="pass config=BertConfig"):
        BertForMaskedLM.from_hf(hf.state_dict())
    with pytest.raises(ValueError, match="differs from the model's own"):
        BertForMaskedLM.from_hf(hf, config=config(vocab_size=53))


def test_from_hf_errors():
    transformers = pytest.importorskip("transformers")
    untied = hf_model("BertForMaskedLM", tie_word_embeddings=False)
    with torch.no_grad():
        untied.cls.predictions.decoder.weight.add_(1.0)
    with pytest.raises(ValueError, match="ties them"):
        BertForMaskedLM.from_hf(untied)
    decoder = hf_config(is_decoder=True)
    with pytest.raises(ValueError, match="is_decoder False"):
        BertConfig.from_hf(decoder)
    relative = hf_config()
    relative.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_hf(relative)
    with pytest.raises(ValueError, match="hidden_act"):
        BertConfig.from_hf(hf_config(hidden_act="silu"))
    with pytest.raises(TypeError, match="BertConfig"):
        BertConfig.from_hf(transformers.GPT2Config())
    with pytest.raises(TypeError, match="expected a transformers BertForMaskedLM"):
        BertForMaskedLM.from_hf(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="missing keys"):
        BertModel.from_hf({"embeddings.word_embeddings.weight": torch.zeros(31, 16)}, config=config())
    with pytest.raises(ValueError, match="expected shape"):
        BertModel.from_hf(BertModel(config(n_inner=32)).state_dict(), config=config())


# ---------------------------------------------------------------------------- our model's own properties
def test_padding_changes_nothing_at_the_real_positions():
    torch.manual_seed(0)
    model = BertForSequenceClassification(config(), n_classes=3).eval()
    ids = randint(31, (1, 9), seed=1)
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], dim=1)  # (1, 14)
    with torch.no_grad():
        alone = model.bert(ids)[0]
        hidden = model.bert(padded, attention_mask=padding_mask(1, 14, [9]))[0]
        torch.testing.assert_close(hidden[:, :9], alone, **F32)
        torch.testing.assert_close(model(padded, attention_mask=padding_mask(1, 14, [9]))[0], model(ids)[0], **F32)


def test_every_position_sees_both_sides():
    """Bidirectional: changing the last token changes the first position's vector (unlike GPT)."""
    torch.manual_seed(0)
    model = BertModel(config()).eval()
    ids = randint(31, (1, 8), seed=2)
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % 31
    with torch.no_grad():
        assert not torch.allclose(model(ids)[0][:, 0], model(other)[0][:, 0])


@pytest.mark.parametrize("name", ["BertModel", "BertForMaskedLM", "BertForSequenceClassification"])
def test_attention_maps_equal_transformers_output_attentions(name):
    hf = hf_model(name)
    kind = {"BertModel": BertModel, "BertForMaskedLM": BertForMaskedLM,
            "BertForSequenceClassification": BertForSequenceClassification}[name]
    ours = kind.from_hf(hf).eval()
    ids, types, mask = inputs(seed=6)
    maps = bert.attention_maps(ours, ids, types, mask)
    with torch.no_grad():
        out = hf(ids, token_type_ids=types, attention_mask=mask, output_attentions=True)
    assert maps.shape == (2, 3, 3, 20, 20) and maps.dtype == torch.float32 and not maps.requires_grad
    torch.testing.assert_close(maps, torch.stack(out.attentions), **F32)
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(2, 3, 3, 20), **F32)  # each row a distribution
    assert (maps[:, 1, :, :, 13:] == 0).all() and (maps[:, 2, :, :, 4:] == 0).all()  # no weight on padding


def test_attention_maps_are_the_weights_the_forward_pass_uses():
    """softmax(q k^T / sqrt(hs)) v through the output projection gives the layer's attention output."""
    torch.manual_seed(0)
    model = BertModel(config(n_layer=1)).eval()
    ids = randint(31, (2, 7), seed=3)
    maps = bert.attention_maps(model, ids)  # (1, B, nh, T, T)
    with torch.no_grad():
        x = model.embeddings(ids)  # (B, T, C)
        attn = model.layers[0].attn
        v = attn.value(x).view(2, 7, 2, 8).transpose(1, 2)  # (B, nh, T, hs)
        y = (maps[0] @ v).transpose(1, 2).reshape(2, 7, 16)  # (B, nh, T, hs) -> (B, T, C)
        torch.testing.assert_close(attn.proj(y), attn(x), **F32)
    with pytest.raises(TypeError, match="expected a BertModel"):
        bert.attention_maps(torch.nn.Linear(2, 2), ids)
    with pytest.raises(ValueError, match="block_size=16"):
        bert.attention_maps(model, randint(31, (1, 17)))


def test_segments_and_positions_matter():
    torch.manual_seed(0)
    emb = BertModel(config()).embeddings.eval()
    ids = torch.tensor([[3, 3, 3]])
    with torch.no_grad():
        x = emb(ids)
        assert not torch.allclose(x[0, 0], x[0, 1])  # the same token at two positions
        assert not torch.allclose(emb(ids, torch.tensor([[0, 0, 1]]))[0, 2], x[0, 2])  # segment B
        by_hand = F.layer_norm(emb.tok.weight[ids] + emb.pos.weight[:3] + emb.seg.weight[0], (16,), emb.ln.weight,
                               emb.ln.bias, 1e-12)
        torch.testing.assert_close(x, by_hand)


def test_initialisation_and_tying():
    torch.manual_seed(0)
    model = BertForMaskedLM(config(n_embd=64, n_head=4, vocab_size=500, block_size=64))
    assert model.head.decoder.weight is model.bert.embeddings.tok.weight
    assert abs(model.bert.layers[0].fc1.weight.std().item() - 0.02) < 0.002
    assert abs(model.bert.embeddings.tok.weight.std().item() - 0.02) < 0.002
    assert model.bert.layers[0].fc1.bias.abs().max() == 0 and torch.equal(model.bert.layers[1].ln_2.weight,
                                                                           torch.ones(64))
    n_tied = sum(p.numel() for p in model.parameters())
    assert model.num_parameters() == n_tied < sum(v.numel() for v in model.state_dict().values())


def test_masked_loss_equals_the_forward_loss():
    torch.manual_seed(0)
    model = BertForMaskedLM(config()).eval()
    ids = randint(31, (3, 12), seed=3)
    labels = torch.where(randint(100, (3, 12), seed=4) < 30, ids, -1)
    with torch.no_grad():
        torch.testing.assert_close(model.masked_loss(ids, labels), model(ids, labels=labels)[1], **F32)
    none = torch.full_like(ids, -1)
    loss = model.masked_loss(ids, none)
    loss.backward()
    assert loss.item() == 0.0 and model(ids, labels=none)[1].item() == 0.0  # nothing to predict: 0, not nan
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in model.parameters())


def test_mlm_loss_by_hand_and_only_over_the_chosen_positions():
    logits = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.5, 0.5, 3.0]]])  # (1, 3, 3)
    labels = torch.tensor([[-1, 2, 0]])
    by_hand = (-torch.log_softmax(torch.tensor([1.0, 2.0, 3.0]), 0)[2]
               - torch.log_softmax(torch.tensor([0.5, 0.5, 3.0]), 0)[0]) / 2  # mean over the 2 chosen, not 3
    torch.testing.assert_close(mlm_loss(logits, labels), by_hand)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 10, 7, generator=g)
    labels = torch.where(torch.rand(4, 10, generator=g) < 0.2, torch.randint(7, (4, 10), generator=g), -1)
    expected = F.cross_entropy(logits.view(-1, 7), labels.view(-1), ignore_index=-1)
    torch.testing.assert_close(mlm_loss(logits, labels), expected)


@pytest.mark.parametrize("call, error, match", [
    (lambda: mlm_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)), ValueError, "shape \\(B, T, V\\)"),
    (lambda: mlm_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, dtype=torch.long)), ValueError, "labels of shape"),
    (lambda: mlm_loss(torch.zeros(1, 2, 3), torch.tensor([[-100, 1]])), ValueError, "-100 is -1 here"),
    (lambda: mlm_loss(torch.zeros(1, 2, 3), torch.tensor([[0.0, 1.0]])), TypeError, "integer"),
])
def test_mlm_loss_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("kw, match", [
    (dict(n_embd=15), "not divisible by n_head"),
    (dict(n_layer=0), "n_layer must be an integer > 0"),
    (dict(dropout=1.0), "dropout must be a probability"),
    (dict(activation="swish"), "activation must be one of"),
    (dict(layer_norm_eps=0), "layer_norm_eps"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        config(**kw)


def test_forward_errors():
    torch.manual_seed(0)
    model = BertForSequenceClassification(config(), n_classes=3)
    ids = randint(31, (2, 5))
    cases = [
        (lambda: model(randint(31, (2, 17))), ValueError, "T <= block_size=16"),
        (lambda: model(ids.float()), TypeError, "integer token ids"),
        (lambda: model(ids + 31), ValueError, "ids from"),
        (lambda: model(ids[0]), ValueError, "shape \\(B, T\\)"),
        (lambda: model(ids, token_type_ids=torch.full_like(ids, 2)), ValueError, "token_type_ids hold segment ids"),
        (lambda: model(ids, token_type_ids=ids[:, :3]), ValueError, "token_type_ids of shape"),
        (lambda: model(ids, attention_mask=torch.full_like(ids, 2)), ValueError, "1 for a real token"),
        (lambda: model(ids, attention_mask=padding_mask(2, 5, [5, 0])), ValueError, "all 0"),
        (lambda: model(ids, attention_mask=torch.ones(2, 4)), ValueError, "attention_mask of shape"),
        (lambda: model(ids, labels=torch.tensor([0, 3])), ValueError, "class ids 0..2"),
        (lambda: model(ids, labels=torch.tensor([[0, 1]])), ValueError, "labels of shape \\(B,\\)"),
        (lambda: BertForSequenceClassification(config(), n_classes=0), ValueError, "n_classes"),
        (lambda: BertModel(config(), pooler=1), ValueError, "pooler must be True or False"),
        (lambda: BertModel("config"), TypeError, "expected a BertConfig"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_from_encoder_copies_the_pretrained_weights():
    torch.manual_seed(0)
    mlm = BertForMaskedLM(config())
    classifier = BertForSequenceClassification.from_encoder(mlm, n_classes=4).eval()
    ids = randint(31, (2, 9), seed=5)
    with torch.no_grad():
        torch.testing.assert_close(classifier.bert(ids)[0], mlm.eval().bert(ids)[0])
    assert classifier.bert.embeddings.tok.weight is not mlm.bert.embeddings.tok.weight  # a copy, not shared
    with pytest.raises(TypeError, match="BertForMaskedLM or a BertModel"):
        BertForSequenceClassification.from_encoder(torch.nn.Linear(2, 2), 3)


def test_pair_inputs_by_hand_and_equal_bert_tokenizer(tmp_path):
    assert [t.tolist() for t in bert.pair_inputs([7, 8], [9], 1, 2)] == [[1, 7, 8, 2, 9, 2], [0, 0, 0, 0, 1, 1]]
    assert [t.tolist() for t in bert.pair_inputs(torch.tensor([7, 8]), None, 1, 2)] == [[1, 7, 8, 2], [0, 0, 0, 0]]
    assert [t.tolist() for t in bert.pair_inputs([], [], 1, 2)] == [[1, 2, 2], [0, 0, 1]]
    with pytest.raises(ValueError, match="1-D tensor of token ids"):
        bert.pair_inputs([[7]], None, 1, 2)
    transformers = pytest.importorskip("transformers")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "to", "be", "or", "not", "that"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    a, b = "to be or not", "to be that"
    expected = tok(a, b)
    ids, types = bert.pair_inputs([words.index(w) for w in a.split()], [words.index(w) for w in b.split()],
                                  words.index("[CLS]"), words.index("[SEP]"))
    assert ids.tolist() == expected["input_ids"] and types.tolist() == expected["token_type_ids"]


# ---------------------------------------------------------------------------- masking
SPECIAL = (0, 1, 2, 3)  # [PAD] [CLS] [SEP] [MASK] in these tests; V = 40, so 36 ordinary tokens
V, MASK = 40, 3


def masked_sample(mask_prob=0.15, seed=0, B=400, T=128):
    """A large batch of ordinary tokens with [CLS] first, [SEP] last and padding in half the rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (B, T), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    ids[::2, 100:] = 0  # padding
    inputs, labels = mask_tokens(ids, V, MASK, SPECIAL, mask_prob, generator=g)
    return ids, inputs, labels


def test_mask_tokens_rates_follow_the_15_80_10_10_rule():
    ids, inputs, labels = masked_sample()
    eligible = ~torch.isin(ids, torch.tensor(SPECIAL))
    chosen = labels != -1
    n, k = int(eligible.sum()), int(chosen.sum())
    sigma = math.sqrt(0.15 * 0.85 / n)
    assert abs(k / n - 0.15) < 5 * sigma, k / n
    as_mask = (inputs == MASK) & chosen
    kept = (inputs == ids) & chosen
    changed = chosen & ~as_mask & ~kept  # replaced by another token
    p_same = 0.1 / 36  # a random replacement that draws the original token
    for count, p in [(as_mask, 0.8), (changed, 0.1 - p_same), (kept, 0.1 + p_same)]:
        share = int(count.sum()) / k
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / k), (share, p)


def test_mask_tokens_never_chooses_special_tokens_and_labels_the_chosen():
    ids, inputs, labels = masked_sample(mask_prob=1.0, seed=1)  # every ordinary position chosen
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert torch.equal(labels == -1, special)  # exactly the special positions are left out
    assert torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[~special], ids[~special])
    _, inputs, labels = masked_sample(seed=2)
    unchosen = labels == -1
    assert torch.equal(inputs[unchosen], masked_sample(seed=2)[0][unchosen])  # untouched where not chosen
    assert not torch.isin(inputs[~unchosen], torch.tensor([0, 1, 2])).any()  # replacements are never special


def test_mask_tokens_random_replacements_are_uniform_over_the_ordinary_tokens():
    g = torch.Generator().manual_seed(3)
    ids = torch.full((200, 200), 10)
    inputs, labels = mask_tokens(ids, V, MASK, SPECIAL, mask_prob=1.0, mask_frac=0.0, random_frac=1.0, generator=g)
    counts = Counter(inputs.flatten().tolist())
    assert set(counts) == set(range(4, V))  # every ordinary token, no special one
    expected = ids.numel() / 36
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 35 + 5 * math.sqrt(2 * 35)  # 35 degrees of freedom, 5 standard deviations


def test_mask_tokens_uses_its_generator_and_keeps_shape_and_device():
    ids = randint(V, (3, 50), seed=4)
    a = mask_tokens(ids, V, MASK, SPECIAL, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)  # the global generator plays no part
    b = mask_tokens(ids, V, MASK, SPECIAL, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == a[1].shape == (3, 50) and a[0].dtype == a[1].dtype == torch.int64
    one = mask_tokens(ids[0], V, MASK, SPECIAL, mask_prob=0.0)  # 1-D works; probability 0 chooses nothing
    assert torch.equal(one[0], ids[0]) and (one[1] == -1).all()
    assert torch.equal(ids, randint(V, (3, 50), seed=4))  # the input is not modified
    inputs, labels = mask_tokens(ids, V, MASK, SPECIAL, mask_prob=1.0, mask_frac=1.0, random_frac=0.0)
    special = torch.isin(ids, torch.tensor(SPECIAL))
    assert (inputs[~special] == MASK).all()


@pytest.mark.parametrize("call, error, match", [
    (lambda: mask_tokens([[4, 5]], V, MASK), TypeError, "torch tensor"),
    (lambda: mask_tokens(torch.tensor([[4.0]]), V, MASK), TypeError, "integer token ids"),
    (lambda: mask_tokens(torch.tensor([[40]]), V, MASK), ValueError, "ids 0..39"),
    (lambda: mask_tokens(torch.tensor([[4]]), V, 40), ValueError, "mask_id 40"),
    (lambda: mask_tokens(torch.tensor([[4]]), V, MASK, special_ids=[-1]), ValueError, "special id"),
    (lambda: mask_tokens(torch.tensor([[4]]), V, MASK, mask_prob=1.5), ValueError, "mask_prob"),
    (lambda: mask_tokens(torch.tensor([[4]]), V, MASK, mask_frac=0.95), ValueError, "mask_frac \\+ random_frac"),
    (lambda: mask_tokens(torch.tensor([[0]]), 2, 0, special_ids=[1]), ValueError, "every id is special"),
])
def test_mask_tokens_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---------------------------------------------------------------------------- tokenizer, batches, files
@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_split("train")[0].text[:20_000], 300)


def test_tokenizer_has_bert_special_tokens_that_are_never_split(tokenizer, tmp_path):
    sp = Specials.of(tokenizer)
    assert sp.ids == (296, 297, 298, 299) and tokenizer.vocab_size == 300  # after the merges, in this order
    ids = tokenizer.encode("[CLS] to be[MASK]or not [SEP][PAD]")
    assert ids[0] == sp.cls and sp.mask in ids and ids[-2:] == [sp.sep, sp.pad]
    assert tokenizer.decode(ids) == "[CLS] to be[MASK]or not [SEP][PAD]"
    tokenizer.save(tmp_path / "tok.json")
    assert Specials.of(BPETokenizer.load(tmp_path / "tok.json")) == sp
    with pytest.raises(ValueError, match="lacks BERT's special tokens"):
        Specials.of(BPETokenizer.train("to be or not", 260))


def test_mlm_batch_wraps_windows_in_cls_and_sep(tokenizer):
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("train")[0].text[:5000]))
    inputs, labels = mlm_batch(ids, 32, 8, sp, 300, torch.Generator().manual_seed(0))
    assert inputs.shape == labels.shape == (8, 32)
    assert (inputs[:, 0] == sp.cls).all() and (inputs[:, -1] == sp.sep).all()
    assert (labels[:, [0, -1]] == -1).all() and (labels != -1).any()
    assert not torch.isin(inputs[:, 1:-1], torch.tensor([sp.cls, sp.sep, sp.pad])).any()


def test_encode_texts_pads_and_cuts(tokenizer):
    sp = Specials.of(tokenizer)
    ids, mask = encode_texts(["to be", "or not to be, that is the question"], tokenizer, block_size=8)
    n0 = len(tokenizer.encode("to be"))
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0, :n0 + 2].tolist() == [sp.cls] + tokenizer.encode("to be") + [sp.sep]
    assert (ids[0, n0 + 2:] == sp.pad).all() and mask[0].tolist() == [1] * (n0 + 2) + [0] * (6 - n0)
    assert ids[1].tolist() == [sp.cls] + tokenizer.encode("or not to be, that is the question")[:6] + [sp.sep]
    with pytest.raises(TypeError, match="one str"):
        encode_texts("to be", tokenizer, 8)
    with pytest.raises(ValueError, match="block_size"):
        encode_texts(["to be"], tokenizer, 2)


def test_pretraining_lowers_the_mlm_loss(tokenizer):
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("train")[0].text[:6000]))
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=32))
    before = evaluate_mlm(model, ids, sp, n_batches=3, seed=5)
    assert before == evaluate_mlm(model, ids, sp, n_batches=3, seed=5)  # fixed windows and masks
    history = pretrain_mlm(model, ids, ids, specials=sp, steps=40, batch_size=16, lr=3e-3, eval_every=20,
                           eval_batches=3, device="cpu", progress=False)
    assert history.steps == [0, 20, 40] and len(history.valid_accuracy) == 3
    assert history.valid_loss[-1] < history.valid_loss[0] - 0.5, history.valid_loss
    assert 0 < history.tokens_seen < 40 * 16 * 32  # masked positions only


def test_finetuning_learns_a_separable_task():
    """Class 1 iff token 5 occurs: a tiny BERT learns it from [CLS]."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 20, (256, 10), generator=g)
    labels = torch.randint(2, (256,), generator=g)
    ids[labels == 1, torch.randint(1, 9, (int(labels.sum()),), generator=g)] = 5
    ids[:, 0] = 1
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0  # some padding
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=20, block_size=10, n_layer=1, n_head=2, n_embd=32,
                                                     dropout=0.0, attn_dropout=0.0), n_classes=2)
    ids[::3, 7:] = 0
    labels = ((ids == 5).any(dim=1)).long()  # the label of what is left after padding
    history = finetune_classifier(model, (ids[:192], mask[:192], labels[:192]), (ids[192:], mask[192:], labels[192:]),
                                  steps=150, batch_size=32, lr=3e-3, eval_every=50, device="cpu", progress=False)
    assert history.steps == [0, 50, 100, 150]
    assert history.valid_accuracy[-1] >= 0.9 and history.valid_macro_f1[-1] >= 0.9, history.valid_accuracy
    predicted = predict_classes(model, ids[192:], mask[192:], batch_size=16)
    assert predicted.dtype == torch.int64 and predicted.shape == (64,)
    assert (predicted == labels[192:]).float().mean().item() == history.valid_accuracy[-1]
    with pytest.raises(TypeError, match="tuple \\(input_ids"):
        finetune_classifier(model, ids, steps=1)


@pytest.mark.parametrize("use_safetensors", [True, False])
def test_save_and_load_pretrained(tokenizer, tmp_path, monkeypatch, use_safetensors):
    if use_safetensors:
        pytest.importorskip("safetensors")
    else:
        monkeypatch.setattr(bert_cli, "_safetensors", lambda: None)  # the torch.save fallback
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    path = save_pretrained(tmp_path / "mlm", mlm, tokenizer, extra={"note": "test"})
    assert path.name == ("model.safetensors" if use_safetensors else "model.pt")
    if not use_safetensors:  # a plain dict of tensors, readable with weights_only=True, the tied matrix once
        state = torch.load(path, weights_only=True)
        assert "head.decoder.weight" not in state and "bert.embeddings.tok.weight" in state
    loaded, tok = load_pretrained(tmp_path / "mlm")
    assert not loaded.training and loaded.head.decoder.weight is loaded.bert.embeddings.tok.weight
    assert tok.merges == tokenizer.merges and Specials.of(tok) == Specials.of(tokenizer)
    ids = randint(300, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], mlm(ids)[0], rtol=0, atol=0)
    assert json.loads((tmp_path / "mlm" / "config.json").read_text())["extra"] == {"note": "test"}
    classifier = BertForSequenceClassification.from_encoder(mlm, 3).eval()
    save_pretrained(tmp_path / "cls", classifier, tokenizer)
    loaded, _ = load_pretrained(tmp_path / "cls")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], classifier(ids)[0], rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="not a folder written by save_pretrained"):
        load_pretrained(tmp_path / "nothing")


def test_command_line_pretrains_and_saves(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["pretrain", "--out", str(out), "--fast", "--n-layer", "1", "--n-head", "2", "--n-embd", "16",
            "--block-size", "16", "--batch-size", "4", "--max-steps", "3", "--eval-batches", "1", "--quiet",
            "--device", "cpu"]
    bert_cli.main(argv)
    assert "validation MLM loss" in capsys.readouterr().out
    model, tok = load_pretrained(out)
    record = json.loads((out / "config.json").read_text())["extra"]
    assert record["steps"][-1] == 3 and model.config.n_embd == 16 and tok.vocab_size == 300
    assert record["argv"] == argv and record["device"] == "cpu (1 thread)"  # what the run was, where it ran
    with pytest.raises(SystemExit, match="already holds a model"):
        bert_cli.main(argv)
    with pytest.raises(SystemExit, match="not divisible by n_head"):
        bert_cli.main(["pretrain", "--out", str(tmp_path / "bad"), "--n-embd", "15", "--fast", "--quiet"])


class Crash(Exception):
    pass


def same_pretraining(a, b, model_a, model_b):
    for name in ("steps", "train_loss", "valid_loss", "valid_accuracy", "step_losses", "grad_norms", "tokens_seen"):
        assert getattr(a, name) == getattr(b, name), name  # exactly, on the CPU
    assert all(torch.equal(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))


def test_interrupted_pretraining_resumes_exactly(tokenizer, tmp_path):
    """A crash in step 6 of 8, checkpoints every 2 steps: the run started again goes on from
    step 4 and ends as the uninterrupted one did (dropout on: every generator matters)."""
    sp = Specials.of(tokenizer)
    ids = torch.tensor(tokenizer.encode(load_split("train")[0].text[:6000]))
    settings = dict(specials=sp, steps=8, batch_size=4, lr=3e-3, eval_every=3, eval_batches=2, device="cpu",
                    progress=False)

    def make(seed):
        torch.manual_seed(seed)
        return BertForMaskedLM(BertConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16))

    whole = make(0)
    expected = pretrain_mlm(whole, ids, ids, **settings)
    crashing, calls = make(0), []
    masked_loss = crashing.masked_loss

    def crash_in_step_6(inputs, labels):
        calls.append(crashing.training)  # the evaluations run in eval mode
        if sum(calls) > 5:
            raise Crash
        return masked_loss(inputs, labels)

    crashing.masked_loss = crash_in_step_6
    with pytest.raises(Crash):
        pretrain_mlm(crashing, ids, ids, checkpoint_dir=tmp_path, checkpoint_every=2, **settings)
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME, make(1), restore_rng=False, history=bert_train.MLMHistory())
    assert saved["step"] == 4 and saved["history"].valid_accuracy  # the subclass's own field comes back
    with pytest.raises(ValueError, match=r"history with \[.*'valid_accuracy'\]"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME, make(1), restore_rng=False, history=History())
    resumed_model = make(7)  # other weights: the checkpoint replaces them
    resumed = pretrain_mlm(resumed_model, ids, ids, checkpoint_dir=tmp_path, checkpoint_every=2, **settings)
    same_pretraining(expected, resumed, whole, resumed_model)
    with pytest.raises(ValueError, match="saved by a run with"):
        pretrain_mlm(make(0), ids, ids, checkpoint_dir=tmp_path, **{**settings, "batch_size": 2})


def test_command_line_resumes_an_interrupted_run(tmp_path, capsys):
    base = ["pretrain", "--fast", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--max-steps", "6", "--eval-every", "2", "--eval-batches", "1",
            "--checkpoint-every", "2", "--quiet", "--device", "cpu"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    bert_cli.main(base + ["--out", str(whole)])
    assert sorted(p.name for p in whole.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    bert_cli.main(base + ["--out", str(cut), "--max-seconds", "1e-9"])  # stops after one step
    assert "stopped at step 1 of 6" in capsys.readouterr().out and (cut / CHECKPOINT_NAME).exists()
    with pytest.raises(SystemExit, match="unfinished run .*pass --resume"):
        bert_cli.main(base + ["--out", str(cut)])
    with pytest.raises(SystemExit, match=f"other settings; saved vs given: --lr {bert_cli.DEFAULTS['lr']} vs 0.01"):
        bert_cli.main(base + ["--out", str(cut), "--resume", "--lr", "0.01"])
    bert_cli.main(base + ["--out", str(cut), "--resume"])
    assert sorted(p.name for p in cut.iterdir()) == sorted(p.name for p in whole.iterdir())  # checkpoint removed
    a, b = (json.loads((folder / "config.json").read_text())["extra"] for folder in (whole, cut))
    assert a["steps"] == b["steps"] == [0, 2, 4, 6]
    assert a["train_loss"] == b["train_loss"] and a["valid_loss"] == b["valid_loss"]
    (m1, _), (m2, _) = load_pretrained(whole), load_pretrained(cut)
    assert all(torch.equal(p, q) for p, q in zip(m1.parameters(), m2.parameters()))
    with pytest.raises(SystemExit, match="no unfinished run"):
        bert_cli.main(base + ["--out", str(cut), "--resume"])


# ---------------------------------------------------------------------------- the genre task
def test_genres_follow_the_first_folio():
    train = Counter(play_genre(p) for p in load_split("train"))
    assert train == {"comedy": 13, "history": 9, "tragedy": 10}
    for split in ("valid", "test"):  # one play of each genre
        assert sorted(play_genre(p) for p in load_split(split)) == list(GENRES)
    assert [play_genre(n) for n in ("julius-caesar", "the-tempest", "measure-for-measure", "troilus-and-cressida",
                                    "edward-iii", "pericles")] == ["tragedy", "comedy", "comedy", "tragedy",
                                                                   "history", "comedy"]
    with pytest.raises(ValueError, match="unknown play"):
        play_genre("cardenio")


def test_passages_are_split_by_play_and_labelled_by_their_play():
    splits = {s: genre_passages(s, chars=400) for s in ("train", "valid", "test")}
    plays = {s: {p.play for p in ps} for s, ps in splits.items()}
    assert plays["test"] == {"hamlet", "twelfth-night", "henry-v"}
    assert plays["valid"] == {"macbeth", "as-you-like-it", "richard-ii"}
    assert not plays["train"] & (plays["test"] | plays["valid"]) and len(plays["train"]) == 32
    test_texts = {p.text for p in splits["test"]}
    assert not test_texts & {p.text for p in splits["train"]}
    for p in splits["test"]:
        assert p.genre == play_genre(p.play) and 200 <= len(p.text) <= 400
    assert not any(line in ("HAMLET:", "VIOLA:", "KING HENRY V:") for p in splits["test"]
                   for line in p.text.split("\n"))  # no speaker names
    assert set(Counter(p.label for p in splits["test"])) == {0, 1, 2}


def test_dialogue_and_passages_keep_every_word_in_order():
    text = "HAMLET:\nTo be, or not to be:\nthat is the question\n\nOPHELIA:\nGood my lord,\n"
    assert dialogue(text) == "To be, or not to be:\nthat is the question\n\nGood my lord,\n"
    assert dialogue("A line with no speaker\nand another:\n") == "A line with no speaker\nand another:\n"
    words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor".split()
    text = " ".join(words * 5)
    for chars in (12, 17, 40):  # longer than every word
        passages = cut_passages(text, chars)
        assert all(len(p) <= chars for p in passages)
        joined = " ".join(passages).split()
        assert joined == text.split()[:len(joined)] and len(joined) >= len(text.split()) - chars // 2
    assert cut_passages("abcdefghij", 4) == ["abcd", "efgh", "ij"]  # a word longer than a passage is cut
    assert cut_passages("abcdefghi", 4) == ["abcd", "efgh"]  # "i" is under 4 // 2 characters: dropped
    with pytest.raises(ValueError, match="chars must be"):
        cut_passages(text, 1)


# ---------------------------------------------------------------------------- Naive Bayes and scores
def test_naive_bayes_by_hand():
    nb = NaiveBayes().fit(["a a b", "b c c", "a"], ["x", "y", "x"])
    # shared vocabulary <s>, </s>, <unk>, a, b, c: |V| = 6; class x saw a a b a (N = 4), y saw b c c (N = 3)
    p_x = {"a": 4 / 10, "b": 2 / 10, "c": 1 / 10, "z": 1 / 10}  # (C + 1) / (N + |V|); z is <unk>
    p_y = {"a": 1 / 9, "b": 2 / 9, "c": 3 / 9, "z": 1 / 9}
    scores_ = nb.log_scores(["a c", "c c z"])
    expected = [[math.log(2 / 3 * p_x["a"] * p_x["c"]), math.log(1 / 3 * p_y["a"] * p_y["c"])],
                [math.log(2 / 3 * p_x["c"] ** 2 * p_x["z"]), math.log(1 / 3 * p_y["c"] ** 2 * p_y["z"])]]
    np.testing.assert_allclose(scores_, expected, rtol=1e-12)
    assert nb.predict(["a c", "c c z"]) == ["x", "y"] and nb.classes == ["x", "y"]


def test_naive_bayes_equals_a_direct_count():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    texts = [" ".join(rng.choice(words[:20] if k % 3 else words[10:], size=rng.integers(1, 15))) for k in range(60)]
    labels = [k % 3 for k in range(60)]
    nb = NaiveBayes(smoothing="add_k", k=0.5).fit(texts, labels)
    vocab = sorted({w for t in texts for w in t.split()})
    V = len(vocab) + 3  # <s>, </s>, <unk>
    counts = np.zeros((3, len(vocab)))
    for t, c in zip(texts, labels):
        for w in t.split():
            counts[c, vocab.index(w)] += 1
    log_p = np.log((counts + 0.5) / (counts.sum(axis=1, keepdims=True) + 0.5 * V))
    test = [" ".join(rng.choice(words[:25], size=8)) for _ in range(10)]
    for t, row in zip(test, nb.log_scores(test)):
        expected = [math.log(labels.count(c) / 60) + sum(log_p[c, vocab.index(w)] if w in vocab
                                                         else math.log(0.5 / (counts[c].sum() + 0.5 * V))
                                                         for w in t.split()) for c in range(3)]
        np.testing.assert_allclose(row, expected, rtol=1e-10)
    assert NaiveBayes(order=2, smoothing="kneser_ney").fit(texts, labels).log_scores(test).shape == (10, 3)
    with pytest.raises(ValueError, match="same length"):
        NaiveBayes().fit(["a"], [0, 1])
    with pytest.raises(RuntimeError, match="not fitted"):
        NaiveBayes().predict(["a"])
    with pytest.raises(TypeError, match="one str"):
        nb.predict("a b")


def test_naive_bayes_beats_the_majority_class_on_held_out_plays():
    train, valid = genre_passages("train"), genre_passages("valid")
    nb = NaiveBayes().fit([p.text for p in train], [p.label for p in train])
    truth = [p.label for p in valid]
    s = scores(truth, nb.predict([p.text for p in valid]))
    majority = scores(truth, genre.majority_baseline([p.label for p in train], len(valid)))
    assert s["macro_f1"] > majority["macro_f1"] + 0.3 and s["accuracy"] > majority["accuracy"] + 0.2, (s, majority)


def test_scores_by_hand():
    y_true, y_pred = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 0, 2]
    s = scores(y_true, y_pred)
    assert s["confusion_matrix"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows: truth, columns: prediction
    assert s["accuracy"] == 4 / 6
    f1 = [2 * 1 / (2 * 1 + 1 + 1), 2 * 2 / (2 * 2 + 1 + 0), 2 * 1 / (2 * 1 + 0 + 1)]  # 2TP / (2TP + FP + FN)
    assert math.isclose(s["macro_f1"], sum(f1) / 3)
    assert scores([0, 1], [0, 0])["confusion_matrix"].shape == (3, 3)  # always every genre


def test_scores_equal_scikit_learn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    t, p = rng.integers(0, 3, 200).tolist(), rng.integers(0, 3, 200).tolist()
    s = scores(t, p)
    assert math.isclose(s["macro_f1"], sklearn.f1_score(t, p, average="macro"))
    assert math.isclose(s["accuracy"], sklearn.accuracy_score(t, p))
    assert (s["confusion_matrix"] == sklearn.confusion_matrix(t, p, labels=[0, 1, 2])).all()


def test_ngram_fit_with_a_given_vocabulary():
    from course_lib.ngram import NGramLM

    lm = NGramLM(1, "laplace").fit([["a", "b", "z"]], vocab=["a", "b", "c"])
    assert lm.vocab == ["<s>", "</s>", "<unk>", "a", "b", "c"] and lm.count(["<unk>"]) == 1  # z is <unk>
    assert math.isclose(lm.prob("c"), 1 / (3 + 6))
    with pytest.raises(TypeError, match="one str"):
        NGramLM(1).fit([["a"]], vocab="abc")
    assert SPECIAL_TOKENS == ("[PAD]", "[CLS]", "[SEP]", "[MASK]")
