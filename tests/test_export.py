"""course_lib.export: a GPT exported to ONNX and run by onnxruntime against the same GPT in
PyTorch (logits within 1e-4 at several (B, T), T = block_size and B = 1 among them, for a
tiny random GPT and for the shipped one), greedy and seeded sampled generation against
GPT.generate token for token (within the block and past it), the file itself (a protobuf
that onnx.checker accepts, standard operators only, symbolic B and T, the config in its
metadata, no pickle), the model's mode kept, and bad input."""

import doctest
import sys

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from course_lib import bert_cli, export  # noqa: E402
from course_lib.export import OnnxGPT, export_onnx  # noqa: E402
from course_lib.gpt import GPT, GPTConfig, GPTForSequenceClassification  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

ATOL = 1e-4  # max |logits difference|, float32: the two runtimes order a few sums differently
HAMLET = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n"
          "And by opposing end them. To die, to sleep;\nNo more; and by a sleep to say we end\n")
TINY = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16)


def make_gpt(seed=0):
    """A tiny GPT with every weight moved off its initialisation, so biases and LayerNorms count."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**TINY)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def randint(high, shape, seed=0):
    return torch.randint(high, shape, generator=torch.Generator().manual_seed(seed))


def torch_logits(model, idx):
    with torch.no_grad():
        return model(idx)[0]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(model, path, OnnxGPT): the tiny GPT, exported once."""
    model = make_gpt()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")
    return model, path, OnnxGPT(path, threads=1)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """(model, tokenizer, OnnxGPT): the course's pretrained GPT, exported once."""
    model, tok = bert_cli.load_shipped("cpu", kind="gpt")
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "shipped.onnx")
    return model, tok, OnnxGPT(path, threads=1)


def test_module_examples():
    assert doctest.testmod(export).failed == 0


# ---------------------------------------------------------------------------- logits
@pytest.mark.parametrize("B, T", [(1, 1), (1, 16), (3, 5), (4, 16), (2, 9)])
def test_logits_equal_pytorchs(tiny, B, T):
    model, _, gpt = tiny
    idx = randint(23, (B, T), seed=B * 100 + T)
    ours = gpt.logits(idx.numpy())
    assert isinstance(ours, np.ndarray) and ours.dtype == np.float32 and ours.shape == (B, T, 23)
    diff = np.abs(ours - torch_logits(model, idx).numpy()).max()
    assert diff <= ATOL, f"max |logits difference| {diff:.2e} at (B, T) = ({B}, {T})"


def test_tensor_in_tensor_out(tiny):
    model, _, gpt = tiny
    idx = randint(23, (2, 7), seed=3).int()  # int32 ids are taken too
    ours = gpt.logits(idx)
    assert isinstance(ours, torch.Tensor) and ours.dtype == torch.float32 and ours.shape == (2, 7, 23)
    torch.testing.assert_close(ours, torch_logits(model, idx.long()), atol=ATOL, rtol=0)


def test_shipped_gpt_logits_equal_pytorchs(shipped):
    model, tok, gpt = shipped
    c = model.config
    assert (c.vocab_size, c.block_size) == (516, 64) and gpt.config == c
    text = torch.tensor(tok.encode(HAMLET))
    assert len(text) >= c.block_size, "the line should fill a block"
    for idx in (text[None, :c.block_size], text[None, :10], randint(c.vocab_size, (3, c.block_size))):
        diff = np.abs(gpt.logits(idx.numpy()) - torch_logits(model, idx).numpy()).max()
        assert diff <= ATOL, f"max |logits difference| {diff:.2e} at {tuple(idx.shape)}"


# ---------------------------------------------------------------------------- generation
@pytest.mark.parametrize("new", [8, 30])  # 4 + 8 <= block_size 16; 4 + 30 > 16: the context slides
def test_greedy_generation_equals_gpts(tiny, new):
    model, _, gpt = tiny
    prompt = randint(23, (2, 4), seed=new)
    ours = gpt.generate(prompt.numpy(), new, top_k=1)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.int64 and ours.shape == (2, 4 + new)
    uncached = model.generate(prompt, new, top_k=1, use_cache=False)
    assert ours.tolist() == uncached.tolist()
    if 4 + new <= model.config.block_size:
        assert ours.tolist() == model.generate(prompt, new, top_k=1).tolist()  # the cached loop agrees too


