"""The pretrained BERT that ships inside course_lib (course_lib/pretrained/bert_mini).

Chapter 8's page and Colab users (who ``pip install`` course_lib from the repository) load
it with ``bert_cli.load_shipped``. The tests read the weights as safetensors (no code
in the file), check the documented architecture (``SHIPPED_ARCHITECTURE``, the defaults
of ``python -m course_lib.bert pretrain``), that the recorded run learnt, that the loaded
model scores the validation plays as its record says, that the folder is package data,
and that a missing checkpoint gives an error saying how to get one.

The gates: a masked LM can lower its loss a long way by learning token frequencies alone
(the unigram plateau) and still ignore every word around a blank. Measured on the test
plays, with fixed blanks, the shipped model must use its context: its top-1 accuracy at
``[MASK]`` well above always guessing the most frequent token, its loss well below the
unigram entropy, context on both sides better than the left side alone, and at least one
head that attends to a neighbouring token rather than spreading its weight evenly.

The GPT pre-trained on the same windows (``--objective causal``, chapter 8's classifier
baseline) ships beside it and is checked the same way for what applies."""

import fnmatch
import json
import math
import sys

import pytest
import torch

from course_lib import bert_cli
from course_lib.bert import BertConfig, BertForMaskedLM
from course_lib.bert_cli import (BERT_DIR_ENV, CONFIG_NAME, GPT_DIR_ENV, SHIPPED_ARCHITECTURE, SHIPPED_DIR,
                                 SHIPPED_GPT_DIR, TOKENIZER_NAME, load_pretrained, load_shipped, pretrained_record,
                                 save_pretrained, shipped_dir)
from course_lib.bert_train import (Specials, corpus_text, evaluate_mlm, fill_blanks, neighbour_attention,
                                   train_tokenizer, unigram_blanks)
from course_lib.gpt import GPT
from course_lib.data import load_split

pytestmark = pytest.mark.usefixtures("one_thread")

# Set to True in the commit that adds course_lib/pretrained/bert_mini. Until then the tests of
# the checkpoint itself skip where the folder does not exist; from then on a missing or broken
# checkpoint fails them.
SHIPPED_COMMITTED = True

WEIGHTS = "model.safetensors"
MAX_MB = 16  # "a few MB" of float32 weights
N_BLANKS = 1000  # blanks in the test plays for the gates, drawn from a fixed seed


@pytest.fixture
def shipped(monkeypatch):
    """The shipped folder, with $COURSE_BERT_DIR and $COURSE_GPT_DIR unset so that nothing else stands in."""
    monkeypatch.delenv(BERT_DIR_ENV, raising=False)
    monkeypatch.delenv(GPT_DIR_ENV, raising=False)
    if not SHIPPED_COMMITTED and not SHIPPED_DIR.exists():
        pytest.skip(f"{SHIPPED_DIR} is not there yet (python -m course_lib.bert pretrain --out {SHIPPED_DIR})")
    return SHIPPED_DIR


def test_shipped_folder_holds_the_three_files(shipped):
    assert sorted(p.name for p in shipped.iterdir()) == sorted([CONFIG_NAME, TOKENIZER_NAME, WEIGHTS])
    size = (shipped / WEIGHTS).stat().st_size / 2**20
    assert 0.5 < size < MAX_MB, f"{size:.1f} MiB"


def test_shipped_weights_are_safetensors_of_the_documented_architecture(shipped):
    from safetensors import safe_open

    meta = json.loads((shipped / CONFIG_NAME).read_text())
    assert meta["kind"] == "BertForMaskedLM"
    config = BertConfig(**meta["model"])
    assert {k: getattr(config, k) for k in SHIPPED_ARCHITECTURE} == SHIPPED_ARCHITECTURE
    with torch.device("meta"):
        expected = {k: v.shape for k, v in BertForMaskedLM(config).state_dict().items() if k != "head.decoder.weight"}
    with safe_open(str(shipped / WEIGHTS), framework="pt") as f:  # a JSON header and raw tensors: no code runs
        assert f.metadata()["kind"] == "BertForMaskedLM"
        assert set(f.keys()) == set(expected)  # the tied output matrix is stored once, as the token embedding
        for key in f.keys():
            t = f.get_tensor(key)
            assert t.dtype == torch.float32 and t.shape == expected[key], key
            assert torch.isfinite(t).all(), key


