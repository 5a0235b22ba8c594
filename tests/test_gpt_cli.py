"""The command line of course_lib.gpt (course_lib.gpt_cli) and data-parallel training.

The command line is called in-process through ``main(argv)`` (fast); the data-parallel
runs start two CPU processes with Gloo, once through ``train(distributed=True)`` in float64
(``torch.multiprocessing.spawn``) and once through ``torchrun -m course_lib.gpt``, and
compare with one process training on the same global batch.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_lib.gpt import GPT, GPTConfig
from course_lib.gpt_cli import main
from course_lib.runtime import seed_everything
from course_lib.tokenizers import CharTokenizer
from course_lib.train import CHECKPOINT_NAME, load_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: torch on one thread (conftest.py)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--fast", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--eval-batches", "2",
        "--device", "cpu", "--precision", "fp32", "--quiet"]


def train_cli(out, *extra):
    main(["train", "--out", str(out), *TINY, *extra])


def saved_step(out) -> int:
    return torch.load(Path(out) / CHECKPOINT_NAME, weights_only=True)["step"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A folder trained for 4 steps, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("run")
    train_cli(out, "--batch-size", "4", "--max-steps", "4", "--eval-every", "2")
    return out


def test_train_writes_config_tokenizer_and_checkpoint(run_dir, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    tokenizer = CharTokenizer.load(run_dir / "tokenizer.json")
    assert config["tokenizer"] == "char"
    assert config["model"] == dict(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16,
                                   dropout=0.0, bias=True)
    assert saved_step(run_dir) == 4
    history = torch.load(run_dir / CHECKPOINT_NAME, weights_only=True)["history"]
    assert history["steps"] == [0, 2, 4] and len(history["step_losses"]) == 4


def test_train_prints_validation_loss_and_bits_per_char(tmp_path, capsys):
    train_cli(tmp_path, "--batch-size", "2", "--max-steps", "2", "--eval-every", "2")
    line = capsys.readouterr().out.strip().splitlines()[-1]
    loss = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)["history"]["valid_loss"][-1]
    assert f"validation loss {loss:.4f} nats/token" in line
    assert "bits/char" in line


def test_sample_continues_the_prompt_and_is_seeded(run_dir, capsys):
    argv = ["sample", "--ckpt", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "20", "--top-k", "5"]
    main(argv)
    first = capsys.readouterr().out
    main(argv)
    assert capsys.readouterr().out == first
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 20 + 1  # char tokens, and a newline


def test_sample_loads_weights_only(run_dir, monkeypatch):
    seen = []
    real_load = torch.load

    def load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    main(["sample", "--ckpt", str(run_dir), "--max-new-tokens", "1"])
    assert seen == [True]


def test_resume_goes_on_from_the_checkpoint_with_its_settings(tmp_path, capsys):
    train_cli(tmp_path, "--batch-size", "2", "--max-steps", "2", "--eval-every", "2")
    before = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    # model flags left out: taken from config.json (a default --n-layer 4 would not fit)
    main(["train", "--out", str(tmp_path), "--resume", "--max-steps", "4", "--quiet", "--device", "cpu"])
    after = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert after["step"] == 4
    assert after["history"]["step_losses"][:2] == before["history"]["step_losses"]
    assert len(after["history"]["step_losses"]) == 4
    assert "step 4:" in capsys.readouterr().out


def test_bpe_tokenizer_round_trip(tmp_path, capsys):
    train_cli(tmp_path, "--tokenizer", "bpe", "--vocab-size", "260", "--max-chars", "3000", "--batch-size", "2",
              "--max-steps", "1")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tokenizer"] == "bpe" and config["model"]["vocab_size"] == 260
    assert json.loads((tmp_path / "tokenizer.json").read_text())["type"] == "bpe"
    capsys.readouterr()
    main(["sample", "--ckpt", str(tmp_path), "--prompt", "KING:", "--max-new-tokens", "5"])
    assert capsys.readouterr().out.startswith("KING:")


@pytest.mark.parametrize("argv, match", [
    (["sample", "--ckpt", "{missing}"], "does not exist"),
    (["sample", "--ckpt", "{empty}"], "lacks config.json, tokenizer.json, checkpoint.pt"),
    (["train", "--out", "{missing}", "--resume"], "does not exist"),
    (["train", "--out", "{empty}", "--resume"], "holds no checkpoint.pt"),
    (["train", "--out", "{run}", "--resume", "--n-layer", "2"], "n_layer 1 vs 2"),
    (["train", "--out", "{run}", "--resume", "--tokenizer", "bpe"], "tokenizer 'char' vs 'bpe'"),
    (["train", "--out", "{run}", "--max-steps", "5"], "already holds a checkpoint: pass --resume"),
    (["train", "--out", "{run}", "--resume", "--batch-size", "3"], "was saved by a run with"),
    (["train", "--out", "{new}", "--fast", "--max-steps", "5", "--warmup", "9"], "--warmup 9 must lie in 0..--max"),
    (["train", "--out", "{new}", "--max-chars", "10"], "leaves no window"),
])
def test_errors_say_what_is_wrong(argv, match, run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    names = dict(missing=tmp_path / "nowhere", empty=tmp_path / "empty", run=run_dir, new=tmp_path / "new")
    with pytest.raises(SystemExit, match=match):
        main([arg.format(**names) for arg in argv])


def test_unknown_tokenizer_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["train", "--out", str(tmp_path), "--tokenizer", "word"])
    assert err.value.code == 2 and "invalid choice: 'word'" in capsys.readouterr().err


def test_python_dash_m_course_lib_gpt_runs_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "course_lib.gpt", "train", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--resume" in proc.stdout and "--tokenizer {bpe,char}" in proc.stdout


# ---------------------------------------------------------------------------- data parallel
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_run(folder, batch_size, distributed=False, init_seed=0) -> None:
    """Four float64 steps of a tiny GPT with two accumulated micro-batches, saved in ``folder``."""
    data = torch.arange(300) % 11
    seed_everything(init_seed)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).double()
    train(model, data, data[:100], steps=4, batch_size=batch_size, lr=1e-2, weight_decay=0.1, eval_every=2,
          eval_batches=2, grad_clip=1.0, accumulate=2, device="cpu", progress=False, checkpoint_dir=folder,
          distributed=distributed)


def saved_run(folder):
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16)).double()
    return load_checkpoint(os.path.join(folder, CHECKPOINT_NAME), model, restore_rng=False), model


def _worker(rank, world, port, folder):
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # process 1 starts from other weights: DistributedDataParallel copies process 0's to it
        tiny_run(folder, batch_size=2, distributed=True, init_seed=rank)
    finally:
        dist.destroy_process_group()


def test_two_processes_equal_one_with_the_global_batch(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, free_port(), str(tmp_path / "ddp")), nprocs=2)
    tiny_run(str(tmp_path / "one"), 4)
    (ddp, ddp_model), (one, one_model) = saved_run(tmp_path / "ddp"), saved_run(tmp_path / "one")
    assert ddp["extra"]["run"]["world_size"] == 2 and ddp["step"] == one["step"] == 4
    for field in ("step_losses", "train_loss", "valid_loss"):  # float64: equal up to summation order
        assert getattr(ddp["history"], field) == pytest.approx(getattr(one["history"], field), rel=1e-10), field
    for (name, a), b in zip(ddp_model.state_dict().items(), one_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=name)


def test_distributed_needs_a_process_group():
    model = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    with pytest.raises(RuntimeError, match="needs a process group: launch with torchrun"):
        train(model, torch.arange(20) % 5, steps=1, device="cpu", progress=False, distributed=True)


@pytest.mark.slow
def test_torchrun_command_line_equals_one_process(tmp_path):
    """The real launch: torchrun, two Gloo processes of --batch-size 2 against one of 4 (float32)."""
    torchrun = Path(sys.executable).with_name("torchrun")
    common = TINY + ["--max-steps", "4", "--eval-every", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(torchrun), "--nproc_per_node=2", f"--master_port={free_port()}", "-m",
                           "course_lib.gpt", "train", "--out", str(tmp_path / "ddp"), "--batch-size", "2", *common],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("validation loss") == 1  # process 0 alone prints
    train_cli(tmp_path / "one", "--batch-size", "4", "--max-steps", "4", "--eval-every", "2")
    ddp = torch.load(tmp_path / "ddp" / CHECKPOINT_NAME, weights_only=True)
    one = torch.load(tmp_path / "one" / CHECKPOINT_NAME, weights_only=True)
    for field in ("step_losses", "train_loss", "valid_loss"):
        assert ddp["history"][field] == pytest.approx(one["history"][field], rel=1e-5), field
    for name, a in ddp["model"].items():
        torch.testing.assert_close(a, one["model"][name], rtol=1e-4, atol=1e-5, msg=name)
