"""course_lib.chat: the template, the chat tokenizer (old ids kept, chat tokens never split),
encode_chat against encoding the rendered text, the assistant-only mask (changing a user
token's target changes nothing, an assistant token's does), the grown embedding, padding,
and the data from the plays (split by play, answers checkable from the prompt)."""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import chat
from course_lib.chat import (ASSISTANT, CHAT_TOKENS, END, chat_tokenizer, encode_chat, extend_vocab, pad_batch,
                             render, sft_targets)
from course_lib.data import TEST_PLAYS, VALID_PLAYS
from course_lib.genre import play_genre
from course_lib.gpt import GPT, GPTConfig
from course_lib.tokenizers import BPETokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

TEXT = "HAMLET: To be, or not to be, that is the question.\nOPHELIA: Good my lord, how does your honour?"
CHAT = [{"role": "user", "content": "HAMLET: Who's there?\nReply as OPHELIA."},
        {"role": "assistant", "content": "Nay, answer me."}]


@pytest.fixture(scope="module")
def tokenizers():
    base = BPETokenizer.train(TEXT * 3, 300, special_tokens=["[PAD]"])
    return base, chat_tokenizer(base)


def test_module_examples():
    assert doctest.testmod(chat).failed == 0


def test_chat_tokenizer_keeps_old_ids_and_never_splits_chat_tokens(tokenizers):
    base, tok = tokenizers
    assert tok.encode(TEXT) == base.encode(TEXT)
    assert tok.special_tokens["[PAD]"] == base.special_tokens["[PAD]"]
    assert [tok.special_tokens[t] for t in CHAT_TOKENS] == list(range(base.vocab_size, base.vocab_size + 3))
    assert tok.encode(render(CHAT)).count(tok.special_tokens[END]) == 1
    assert tok.decode(tok.encode(render(CHAT))) == render(CHAT)
    assert chat_tokenizer(tok).vocab_size == tok.vocab_size  # adding them twice adds nothing


def test_encode_chat_equals_encoding_the_rendered_text_and_masks_the_assistant(tokenizers):
    _, tok = tokenizers
    ids, mask = encode_chat(tok, CHAT)
    assert ids == tok.encode(render(CHAT))
    answer = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(answer) == "Nay, answer me." + END
    assert mask[ids.index(tok.special_tokens[ASSISTANT])] == 0
    prompt, pmask = encode_chat(tok, CHAT[:1], add_generation_prompt=True)
    assert prompt == tok.encode(render(CHAT[:1], add_generation_prompt=True)) and not any(pmask)
    assert ids[:len(prompt)] == prompt


def test_only_assistant_targets_count(tokenizers):
    _, tok = tokenizers
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    ids, mask = (torch.tensor(x)[None] for x in encode_chat(tok, CHAT))
    inputs, targets = sft_targets(ids, mask)
    _, loss = model(inputs, targets)
    logits, _ = model(inputs)
    scored = mask[0, 1:].bool()
    expected = F.cross_entropy(logits[0][scored], ids[0, 1:][scored])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    user_pos = 3  # a user token (its target, predicted from position 2)
    assert mask[0, user_pos] == 0
    changed = ids.clone()
    changed[0, user_pos] = (changed[0, user_pos] + 1) % 256
    _, loss_user = model(inputs, sft_targets(changed, mask)[1])  # same inputs, one user target changed
    assert loss_user.item() == loss.item()
    asst_pos = int(mask[0].nonzero()[0])
    changed = ids.clone()
    changed[0, asst_pos] = (changed[0, asst_pos] + 1) % 256
    _, loss_asst = model(inputs, sft_targets(changed, mask)[1])
    assert loss_asst.item() != loss.item()


def test_extend_vocab_keeps_old_logits_and_starts_new_rows_at_the_mean():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    grown = extend_vocab(model, 23).eval()
    idx = torch.randint(20, (2, 8))
    assert torch.allclose(grown(idx)[0][..., :20], model(idx)[0], atol=1e-6)
    rows = grown.transformer.wte.weight
    assert torch.allclose(rows[20:], model.transformer.wte.weight.mean(0).expand(3, -1))
    assert grown.lm_head.weight is grown.transformer.wte.weight  # still tied
    with pytest.raises(ValueError, match="vocab_size must be"):
        extend_vocab(model, 10)