def test_shipped_record_says_the_run_learnt(shipped):
    record = pretrained_record(shipped)
    for key in ("settings", "argv", "device", "steps", "train_loss", "valid_loss", "valid_accuracy", "mask_loss",
                "mask_accuracy", "attention_prev", "attention_next", "train_seconds", "train_tokens", "parameters"):
        assert key in record, key
    assert {k: record["settings"][k] for k in SHIPPED_ARCHITECTURE} == SHIPPED_ARCHITECTURE
    steps, loss, acc = record["steps"], record["valid_loss"], record["valid_accuracy"]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) == len(loss) == len(acc) >= 2
    assert all(math.isfinite(x) for x in loss + record["train_loss"])
    assert loss[0] > math.log(SHIPPED_ARCHITECTURE["vocab_size"]) - 1  # it started from random weights
    assert loss[-1] < loss[0] - 1.5, loss  # it trained; whether it uses its context is for the gates below
    assert record["train_seconds"] > 0 and record["train_tokens"] > 1_000_000  # the whole training plays
    assert record["settings"] == bert_cli.DEFAULTS  # made by the command with its defaults, as documented
    assert record["argv"] == ["pretrain", "--out", "course_lib/pretrained/bert_mini"]


def test_load_shipped_gives_the_recorded_model(shipped):
    model, tok = load_shipped()
    assert isinstance(model, BertForMaskedLM) and not model.training
    assert model.head.decoder.weight is model.bert.embeddings.tok.weight
    V = SHIPPED_ARCHITECTURE["vocab_size"]
    assert tok.vocab_size == V and Specials.of(tok).ids == (V - 4, V - 3, V - 2, V - 1)
    assert model.num_parameters() == pretrained_record(shipped)["parameters"]
    ids = torch.tensor(tok.encode(corpus_text("valid", 20_000)))
    loss, acc = evaluate_mlm(model, ids, Specials.of(tok), batch_size=16, n_batches=2, seed=0)
    recorded = pretrained_record(shipped)["valid_loss"][-1]
    assert abs(loss - recorded) < 0.6, (loss, recorded)  # the trained weights, not random ones (about ln V)


def test_the_shipped_folder_is_package_data():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    pyproject = tomllib.loads((SHIPPED_DIR.parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["course_lib"]
    package = SHIPPED_DIR.parents[1]
    files = [folder / name for folder in (SHIPPED_DIR, SHIPPED_GPT_DIR)
             for name in (CONFIG_NAME, TOKENIZER_NAME, WEIGHTS)]
    files.append(package / "pretrained" / "records" / "bert_mini_plateau.json")  # chapter 8 draws it
    for path in files:
        assert path.exists(), path
        relative = path.relative_to(package).as_posix()  # e.g. pretrained/bert_mini/config.json
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative


def test_a_missing_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bert_cli, "SHIPPED_DIR", tmp_path / "pretrained" / "bert_mini")
    monkeypatch.delenv(BERT_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"pre-trained BERT is missing.*where course_lib ships it.*"
                                                r"python -m course_lib\.bert pretrain --out course_lib/pretrained"):
        load_shipped()
    monkeypatch.setenv(BERT_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"\$COURSE_BERT_DIR = .*elsewhere"):
        load_shipped()
    monkeypatch.setenv(GPT_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"pre-trained GPT is missing.*\$COURSE_GPT_DIR = .*elsewhere.*"
                                                r"--objective causal"):
        load_shipped(kind="gpt")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_shipped(kind="t5")


def test_course_bert_dir_points_to_another_checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv(BERT_DIR_ENV, raising=False)
    assert shipped_dir() == SHIPPED_DIR
    tok = train_tokenizer(load_split("train")[0].text[:5000], 280)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(BertConfig(vocab_size=280, block_size=16, n_layer=1, n_head=2, n_embd=16))
    save_pretrained(tmp_path / "mine", mlm, tok, extra={"steps": [0]})
    monkeypatch.setenv(BERT_DIR_ENV, str(tmp_path / "mine"))
    assert shipped_dir() == tmp_path / "mine"
    model, loaded_tok = load_shipped()
    assert model.config == mlm.config and loaded_tok.merges == tok.merges
    monkeypatch.setenv("COURSE_GPT_DIR", str(tmp_path / "mine"))
    with pytest.raises(ValueError, match="holds a BertForMaskedLM, not the pre-trained GPT"):
        load_shipped(kind="gpt")
    assert pretrained_record(shipped_dir()) == {"steps": [0]}
    ids = torch.randint(280, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], mlm.eval()(ids)[0], rtol=0, atol=0)