def test_shipped_greedy_generation_past_the_block(shipped):
    model, tok, gpt = shipped
    prompt = torch.tensor([tok.encode("ROMEO:\n")])
    new = model.config.block_size + 8 - prompt.shape[1]  # ends 8 tokens past the block
    ours = gpt.generate(prompt, new, top_k=1)
    assert isinstance(ours, torch.Tensor) and ours.shape == (1, model.config.block_size + 8)
    assert ours.tolist() == model.generate(prompt, new, top_k=1, use_cache=False).tolist()


def test_seeded_sampling_draws_what_gpt_draws(tiny):
    model, _, gpt = tiny
    prompt = randint(23, (3, 2), seed=7)
    settings = dict(temperature=0.8, top_k=10, top_p=0.9)
    ours = gpt.generate(prompt, 20, generator=torch.Generator().manual_seed(0), **settings)
    theirs = model.generate(prompt, 20, generator=torch.Generator().manual_seed(0), use_cache=False, **settings)
    assert ours.tolist() == theirs.tolist()
    again = gpt.generate(prompt, 20, generator=torch.Generator().manual_seed(0), **settings)
    assert again.tolist() == ours.tolist()


def test_a_prompt_longer_than_the_block_is_cropped(tiny):
    model, _, gpt = tiny
    prompt = randint(23, (1, 20), seed=5)  # block_size 16
    ours = gpt.generate(prompt.numpy(), 3, top_k=1)
    assert ours[:, :20].tolist() == prompt.tolist()
    assert ours.tolist() == model.generate(prompt, 3, top_k=1, use_cache=False).tolist()
    assert gpt.generate(prompt.numpy(), 0).tolist() == prompt.tolist()


# ---------------------------------------------------------------------------- the file
def test_the_file_is_a_checked_protobuf_without_pickle(tiny):
    model, path, _ = tiny
    data = path.read_bytes()
    assert not data.startswith(b"\x80"), "a pickle starts with its protocol byte 0x80"
    assert not data.startswith(b"PK"), "torch.save writes a zip archive"
    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto, full_check=True)  # full_check: shapes inferred too
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}, "standard operators only"
    assert not any(f.name.startswith("Python") for f in proto.functions)
    (opset,) = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    assert opset >= 18, f"opset {opset}: LayerNormalization needs 17, the exporter's default is 18 or more"
    assert not any(node.metadata_props for node in proto.graph.node), "no stack traces of the exporting machine"
    assert b"/tests/" not in data and b"stack_trace" not in data
    weights = {init.name: init for init in proto.graph.initializer}
    wpe = onnx.numpy_helper.to_array(weights["gpt.transformer.wpe.weight"])
    np.testing.assert_array_equal(wpe, model.transformer.wpe.weight.detach().numpy())  # the weights, as they are


def test_the_file_declares_symbolic_batch_and_time(tiny):
    _, path, _ = tiny
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("idx", onnx.TensorProto.INT64)
    assert (out.name, out.type.tensor_type.elem_type) == ("logits", onnx.TensorProto.FLOAT)
    assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["B", "T"]
    out_dims = out.type.tensor_type.shape.dim
    assert [d.dim_param for d in out_dims[:2]] == ["B", "T"] and out_dims[2].dim_value == 23


def test_the_file_records_the_config(tiny):
    model, path, gpt = tiny
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert export.META_CONFIG in meta
    assert gpt.config == model.config and gpt.get_block_size() == 16


def test_a_training_model_is_exported_without_dropout_and_left_training(tmp_path):
    model = GPT(GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=4, dropout=0.5)).train()
    gpt = OnnxGPT(export_onnx(model, tmp_path / "m.onnx"), threads=1)
    assert model.training and all(m.training for m in model.modules())
    idx = randint(7, (2, 4))
    diff = np.abs(gpt.logits(idx.numpy()) - torch_logits(model.eval(), idx).numpy()).max()
    assert diff <= ATOL, "the exported graph is the eval-mode model: dropout off"


def test_threads_are_set(tiny):
    _, path, _ = tiny
    gpt = OnnxGPT(str(path), threads=2)
    assert gpt.threads == 2 and gpt.session.get_session_options().intra_op_num_threads == 2
    assert gpt.session.get_providers() == ["CPUExecutionProvider"]
    assert OnnxGPT(path).threads == torch.get_num_threads()