def test_pad_batch():
    ids, mask = pad_batch([([1, 2, 3], [0, 1, 1]), ([4], [0])], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[0, 1, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="differ in length"):
        pad_batch([([1, 2], [0])], 0)


def test_bad_messages(tokenizers):
    _, tok = tokenizers
    with pytest.raises(ValueError, match="alternate"):
        render([{"role": "assistant", "content": "hi"}])
    with pytest.raises(ValueError, match="chat token"):
        render([{"role": "user", "content": f"hi {END}"}])
    with pytest.raises(ValueError, match="ends with a user message"):
        render(CHAT, add_generation_prompt=True)
    with pytest.raises(ValueError, match="lacks the chat tokens"):
        encode_chat(tokenizers[0], CHAT)
    with pytest.raises(ValueError, match="same shape"):
        sft_targets([1, 2, 3], [0, 1])


def test_exchanges_are_split_by_play_and_pair_neighbouring_speeches():
    train, test = chat.exchanges("train", 60), chat.exchanges("test", 60)
    assert train and test
    assert not {e.play for e in train} & (set(TEST_PLAYS) | set(VALID_PLAYS))
    assert {e.play for e in test} == set(TEST_PLAYS)
    assert all(e.speaker != e.reply_speaker and len(e.line) <= 60 and len(e.reply) <= 60 for e in train)
    first = test[0]
    text = next(p.text for p in chat.load_split("test") if p.name == first.play)
    assert f"{first.speaker}:\n" in text and first.line in text and first.reply in text
    messages = chat.reply_messages(first)
    assert messages[1]["content"] == first.reply and first.reply_speaker in messages[0]["content"]


def test_instructions_are_checkable_from_the_prompt():
    items = chat.instructions("test", per_task=50, seed=1)
    assert {i.task for i in items} == set(chat.TASKS) and len(items) == 50 * len(chat.TASKS)
    for i in items:
        if i.task == "first_speaker":
            assert i.prompt.startswith(i.answer + ": ")
        elif i.task == "last_word":
            assert i.prompt.rstrip(" .,;:!?'").endswith(i.answer) or i.answer in i.prompt
        elif i.task == "word_count":
            assert int(i.answer) == len(chat._WORD.findall(i.prompt.split(": ", 1)[1]))
        else:
            assert i.answer == play_genre(i.play)
    assert chat.instructions("test", per_task=50, seed=1) == items  # the same draw for the same seed


def tiny_chat_model(tok, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()


def test_answer_bits_per_char_by_hand(tokenizers):
    _, tok = tokenizers
    model = tiny_chat_model(tok)
    pairs = [(tok.encode("HAMLET: hi"), tok.encode(" good")), (tok.encode("Q"), tok.encode("to be or"))]
    nats = 0.0
    for p, a in pairs:
        logits, _ = model(torch.tensor([p + a]))
        logp = F.log_softmax(logits[0].double(), -1)
        nats -= sum(logp[len(p) + j - 1, t].item() for j, t in enumerate(a))
    n_chars = len(" good") + len("to be or")
    assert chat.answer_bits_per_char(model, pairs, n_chars) == pytest.approx(nats / math.log(2) / n_chars, rel=1e-5)
    with pytest.raises(ValueError, match="longer than the block"):
        chat.answer_bits_per_char(model, [(list(range(60)), list(range(10)))], 5)


def test_greedy_answer_is_the_argmax_path_cut_at_end(tokenizers):
    _, tok = tokenizers
    model = tiny_chat_model(tok, seed=3)
    p = encode_chat(tok, CHAT[:1], add_generation_prompt=True)[0]
    x, out = list(p), []
    end = tok.special_tokens[END]
    for _ in range(6):
        nxt = int(model(torch.tensor([x]))[0][0, -1].argmax())
        if nxt == end:
            break
        out.append(nxt)
        x.append(nxt)
    assert chat.greedy_answer(model, tok, p, max_new_tokens=6) == tok.decode(out)
    assert chat.exact_match(["a ", "b"], ["a", "c"]) == 0.5


def test_finetune_learns_the_answers_and_trains_only_what_is_free(tokenizers):
    from course_lib.lora import apply_lora

    _, tok = tokenizers
    model = tiny_chat_model(tok)
    rows = [encode_chat(tok, [{"role": "user", "content": f"say {w}"}, {"role": "assistant", "content": w}])
            for w in ("yes", "no", "ay", "nay")]
    hist = chat.finetune(model, rows, steps=60, pad_id=0, batch_size=4, lr=1e-2, progress=False)
    assert hist.steps == 60 and len(hist.loss) == 60
    assert sum(hist.loss[-5:]) / 5 < 0.5 * sum(hist.loss[:5]) / 5
    model = tiny_chat_model(tok)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, ("c_attn", "c_fc"), r=4)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    chat.finetune(model, rows, steps=5, pad_id=0, batch_size=4, lr=1e-2, progress=False)
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, frozen[name.replace(".base", "")]), name
    with pytest.raises(ValueError, match="every parameter is frozen"):
        chat.finetune(tiny_chat_model(tok).requires_grad_(False), rows, steps=1, pad_id=0, progress=False)


def test_pretraining_rows_are_windows_of_one_text_every_token_trained(tokenizers):
    _, tok = tokenizers
    texts = [TEXT, "Good night, sweet prince.", TEXT.upper()]
    rows = chat.pretraining_rows(tok, texts, n=50, length=12, seed=3)
    encoded = [tok.encode(t) for t in texts]
    assert len(rows) == 50
    for ids, mask in rows:
        assert len(ids) == 12 and mask == [1] * 12
        assert any(ids == e[s:s + 12] for e in encoded for s in range(len(e) - 11))  # inside one text
    assert rows == chat.pretraining_rows(tok, texts, n=50, length=12, seed=3)
    assert rows != chat.pretraining_rows(tok, texts, n=50, length=12, seed=4)
    x, y = sft_targets(*pad_batch(rows[:2], 0))
    assert (y != -1).all()  # every target trains
    with pytest.raises(ValueError, match="no text is"):
        chat.pretraining_rows(tok, ["Good night."], n=1, length=500)
    with pytest.raises(ValueError, match="n must be"):
        chat.pretraining_rows(tok, texts, n=0, length=12)
    with pytest.raises(ValueError, match="length must be"):
        chat.pretraining_rows(tok, texts, n=1, length=1)
