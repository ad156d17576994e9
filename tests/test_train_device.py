"""train.py's device-facing choices, checked on CPU: one device->host transfer per logging point,
pinned loader buffers only for CUDA runs, and CUDA graph compile modes refused with gradient
accumulation (they corrupt accumulated gradients: pytorch/pytorch#169545)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import train
import trainer.config
import trainer.graph
import trainer.loaders
import trainer.runtime
import trainer.session
import trainer.step
from trainer.runtime import Runtime
from _data import random_tokens, write_dataset

TRAIN_FILE = str(Path(train.__file__).resolve())
# the trainer's own code: train.py and the trainer package's modules
TRAINER_FILES = {TRAIN_FILE, *(str(p.resolve()) for p in Path(trainer.step.__file__).parent.glob("*.py"))}
HOST_TRANSFERS = ("tolist", "item", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds") / "small", random_tokens(300, 1))


def test_one_host_transfer_per_logging_point(tmp_path, dataset, monkeypatch):
    """Steady state: train.py and the trainer package read device tensors on the host only at logging points,
    once each (losses and grad norms together), whatever torch does internally on CPU."""
    calls: list[str] = []
    for name in HOST_TRANSFERS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if str(Path(sys._getframe(1).f_code.co_filename).resolve()) in TRAINER_FILES:
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    c = train.TrainConfig(model="tiny", B=2, T=16, steps=12, log_every=4, total_batch_size=64,
                          eval_every=0, data=str(dataset), out=str(tmp_path / "out"), quiet=True,
                          device="cpu", ckpt_every=6)
    summary = train.train(c)
    assert summary["steps"] == 12
    # the points of steps 1, 2 and 3 (the warm-up the summary leaves out: timed on their own),
    # then 4, 6 (a checkpoint), 8 and 12, nothing in between: 7; and each checkpoint (6 and 12)
    # one more, the check that the weights it saves are finite
    assert calls == ["tolist"] * (7 + 2)


def test_loader_buffers_are_pinned_and_the_ring_deeper_only_for_cuda_runs(monkeypatch, dataset):
    seen = []

    def loader(*args, **kwargs):
        seen.append((kwargs["pin_memory"], kwargs["prefetch"]))
        return types.SimpleNamespace(shards=[])

    monkeypatch.setattr(trainer.loaders, "TokenLoader", loader)
    c = train.TrainConfig(model="tiny", B=2, T=16)
    for device in ("cpu", "cuda"):
        rt = Runtime(torch.device(device), "fp32", False)
        trainer.loaders.open_loader(str(dataset), "train", c, rt, False, 50257)
    assert seen == [(False, 2), (True, 8)]


@pytest.mark.parametrize("mode", trainer.config.CUDAGRAPH_MODES)
def test_cuda_graph_modes_with_accumulation_are_refused(mode, dataset, tmp_path, monkeypatch):
    fake_cuda = Runtime(torch.device("cuda"), "bf16", True)  # refused before any CUDA call
    monkeypatch.setattr(trainer.session, "make_runtime", lambda cfg: fake_cuda)
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--out",
            str(tmp_path / "out"), "--compile-mode", mode, "--total-batch-size", "96"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: --compile-mode {mode} uses CUDA graphs, which break gradient accumulation "
        "(3 micro-steps for --total-batch-size 96): use --compile-mode default or "
        "max-autotune-no-cudagraphs, or --total-batch-size 32\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", [*trainer.config.CUDAGRAPH_MODES, "max-autotune-no-cudagraphs"])
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine would start training")
def test_cuda_graph_modes_pass_without_accumulation(mode, dataset, tmp_path, monkeypatch):
    """Without accumulation the check lets the run go on: this CPU machine then stops at the
    first real CUDA need (pinned loader buffers), proving the CUDA graph check passed."""
    monkeypatch.setattr(trainer.session, "make_runtime", lambda cfg: Runtime(torch.device("cuda"), "bf16", True))
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--out",
            str(tmp_path / "out"), "--compile-mode", mode]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "pin_memory=True needs CUDA" in result.output, result.output


@pytest.mark.parametrize("visible, shown", [(None, ""), ("0,1", " (CUDA_VISIBLE_DEVICES='0,1')")])
def test_more_local_ranks_than_gpus_is_one_line(monkeypatch, visible, shown):
    """torchrun --nproc_per_node=4 on a machine (or CUDA_VISIBLE_DEVICES) with 2 GPUs: local
    ranks 2 and 3 raised set_device's 'invalid device ordinal' with a traceback."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: pytest.fail(f"set_device({device})"))
    for name, value in (("WORLD_SIZE", "8"), ("RANK", "6"), ("LOCAL_RANK", "2"), ("CUDA_VISIBLE_DEVICES", visible)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for device in ("auto", "cuda"):
        with pytest.raises(train.UserError) as e:
            trainer.runtime.make_runtime(train.TrainConfig(model="tiny", device=device))
        assert e.value.message == (f"local rank 2 has no GPU of its own: this machine shows 2 CUDA device(s){shown}; "
                                   "start at most 2 process(es) on it (torchrun --nproc_per_node=2)")


def _fake_gpu(monkeypatch, name: str, capability: tuple[int, int]) -> None:
    """One CUDA GPU of `capability` as far as make_runtime asks (no CUDA call reaches torch)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    for variable in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize("name, capability, compiled", [("NVIDIA GeForce GTX 1080", (6, 1), False),
                                                        ("Tesla P100-PCIE-16GB", (6, 0), False),
                                                        ("Tesla V100-SXM2-16GB", (7, 0), True),
                                                        ("NVIDIA H200", (9, 0), True)])
def test_compile_is_on_by_default_only_on_gpus_that_triton_compiles_for(monkeypatch, dataset, tmp_path, name,
                                                                        capability, compiled):
    """torch.compile's GPU compiler (Triton) refuses compute capability below 7.0: on a GTX
    1080 or a P100 the default (compile on for CUDA) failed at the first forward pass with
    inductor's BackendCompilerFailed traceback (nanoGPT #157). There compile is off by default,
    and --compile is one line, before anything is built."""
    _fake_gpu(monkeypatch, name, capability)
    rt = trainer.runtime.make_runtime(train.TrainConfig(model="tiny", device="cuda"))
    assert rt.device.type == "cuda" and rt.compile is compiled
    assert (trainer.runtime.compile_refusal(rt.device) is None) == compiled
    assert trainer.runtime.make_runtime(train.TrainConfig(model="tiny", device="cuda", compile=False)).compile is False
    if compiled:
        rt = trainer.runtime.make_runtime(train.TrainConfig(model="tiny", device="cuda", compile=True))
        assert rt.compile is True
        return
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--out", str(tmp_path / "out"),
            "--device", "cuda", "--compile"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2, result.output
    assert result.output == (f"Error: --compile: torch.compile's GPU compiler (Triton) needs compute capability 7.0 "
                             f"or newer, and {name} has {capability[0]}.{capability[1]}: drop --compile\n")
    assert not (tmp_path / "out").exists()


def test_compile_is_off_by_default_where_torch_has_no_dynamo_for_this_python(monkeypatch, dataset, tmp_path):
    """torch 2.5 has no dynamo on Python 3.13 (2.6 has; no torch on 3.15): torch.compile raised
    'Dynamo is not supported on Python 3.13+' with a traceback as the run started, by default on
    CUDA. Off by default there, and --compile is one line, on the CPU too."""
    _fake_gpu(monkeypatch, "NVIDIA H200", (9, 0))
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    assert trainer.runtime.make_runtime(train.TrainConfig(model="tiny", device="cuda")).compile is False
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "1", "--data", str(dataset), "--out",
            str(tmp_path / "out"), "--device", "cpu", "--compile"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2, result.output
    assert result.output == (f"Error: --compile: torch {torch.__version__} does not compile on Python "
                             f"{sys.version.split()[0]}: drop --compile\n")
    assert not (tmp_path / "out").exists()


def test_a_compile_mode_where_torch_cannot_compile_does_not_say_to_turn_it_on(monkeypatch, dataset, tmp_path):
    """--compile-mode without --compile is a note that says --compile turns compile on: not where
    torch has no dynamo, where --compile is refused (above)."""
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "1", "--data", str(dataset), "--device",
            "cpu", "--out", str(tmp_path / "out"), "--eval-every", "0", "--compile-mode", "reduce-overhead"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    note = "note: --compile-mode reduce-overhead has no effect: compile is off\n"
    assert note in result.stdout, result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torchrun_with_one_rank_more_than_gpus_stops_every_rank_in_one_line(tmp_path, dataset):
    """The real thing on a CUDA machine: torchrun starts one rank more than there are GPUs.
    The rank without one says so, every other rank that it stopped for it, nobody hangs where
    NCCL would have met, and nothing is written."""
    count = torch.cuda.device_count()
    world = count + 1
    args = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "--standalone",
            str(Path(TRAIN_FILE)), "--model", "tiny", "--B", "2", "--T", "16", "--steps", "2", "--quiet",
            "--data", str(dataset), "--out", str(tmp_path / "out")]
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # torchrun's torchelastic_* directories
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode != 0
    says = [f"rank {rank} of {world}: stopped because another rank failed its start-up checks"
            for rank in range(count)]
    says.append(f"rank {count} of {world}: local rank {count} has no GPU of its own: this machine shows "
                f"{count} CUDA device(s)")
    for line in says:
        assert f"Error: {line}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr.split("Error: ")[0]  # train.py's own part: one line each
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_cuda_graph_needs_a_cuda_device(dataset, tmp_path):
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--cuda-graph"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2
    assert result.output == "Error: --cuda-graph needs a CUDA device; this run's is cpu (--device cpu): drop --cuda-graph\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("world, mode, says", [
    (1, "reduce-overhead", "--cuda-graph captures the whole step in a CUDA graph itself, and --compile-mode "
                           "reduce-overhead replays CUDA graphs of its own inside it: use --compile-mode default "
                           "or max-autotune-no-cudagraphs"),
    (2, "default", "--cuda-graph runs in one process (DDP's all-reduce is not captured), and torchrun started 2: "
                   "drop --cuda-graph"),
])
def test_cuda_graph_refuses_ddp_and_the_compilers_own_graphs(world, mode, says, dataset, tmp_path):
    """Checked before anything is opened or written (a fake CUDA runtime: no CUDA call is made)."""
    c = train.TrainConfig(model="tiny", B=2, T=16, data=str(dataset), out=str(tmp_path / "out"),
                          compile_mode=mode, cuda_graph=True)
    with pytest.raises(train.UserError) as e:
        trainer.session.check_cuda_graph(c, Runtime(torch.device("cuda"), "bf16", True, world=world))
    assert e.value.message == says
    c.cuda_graph = False
    trainer.session.check_cuda_graph(c, Runtime(torch.device("cuda"), "bf16", True, world=world))  # no flag: no check


def _losses(s: trainer.session.Session, steps: int, lr: float) -> list[float]:
    feed = lambda: s.train_loader.next_batch(s.rt.device)  # noqa: E731
    return [trainer.step.train_step(s.parts, feed, lr)[0].item() for _ in range(steps)]


def test_a_step_graph_replay_reads_each_micro_batch_into_its_own_buffer_in_order():
    """StepGraph's replay on the CPU, its capture left out (the graph a stand-in): each
    micro-step's batch from the feed lands in that micro-step's buffers, in the feed's order,
    the learning rate in its device tensor, and the loss and norm come back as copies, which
    the next replay does not overwrite."""
    graph = trainer.graph.StepGraph(2, 3)
    graph._allocate(3, torch.device("cpu"), 1e-3)
    seen: list[tuple[torch.Tensor, ...]] = []
    graph.graph = types.SimpleNamespace(replay=lambda: seen.append((graph.x.clone(), graph.y.clone(),
                                                                    graph.lr.clone())))
    graph.loss, graph.norm = torch.tensor(2.5), torch.tensor(0.5)
    batches = [(torch.full((2, 3), 2 * i), torch.full((2, 3), 2 * i + 1)) for i in range(6)]
    feed = iter(batches).__next__
    parts = types.SimpleNamespace(accum_steps=3)
    loss, norm = graph(parts, feed, 0.25)
    graph.loss.fill_(9.0)
    graph(parts, feed, 0.5)
    for (x, y, lr), first, want_lr in zip(seen, (0, 3), (0.25, 0.5)):
        assert torch.equal(x, torch.stack([batches[first + i][0] for i in range(3)]))
        assert torch.equal(y, torch.stack([batches[first + i][1] for i in range(3)]))
        assert lr.item() == want_lr
    assert (loss.item(), norm.item()) == (2.5, 0.5)


@pytest.mark.parametrize("before", [0, 2])
def test_steps_undone_by_restore_training_state_leave_no_trace(before, dataset, tmp_path):
    """StepGraph's warm-up steps are undone before its capture: steps taken after a snapshot
    and restored away leave the next steps' losses bit-equal to a run that never took them,
    from a fresh optimizer (its state made by those steps goes back to zeros) or a trained one
    (put back as it was). Dropout on, so the RNG matters too (on CPU the snapshot keeps no RNG:
    the steps below use the CUDA one in a graph; here they are taken with it saved by hand)."""
    c = train.TrainConfig(model="tiny", B=2, T=16, data=str(dataset), out=str(tmp_path / "out"), device="cpu",
                          compile=False, bench=True, dropout=0.1, grad_clip=0.05, total_batch_size=64)
    runs = []
    for extra in (0, 3):
        with contextlib.ExitStack() as stack:
            s = train.prepare(c, stack)
            losses = _losses(s, before, c.lr)
            saved, rng = trainer.graph.snapshot_training_state(s.parts), torch.get_rng_state()
            if extra:
                feed = lambda: (torch.zeros((2, 16), dtype=torch.long),) * 2  # noqa: E731
                for _ in range(extra):
                    trainer.step.train_step(s.parts, feed, 1e-2)
                assert any(not torch.equal(p, w) for p, w in zip(s.parts.params, saved["weights"]))
                trainer.graph.restore_training_state(s.parts, saved)
                torch.set_rng_state(rng)
            runs.append(losses + _losses(s, 4, c.lr))
            states = [{k: v.clone() for k, v in st.items()} for st in s.parts.optimizer.state.values()]
    assert runs[0] == runs[1] and len(set(runs[0])) == len(runs[0])
    assert len(states) == len(list(s.parts.params)) and all(st["step"].item() == before + 4 for st in states)
