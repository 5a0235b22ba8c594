"""The pretrained BERT that ships inside course_lib (course_lib/pretrained/bert_mini).

Chapter 8's page and Colab users (who ``pip install`` course_lib from the repository) load
it with ``bert_train.load_shipped``. The tests read the weights as safetensors (no code
in the file), check the documented architecture (``SHIPPED_ARCHITECTURE``, the defaults
of ``python -m course_lib.bert pretrain``), that the recorded run learnt, that the loaded
model scores the validation plays as its record says, that the folder is package data,
and that a missing checkpoint gives an error saying how to get one."""

import fnmatch
import json
import math
import sys

import pytest
import torch

from course_lib import bert_train
from course_lib.bert import BertConfig, BertForMaskedLM
from course_lib.bert_train import (BERT_DIR_ENV, CONFIG_NAME, SHIPPED_ARCHITECTURE, SHIPPED_DIR, TOKENIZER_NAME,
                                   Specials, corpus_text, evaluate_mlm, load_shipped, pretrained_record,
                                   save_pretrained, shipped_dir, train_tokenizer)
from course_lib.data import load_split

pytestmark = pytest.mark.usefixtures("one_thread")

# Set to True in the commit that adds course_lib/pretrained/bert_mini. Until then the tests of
# the checkpoint itself skip where the folder does not exist; from then on a missing or broken
# checkpoint fails them.
SHIPPED_COMMITTED = True

WEIGHTS = "model.safetensors"
MAX_MB = 16  # "a few MB": the defaults give about 4.2 MiB of float32 weights


@pytest.fixture
def shipped(monkeypatch):
    """The shipped folder, with $COURSE_BERT_DIR unset so that nothing else stands in for it."""
    monkeypatch.delenv(BERT_DIR_ENV, raising=False)
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
    for key in ("settings", "argv", "device", "steps", "train_loss", "valid_loss", "valid_accuracy", "train_seconds",
                "train_tokens", "parameters"):
        assert key in record, key
    assert {k: record["settings"][k] for k in SHIPPED_ARCHITECTURE} == SHIPPED_ARCHITECTURE
    steps, loss, acc = record["steps"], record["valid_loss"], record["valid_accuracy"]
    assert steps[0] == 0 and steps == sorted(steps) and len(steps) == len(loss) == len(acc) >= 2
    assert all(math.isfinite(x) for x in loss + record["train_loss"])
    assert loss[0] > math.log(SHIPPED_ARCHITECTURE["vocab_size"]) - 1  # it started from random weights
    assert loss[-1] < loss[0] - 1.5 and acc[-1] > 0.15, (loss, acc)  # and learnt, past guessing frequent tokens
    assert record["train_seconds"] > 0 and record["train_tokens"] > 1_000_000  # the whole training plays


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
    relative = SHIPPED_DIR.relative_to(SHIPPED_DIR.parents[1])  # pretrained/bert_mini
    for name in (CONFIG_NAME, TOKENIZER_NAME, WEIGHTS):
        assert any(fnmatch.fnmatch(f"{relative.as_posix()}/{name}", p) for p in patterns), name


def test_a_missing_checkpoint_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bert_train, "SHIPPED_DIR", tmp_path / "pretrained" / "bert_mini")
    monkeypatch.delenv(BERT_DIR_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"pre-trained BERT is missing.*where course_lib ships it.*"
                                                r"python -m course_lib\.bert pretrain --out course_lib/pretrained"):
        load_shipped()
    monkeypatch.setenv(BERT_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(FileNotFoundError, match=r"\$COURSE_BERT_DIR = .*elsewhere"):
        load_shipped()


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
    assert pretrained_record(shipped_dir()) == {"steps": [0]}
    ids = torch.randint(280, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids)[0], mlm.eval()(ids)[0], rtol=0, atol=0)
