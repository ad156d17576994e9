"""train.py on a CUDA device (skipped elsewhere): the steady state never syncs (CUDA's own
sync-debug mode turns any sync into an error), the compile modes train alike, resume picks up
where the run stopped, and --bench reports a GPU's figures. Tiny preset, a few seconds each
after compilation; the CPU suite covers everything that does not need a GPU."""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
import trainer.checkpoint
import trainer.loop
import trainer.runtime
import trainer.saving
import trainer.step
import trainer.timing
from _data import random_tokens, write_dataset
from model.flops import peak_flops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

TINY = dict(model="tiny", B=4, T=32, warmup_steps=2, eval_every=0, quiet=True, device="cuda")
MODES = [(False, "default"), (True, "default"), (True, "reduce-overhead")]


def cfg(tmp_path: Path, data: Path, **overrides) -> train.TrainConfig:
    return train.TrainConfig(**{**TINY, "data": str(data), "out": str(tmp_path / "out"), **overrides})


def losses(out: Path) -> list[float]:
    """The train losses of steps 1, 2, ... (a step-0 line, where validation is on, has none)."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if row["step"] > 0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """4,000 train tokens (31 windows of 4x32) and 1,000 val tokens."""
    return write_dataset(tmp_path_factory.mktemp("ds") / "cuda", random_tokens(4000, 5), random_tokens(1000, 6))


@pytest.fixture(scope="module")
def learnable(tmp_path_factory) -> Path:
    """A 64-token pattern repeated: a tiny model learns it within a few steps, so losses that
    agree across compile modes mean they trained alike, not that none of them moved."""
    pattern = random_tokens(64, 7)
    return write_dataset(tmp_path_factory.mktemp("ds") / "learnable", np.tile(pattern, 63)[:4000],
                         np.tile(pattern, 16)[:1000])


@pytest.mark.parametrize("compile_, mode, graph, dtype", [*[(c, m, False, "auto") for c, m in MODES],
                                                          (False, "default", True, "auto"),
                                                          (True, "default", True, "auto"),
                                                          (False, "default", False, "fp16"),
                                                          (True, "default", False, "fp16")])
def test_steady_state_steps_never_sync(tmp_path, dataset, compile_, mode, graph, dtype):
    """After warm-up (compilation, CUDA graph recording), train_step fed by the real loader
    runs with torch's sync-debug mode set to "error": any .item(), pageable copy or stream
    sync in the step, the loader's transfer or the optimizer raises. fp16 too: its loss scale's
    overflow flag goes to fused AdamW on the device."""
    c = cfg(tmp_path, dataset, compile=compile_, compile_mode=mode, bench=True, cuda_graph=graph, dtype=dtype)
    skips = torch._dynamo.utils.counters["inductor"]["cudagraph_skips"]
    with contextlib.ExitStack() as stack:
        s = train.prepare(c, stack)
        assert s.parts.clip_in_optimizer  # fused AdamW on CUDA: clipping inside its kernel
        feed = lambda: s.train_loader.next_batch(s.rt.device)  # noqa: E731
        for _ in range(4):
            trainer.step.train_step(s.parts, feed, c.lr)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            results = [trainer.step.train_step(s.parts, feed, c.lr) for _ in range(6)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        values = torch.stack([torch.stack(r).float() for r in results]).tolist()
    assert all(math.isfinite(loss) and math.isfinite(norm) and norm > 0 for loss, norm in values)
    # a CUDA graph that inductor silently skipped would make reduce-overhead the default mode
    assert torch._dynamo.utils.counters["inductor"]["cudagraph_skips"] == skips
    assert (s.parts.graph is not None and s.parts.graph.graph is not None) == graph


def test_the_training_loop_never_waits_for_the_device_between_logging_points(tmp_path, dataset, monkeypatch):
    """Steps 5-11 of train() itself, --log-every 1, in sync-debug "error" mode: each logging
    point's values leave by a pinned non_blocking copy and are read a point later after an
    event (trainer.timing.Readback), so neither the steps nor the logging points sync."""
    real_step, calls = trainer.step.train_step, [0]

    def step(*args):
        calls[0] += 1
        if calls[0] == 5:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif calls[0] == 12:  # the last step's point is read at once, and the run ends
            torch.cuda.set_sync_debug_mode("default")
        return real_step(*args)

    monkeypatch.setattr(trainer.loop, "train_step", step)
    try:
        train.train(cfg(tmp_path, dataset, steps=12, ckpt_every=0, compile=True, compile_mode="reduce-overhead"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert calls[0] == 12 and len(losses(tmp_path / "out")) == 12
    assert all(math.isfinite(v) for v in losses(tmp_path / "out"))
    # each window timed by CUDA events on the stream (trainer.timing.mark): the GPU's own time, > 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < row["dt_ms"] < 60_000 and row["tokens_per_s"] > 0 for row in rows)


def test_compile_modes_train_alike_with_validation_and_samples(tmp_path, learnable, capsys):
    """The same seed and data under eager, compiled and CUDA-graph runs (reduce-overhead's, and
    --cuda-graph's whole step): bf16 losses agree to rounding while they fall fast, and
    validation and sampling work beside a CUDA-graph-compiled model or a captured step, the
    step-0 validation (compiled before the training step is) included. (The --cuda-graph case
    has not run on a GPU yet: added after the lease of 2026-11-30.)"""
    runs, first_val, last_val = {}, {}, {}
    for compile_, mode, graph in [*[(c, m, False) for c, m in MODES], (True, "default", True)]:
        out = tmp_path / f"{compile_}-{mode}-{graph}"
        summary = train.train(cfg(tmp_path, learnable, out=str(out), steps=8, eval_every=4, eval_steps=3,
                                  sample_every=8, compile=compile_, compile_mode=mode, dtype="bf16",
                                  lr=1e-2, cuda_graph=graph))
        text = capsys.readouterr().out
        assert f"compile: {'on (' + mode + ')' if compile_ else 'off'}{', the whole step one CUDA graph' * graph}" in text
        assert "step 8 sample: " in text and "step 8: val loss" in text and "step 0: val loss" in text
        first_val[(compile_, mode, graph)] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["val_loss"]
        assert summary["val_loss"] is not None and math.isfinite(summary["val_loss"])
        last_val[(compile_, mode, graph)] = summary["val_loss"]  # step 8's: after the training steps
        known_peak = peak_flops(torch.cuda.get_device_name()) is not None
        assert (summary["mfu"] is not None) == known_peak
        runs[(compile_, mode, graph)] = losses(out)
    eager = runs[(False, "default", False)]
    assert eager[-1] < eager[0] - 1.0  # it learns the pattern: a run that did not would differ
    for key, run in runs.items():
        assert len(run) == 8 and all(math.isfinite(v) for v in run), key
        assert run == pytest.approx(eager, rel=2e-2), key
        assert first_val[key] == pytest.approx(first_val[(False, "default", False)], rel=2e-2), key  # the same weights
        assert last_val[key] == pytest.approx(last_val[(False, "default", False)], rel=2e-2), key  # trained alike


@pytest.mark.parametrize("graph, dtype", [(False, "fp32"), (True, "fp32"), (False, "fp16")])
def test_resume_continues_the_run_to_rounding(tmp_path, dataset, capsys, graph, dtype):
    """fp32, no compile: 3 steps + checkpoint + resume + 3 steps against 6 straight steps.
    CUDA's atomic-add reductions are not bit-reproducible, so the bound is rounding (1e-4),
    far under what a lost optimizer, RNG or loader state would change. With --cuda-graph also
    dropout (the graph's RNG) and accumulation, the resume a new capture; its checkpoint holds
    the optimizer as a run without the graph saves it (a float learning rate, capturable off).
    fp16 (its loss scale saved and restored, fused AdamW skipping on the device): rounding in
    fp16 is coarser, so 1e-3."""
    common = dict(steps=6, dtype=dtype, compile=False, shuffle=True, keep_ckpts=0,
                  **(dict(cuda_graph=True, dropout=0.1, total_batch_size=256) if graph else {}))
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), **common))
    split = tmp_path / "split"
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=3, **common))
    (split / "ckpt_000006.pt").unlink()
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=3, resume="auto", **common))
    assert "at step 3" in capsys.readouterr().out
    straight, resumed = losses(tmp_path / "straight"), losses(split)
    assert len(resumed) == 6 and resumed == pytest.approx(straight, rel=1e-4 if dtype == "fp32" else 1e-3, abs=0)
    ckpt = trainer.checkpoint.load_checkpoint(split / "ckpt_000006.pt")  # map_location="cpu": loads anywhere
    assert ckpt["step"] == 6 and all(t.device.type == "cpu" for t in ckpt["model"].values())
    assert all(type(g["lr"]) is float and g["capturable"] is False for g in ckpt["optimizer"]["param_groups"])
    assert (ckpt["loss_scale"] is not None) == (dtype == "fp16")


@pytest.mark.parametrize("graph", [False, True], ids=["steps", "one CUDA graph"])
def test_a_background_checkpoint_holds_its_step_s_state_while_later_steps_train(tmp_path, dataset, monkeypatch,
                                                                               graph):
    """--async-ckpt on CUDA: host_copy copies the state to host memory. Queued behind 0.1 s of
    GPU work, the copies are complete all the same when host_copy returns (the host reads them
    at once), and step 2's file, written while steps 3 and 4 run on the GPU, holds the very
    tensors a synchronous copy of that state gives."""
    real_copy, real_save, real_step = trainer.saving.host_copy, torch.save, trainer.step.train_step
    taken, complete, step_4_queued, overlapped = {}, [], [], []

    def recorded_copy(payload):
        if payload["step"] != 2:
            return real_copy(payload)
        taken["model"] = {k: v.to("cpu", copy=True) for k, v in payload["model"].items()}  # a sync
        taken["state"] = {i: {k: v.to("cpu", copy=True) if isinstance(v, torch.Tensor) else v
                              for k, v in st.items()} for i, st in payload["optimizer"]["state"].items()}
        torch.cuda._sleep(200_000_000)  # GPU cycles (about 0.1 s) queued before host_copy's copies
        copied = real_copy(payload)
        complete.append(all(torch.equal(copied[0]["model"][k], v) for k, v in taken["model"].items()))
        return copied

    def slow_save(obj, f):
        if obj["step"] == 2:  # until the run has queued step 4 (10 s at most)
            overlapped.append(_wait_until(lambda: len(step_4_queued) >= 4, 10))
        real_save(obj, f)

    def counted_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        step_4_queued.append(1)
        return result

    monkeypatch.setattr(trainer.saving, "host_copy", recorded_copy)
    monkeypatch.setattr(torch, "save", slow_save)
    monkeypatch.setattr(trainer.loop, "train_step", counted_step)
    train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, keep_ckpts=0, compile=False, cuda_graph=graph,
                    **(dict(dropout=0.1, total_batch_size=256) if graph else {})))
    assert complete == [True] and overlapped == [True]
    saved = trainer.checkpoint.load_checkpoint(tmp_path / "out" / "ckpt_000002.pt")
    assert saved["model"].keys() == taken["model"].keys()
    assert all(torch.equal(saved["model"][k], v) for k, v in taken["model"].items())
    for i, state in taken["state"].items():
        for k, v in state.items():
            got = saved["optimizer"]["state"][i][k]
            assert torch.equal(got.cpu(), v) if isinstance(v, torch.Tensor) else got == v, (i, k)


def _wait_until(done, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
    return done()


@pytest.mark.parametrize("mode, graph, dtype", [("reduce-overhead", False, "auto"), ("default", True, "auto"),
                                               ("reduce-overhead", False, "fp16")])
def test_bench_on_cuda_reports_the_gpu(tmp_path, dataset, mode, graph, dtype):
    """fp16 too, under reduce-overhead's CUDA graphs with the loss scale outside them."""
    args = ["--model", "tiny", "--B", "4", "--T", "32", "--data", str(dataset), "--bench", "--dtype", dtype,
            "--bench-warmup", "4", "--bench-steps", "10", "--compile-mode", mode, *(["--cuda-graph"] if graph else [])]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    bench = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("BENCH "))
    assert bench["device"].startswith("cuda") and bench["device_name"] == torch.cuda.get_device_name()
    auto = trainer.runtime.auto_dtype(torch.device("cuda", torch.cuda.current_device()))
    assert bench["dtype"] == (auto if dtype == "auto" else dtype)
    assert bench["compile"] is True and bench["compile_mode"] == mode and bench["cuda_graph"] is graph
    assert (bench["mfu"] is not None) == (peak_flops(bench["device_name"]) is not None)
    assert bench["tokens_per_s"] > 0 and bench["synthetic_tokens_per_s"] > 0
    assert math.isfinite(bench["loss"])


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_graph_steps_are_the_plain_steps(tmp_path, dataset, capsys, compile_):
    """--cuda-graph against the same run without it: fp32, 2 micro-steps a step (gradient
    accumulation inside the graph), clipping at work (grad_clip under every norm), shuffle
    and a changing learning rate (the graph reads it from a device tensor). The first loss is
    the same number (the warm-up steps before the capture, at step 1's learning rate, were
    undone); the later
    losses and norms agree to rounding (CUDA's atomic adds), and so do the weights after 8
    steps: apart by under 1e-3 of how far the steps moved them, where a stale learning rate, a
    lost or repeated micro-batch or an extra step would put them about that far apart."""
    common = dict(steps=8, dtype="fp32", compile=compile_, shuffle=True, total_batch_size=256, grad_clip=0.05,
                  warmup_steps=3, ckpt_every=1, keep_ckpts=0, lr=1e-3)
    rows, weights = {}, {}
    for graph in (False, True):
        out = tmp_path / f"graph-{graph}"
        train.train(cfg(tmp_path, dataset, out=str(out), cuda_graph=graph, **common))
        assert ("the whole step one CUDA graph" in capsys.readouterr().out) == graph
        rows[graph] = metrics(out)
        weights[graph] = [trainer.checkpoint.load_checkpoint(out / f"ckpt_00000{step}.pt")["model"] for step in (1, 8)]
    plain, graphed = rows[False], rows[True]
    assert len(graphed) == 8 and graphed[0]["loss"] == plain[0]["loss"]
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in graphed] == pytest.approx([r[key] for r in plain], rel=1e-4, abs=0), key
    assert all(r["grad_norm"] > 0.05 for r in plain)  # every step clipped
    assert [r["lr"] for r in graphed] == [r["lr"] for r in plain] and len({r["lr"] for r in plain}) > 3

    def norm(a: dict, b: dict) -> float:
        return math.sqrt(sum(float((a[k].double() - b[k].double()).square().sum()) for k in a))

    moved = norm(weights[False][1], weights[False][0])  # steps 2-8 of the plain run
    assert moved > 0.1 and norm(weights[True][1], weights[False][1]) < 1e-3 * moved


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_each_cuda_graph_replay_draws_new_dropout_masks(tmp_path, dataset, dropout):
    """One batch, replayed with a learning rate too small to move the weights (by 1e-30 at
    most, nothing against an activation in fp32): the loss repeats exactly without dropout, and
    differs with it (a replay that reused the capture's mask would repeat it too)."""
    c = cfg(tmp_path, dataset, bench=True, compile=False, dtype="fp32", cuda_graph=True, dropout=dropout,
            weight_decay=0.0)
    with contextlib.ExitStack() as stack:
        s = train.prepare(c, stack)
        x, y = s.train_loader.next_batch(s.rt.device)
        weights = [p.detach().clone() for p in s.parts.params]
        values = [trainer.step.train_step(s.parts, lambda: (x, y), 1e-30)[0].item() for _ in range(3)]
        assert max((p - w).abs().max().item() for p, w in zip(s.parts.params, weights)) < 1e-20
    assert (len(set(values)) == 1) == (dropout == 0.0), values