@pytest.fixture(scope="module")
def gates():
    """The shipped model's measurements on the test plays (fixed blanks, fixed windows)."""
    import os

    saved = os.environ.pop(BERT_DIR_ENV, None)
    try:
        if not SHIPPED_COMMITTED and not SHIPPED_DIR.exists():
            pytest.skip(f"{SHIPPED_DIR} is not there yet")
        model, tok = load_shipped()
    finally:
        if saved is not None:
            os.environ[BERT_DIR_ENV] = saved
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    sp = Specials.of(tok)
    test = torch.tensor(tok.encode(corpus_text("test")))
    T = model.config.block_size
    left, right = (T - 2) // 2, (T - 3) // 2  # [CLS] left [MASK] right [SEP] fills the block
    positions = torch.randint(left, len(test) - right, (N_BLANKS,), generator=torch.Generator().manual_seed(2))
    measured = {
        "both": fill_blanks(model, test, positions.tolist(), sp, left, right),
        "left": fill_blanks(model, test, positions.tolist(), sp, left, 0),
        # the test tokens' own frequencies: the best a model blind to context can do on them
        "unigram": unigram_blanks(test, test, positions.tolist(), model.config.vocab_size),
        "neighbours": neighbour_attention(model, test, sp, n_windows=64, seed=3),
    }
    torch.set_num_threads(threads)
    return measured


def test_gate_mask_accuracy_beats_the_most_frequent_token_by_10_points(gates):
    (_, acc), (_, frequent) = gates["both"], gates["unigram"]
    assert acc >= frequent + 0.10, f"top-1 at [MASK] {acc:.3f}, most frequent token {frequent:.3f}"


def test_gate_mask_loss_is_half_a_nat_below_the_unigram_entropy(gates):
    (loss, _), (entropy, _) = gates["both"], gates["unigram"]
    assert loss <= entropy - 0.5, f"loss at [MASK] {loss:.3f} nats, unigram entropy {entropy:.3f}"


def test_gate_context_on_both_sides_beats_the_left_side_alone_by_3_points(gates):
    (_, both), (_, left) = gates["both"], gates["left"]
    assert both >= left + 0.03, f"both sides {both:.3f}, left only {left:.3f}"


def test_gate_some_head_attends_to_a_neighbour(gates):
    prev, nxt = gates["neighbours"]
    best = max(prev.max().item(), nxt.max().item())
    assert best >= 0.3, f"the most any head puts on a neighbouring token is {best:.3f} (spread evenly: about 1/T)"


def test_shipped_gpt_is_the_same_run_with_the_causal_objective(shipped):
    folder = SHIPPED_GPT_DIR
    assert shipped_dir("gpt") == folder
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_NAME, TOKENIZER_NAME, WEIGHTS])
    gpt, tok = load_shipped(kind="gpt")
    assert not gpt.training
    _, bert_tok = load_pretrained(shipped)
    assert isinstance(gpt, GPT) and tok.merges == bert_tok.merges  # one tokenizer for both
    bert_run, gpt_run = pretrained_record(shipped)["settings"], pretrained_record(folder)["settings"]
    assert gpt_run["objective"] == "causal" and bert_run["objective"] == "mlm"
    differ = {k for k in set(bert_run) | set(gpt_run) if bert_run.get(k) != gpt_run.get(k)}
    assert differ <= {"objective", "norm_first", "mask_prob"}, differ  # what only the masked LM has
    record = pretrained_record(folder)
    assert record["valid_loss"][-1] < record["valid_loss"][0] - 1.5, record["valid_loss"]
    ids = torch.tensor(tok.encode(corpus_text("valid", 20_000)))[: 8 * gpt.config.block_size + 1]
    x, y = ids[:-1].view(8, -1), ids[1:].view(8, -1)
    with torch.no_grad():
        loss = gpt(x, y)[1].item()
    assert abs(loss - record["valid_loss"][-1]) < 0.6, (loss, record["valid_loss"][-1])  # the trained weights
