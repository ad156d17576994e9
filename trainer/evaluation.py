"""Validation loss over the val split, and generated samples (GPT-2's tokenizer decodes them).

Both run in eval mode, never through the DDP wrapper: the val loss through the compiled module
(Session.eval_model: eager autocast would materialise fp32 log-probs that compile fuses away),
each rank on its own val windows (val_loss is their mean); samples on the raw model, rank 0's.
Both can be cut short by a stop (CUT), which then says so in its line: a signal does not wait
for a long --eval-steps or --sample-tokens. gpt2_encoding is asked for at start-up where samples
are due, so that missing BPE files fail the run before it trains, not at its first sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from loader import TokenLoader
from model import GPT
from prep.errors import UserError
from trainer.runtime import Runtime
from trainer.timing import Readback

if TYPE_CHECKING:
    import tiktoken


SAMPLE_TOP_K = 50  # sample from the 50 likeliest tokens: readable text from a young model


@torch.no_grad()
def evaluate(model: nn.Module, val_loader: TokenLoader, batches: int, rt: Runtime,
             stop_asked: Callable[[], bool] = lambda: False) -> float | None:
    """Mean validation loss over the same first `batches` val batches every time (the cursor
    is reset), averaged over ranks: evaluations at different steps stay comparable.

    None when `stop_asked()` turned true before its last batch: a stop signal does not wait
    for a long --eval-steps (a preemption's grace period could end before the checkpoint;
    torchrun's is 30 s), and a mean over fewer batches is no val loss to log. Under torchrun
    the ranks must end it at the same batch (each reaches the all-reduce, or none does): each
    batch shares the ranks' flags in a one-element all-reduce, read back a batch later (on
    CUDA the host never waits for the batch under way), so every rank returns None at the
    same batch, one after the first rank was signalled."""
    val_loader.reset()
    model.eval()
    try:
        total = torch.zeros((), device=rt.device)
        shared: Readback | None = None  # under torchrun: the previous batch's flags, on their way
        for _ in range(batches):
            if rt.ddp:
                if shared is not None and shared.get()[0] > 0:  # sync: the flags of a batch before
                    return None
                flags = torch.full((1,), float(stop_asked()), device=rt.device)
                shared = Readback(rt.all_reduce(flags))
            elif stop_asked():
                return None
            x, y = val_loader.next_batch(rt.device)
            with rt.autocast():
                _, loss = model(x, y)
            total += loss.detach().float()
    finally:
        model.train()
    if rt.ddp:
        rt.all_reduce(total)
    return total.item() / (batches * rt.world)  # sync: validation (eval steps only)


CUT = "cut short by the stop"  # an evaluation's or a sample's word for one a stop ended (a signal, or output closed)


def val_loss_line(step: int, val_loss: float | None) -> str:
    """The line an evaluation prints: its val loss, or that a stop cut it short (None)."""
    return f"step {step}: val loss {val_loss:.4f}" if val_loss is not None else f"step {step}: val loss: {CUT}"


class _SampleCut(Exception):
    """Raised between two of a sample's tokens when a stop was asked for meanwhile."""


def sample_text(raw: GPT, rt: Runtime, generator: torch.Generator, tokens: int,
                stop_asked: Callable[[], bool] = lambda: False) -> str | None:
    """A sample from the document start (EOT), decoded with the GPT-2 tokenizer; None when
    `stop_asked()` turned true before its last token: a stop signal does not wait for a long
    --sample-tokens (a preemption's grace period could end before the checkpoint)."""
    def check(_ids: torch.Tensor) -> None:
        if stop_asked():
            raise _SampleCut

    try:
        return sample_texts(raw, rt, generator, tokens, on_token=check)[0]
    except _SampleCut:
        return None


def sample_texts(raw: GPT, rt: Runtime, generator: torch.Generator, tokens: int, prompt: Sequence[int] = (),
                 num: int = 1, temperature: float = 1.0, top_k: int | None = SAMPLE_TOP_K,
                 on_token: Callable[[torch.Tensor], object] | None = None) -> list[str]:
    """`num` samples of `tokens` tokens after EOT + `prompt` (GPT-2 ids: a document's start),
    each decoded with the GPT-2 tokenizer, the prompt included and the EOT not. `on_token`:
    GPT.generate's (each step's new ids as they come)."""
    from prep.tokenizer import EOT, get_encoding

    idx = torch.tensor([EOT, *prompt], dtype=torch.long, device=rt.device).repeat(num, 1)  # (num, 1 + prompt)
    with rt.autocast():
        out = raw.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=generator,
                           on_token=on_token)
    encoding = get_encoding()
    return [encoding.decode(row[1:]) for row in out.tolist()]  # sync: sampling (sample steps only)


def gpt2_encoding(said: str = "") -> tiktoken.Encoding:
    """The GPT-2 tokenizer, or a user error (`said` before its words) where its BPE files are
    missing: asked before the work that needs it (training up to the first sample, sample.py's
    reading of a checkpoint), not at that first sample."""
    from prep.tokenizer import TokenizerError, get_encoding

    try:
        return get_encoding()
    except TokenizerError as e:
        raise UserError(f"{said}{e}") from None