# ---------------------------------------------------------------------------- bad input
def test_export_refuses_what_is_not_a_gpt(tmp_path):
    with pytest.raises(TypeError, match="expected a course_lib.gpt.GPT, got Linear"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "m.onnx")
    classifier = GPTForSequenceClassification(GPT(GPTConfig(**TINY)), 3)
    with pytest.raises(TypeError, match="export its .gpt"):
        export_onnx(classifier, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="float32.*model.float()"):
        export_onnx(GPT(GPTConfig(**TINY)).double(), tmp_path / "m.onnx")


def test_export_refuses_a_bad_path(tmp_path):
    model = GPT(GPTConfig(**TINY))
    with pytest.raises(TypeError, match="str or pathlib.Path, got int"):
        export_onnx(model, 3)
    with pytest.raises(ValueError, match="ending in .onnx"):
        export_onnx(model, tmp_path / "m.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_onnx(model, tmp_path / "missing" / "m.onnx")
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        export_onnx(model, tmp_path / "d.onnx")
    with pytest.raises(ValueError, match="opset_version must be an integer > 0"):
        export_onnx(model, tmp_path / "m.onnx", opset_version=0)
    assert not (tmp_path / "m.onnx").exists()


def test_missing_packages_say_what_to_install(tiny, tmp_path, monkeypatch):
    _, path, _ = tiny
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    with pytest.raises(ImportError, match=r"OnnxGPT needs onnxruntime.*pip install 'onnxruntime>="):
        OnnxGPT(path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ImportError, match=r"needs onnxscript.*pip install .*'onnxscript>="):
        export_onnx(GPT(GPTConfig(**TINY)), tmp_path / "m.onnx")


def test_onnxgpt_refuses_a_bad_file(tiny, tmp_path):
    _, path, _ = tiny
    with pytest.raises(FileNotFoundError, match="export_onnx"):
        OnnxGPT(tmp_path / "none.onnx")
    with pytest.raises(ValueError, match="threads must be an integer > 0"):
        OnnxGPT(path, threads=0)
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    onnx.save_model(proto, str(tmp_path / "bare.onnx"))
    with pytest.raises(ValueError, match="not written by export_onnx"):
        OnnxGPT(tmp_path / "bare.onnx")


@pytest.mark.parametrize("idx, error, match", [
    (np.zeros((1, 17), dtype=np.int64), ValueError, r"T <= block_size=16, got \(1, 17\)"),
    (np.zeros(5, dtype=np.int64), ValueError, r"shape \(B, T\).*got \(5,\); one sequence is idx\[None, :\]"),
    (np.zeros((0, 3), dtype=np.int64), ValueError, r"B >= 1 and T >= 1, got \(0, 3\)"),
    (np.zeros((1, 0), dtype=np.int64), ValueError, r"B >= 1 and T >= 1, got \(1, 0\)"),
    (np.array([[1, 23]]), ValueError, r"ids from 1 to 23; the vocabulary has ids 0..22"),
    (torch.tensor([[-1, 2]]), ValueError, r"ids from -1 to 2"),
    (np.zeros((1, 3), dtype=np.float32), TypeError, "integer token ids, got dtype float32"),
    (torch.zeros(1, 3, dtype=torch.bool), TypeError, "integer token ids, got dtype torch.bool"),
    ([[1, 2, 3]], TypeError, "numpy array or torch tensor of shape \\(B, T\\), got list"),
])
def test_logits_refuse_bad_ids(tiny, idx, error, match):
    _, _, gpt = tiny
    with pytest.raises(error, match=match):
        gpt.logits(idx)


def test_generate_refuses_bad_settings(tiny):
    _, _, gpt = tiny
    prompt = np.array([[1, 2]])
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0"):
        gpt.generate(prompt, -1)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        gpt.generate(prompt, 3, temperature=0)
    with pytest.raises(ValueError, match="top_k must be an integer > 0"):
        gpt.generate(prompt, 3, top_k=0)
    with pytest.raises(ValueError, match="ids from 1 to 99"):
        gpt.generate(np.array([[1, 99]]), 3)
    long_ok = gpt.generate(np.ones((1, 40), dtype=np.int32), 1, top_k=1)  # longer than the block: cropped
    assert long_ok.shape == (1, 41) and long_ok.dtype == np.int64
