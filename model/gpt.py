"""GPT-2 in one file: attention, MLP, block, the model, its optimizer and sampling.

Module names follow OpenAI's / Hugging Face's GPT-2 (transformer.h.0.attn.c_attn, ...) so a
reader can map every tensor to the paper's model. Released weights load through
model.hf.from_hf_state_dict: HF stores the four projection weights transposed (Conv1D) and the
token embedding without our padded rows.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import GPTConfig

INIT_STD = 0.02  # GPT-2's initializer_range


def check_token_ids(idx: torch.Tensor) -> None:
    """A ValueError unless idx is (B, T) integer token ids with T >= 1: the embedding's own
    errors say neither (a loader's uint16 window: "Expected ... Long, Int; but got UInt16")."""
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"idx must be (B, T) token ids with T >= 1, got shape {tuple(idx.shape)}")
    if idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"idx must hold int64 (or int32) token ids, got {idx.dtype}: widen it first, "
                         f"e.g. .long() (TokenLoader.next_batch does; targets must be int64)")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t sees only positions <= t.

    q, k and v come from one Linear (one matmul instead of three). The attention itself is
    F.scaled_dot_product_attention(is_causal=True): it picks a flash or memory-efficient
    kernel and never materialises the (T, T) mask or score matrix.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)  # residual projection
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # each (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """The position-wise feed-forward net: C -> 4C -> C with GPT-2's tanh-approximated GELU."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")  # what GPT-2 was trained with
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)  # residual projection
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """A pre-LayerNorm transformer block: the residual stream is never normalised in place,
    which keeps a clean gradient path from the loss to the embeddings."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: token + learned position embeddings, n_layer blocks, a final LayerNorm, and an
    output head tied to the token embedding.

    The token embedding has padded_vocab_size rows so that the lm_head matmul has a fast
    shape; the padded rows are zeroed, hold no real token, and their logits are sliced off, so
    the model only ever predicts (and is scored over) the vocab_size real tokens. forward does
    not check that ids are below vocab_size (that would be a device sync each step): the
    loader's vocab_size check does, as train.py runs it.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                ln_f=nn.LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        # Tied: one (V, C) matrix both embeds tokens and scores them (GPT-2, Press & Wolf 2017);
        # saves V*C parameters. state_dict() lists it under both names, sharing one tensor.
        self.lm_head.weight = self.transformer.wte.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) weights, zero biases, LayerNorm at identity; the two
        projections that add into the residual stream in each block get std 0.02/sqrt(2*n_layer),
        so the stream's variance stays about constant however deep the model is."""
        for module in self.modules():
            if module is self.lm_head:
                continue  # the tied weight is initialised once, as wte
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for block in self.transformer.h:
            for projection in (block.attn.c_proj, block.mlp.c_proj):
                nn.init.normal_(projection.weight, mean=0.0, std=residual_std)
        self.transformer.wte.weight[self.config.vocab_size :].zero_()  # padded rows: never used

    def num_params(self) -> int:
        """All parameters, the tied embedding counted once (parameters() yields it once).
        Equals `self.config.num_params()`; the config's formula needs no model built."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, T: int) -> int:
        """Training FLOPs per token at sequence length T: see `GPTConfig.flops_per_token`."""
        return self.config.flops_per_token(T)

    def _hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """The final-LayerNorm hidden states (B, T, C) for token ids idx (B, T)."""
        check_token_ids(idx)
        T = idx.size(1)
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length T={T} exceeds the model's block_size={self.config.block_size}"
            )
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C) + (T, C) -> (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)  # (B, T, C)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits, loss) for token ids idx (B, T), T <= block_size.

        logits are (B, T, vocab_size) for every position, whether or not targets are given:
        a view of the padded (B, T, padded_vocab_size) lm_head output with the padded ids cut
        off, in the autocast dtype (bf16 under autocast). loss is the mean cross-entropy over
        the real vocabulary against targets (B, T), or None without targets. No .float() is
        taken: F.cross_entropy upcasts inside its log-softmax, and under torch.compile that is
        fused with the loss, so backward keeps only the bf16 logits and two floats per row,
        never an fp32 (B, T, V) tensor (eager autocast does keep fp32 log-probs; compile it).
        """
        padded = self.lm_head(self._hidden(idx))  # (B, T, padded V)
        logits = padded[..., : self.config.vocab_size]  # (B, T, V): a view, padded ids unreachable
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}"
            )
        if targets.dtype != torch.int64:  # cross_entropy's own error names no fix
            raise ValueError(f"targets must hold int64 token ids, got {targets.dtype}: widen them with .long()")
        scores = logits
        if torch.compiler.is_compiling() and padded.size(-1) > logits.size(-1):
            # Compiled: the padded ids' scores set to -inf instead of cut off, the same loss
            # (exp(-inf) = 0 in the softmax's sum). The cut's backward wrote a zero (B, T,
            # padded V) gradient and then copied the real one into it, two passes over the
            # largest tensor of the step (3.5% of a 16x1024 gpt2 step on an H200); the mask is
            # fused into the loss's kernels, whose backward writes the padded gradient at once.
            # (Eager would materialise a masked copy of the logits instead: it keeps the cut.)
            pad = torch.arange(padded.size(-1), device=padded.device) >= logits.size(-1)
            scores = padded.masked_fill(pad, float("-inf"))
        # (B*T, V): merging B and T is a view because the slice left their strides intact
        loss = F.cross_entropy(scores.reshape(-1, scores.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizers(
        self,
        weight_decay: float,
        lr: float,
        betas: tuple[float, float],
        device_type: str,
    ) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices and embeddings (every >= 2-D parameter) only.

        Biases and LayerNorm gains/shifts (1-D) are not decayed: shrinking them toward zero
        does not regularise anything useful and hurts. device_type is a device type or name
        ("cuda", "cuda:1", "cpu", "mps"); on CUDA the fused kernel does the update of all
        parameters in a few launches instead of several per parameter.
        """
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = torch.device(device_type).type == "cuda"
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused)

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
        on_token: Callable[[torch.Tensor], object] | None = None,
    ) -> torch.Tensor:
        """idx (B, T) followed by max_new_tokens sampled tokens: (B, T + max_new_tokens).

        Each step sees the last block_size tokens at most, so any length can be generated.
        temperature scales the logits (0 means greedy argmax); top_k keeps the k likeliest
        tokens; sampling draws from `generator` (on idx's device), so a seeded generator
        reproduces a sample exactly. Only real token ids (< vocab_size) can come out. The
        model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
        Logits that are not finite (weights gone NaN) raise FloatingPointError. `on_token`, if
        given, is called with each step's new ids (B, 1) as they come (to print a sample as it
        grows).
        """
        check_token_ids(idx)  # here too: the loop below slices idx before forward would check it
        try:  # an int or a numpy integer, never a float or a bool
            steps = operator.index(max_new_tokens) if not isinstance(max_new_tokens, bool) else -1
        except TypeError:
            steps = -1
        if steps < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not temperature >= 0:  # nan too
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        was_training = self.training
        self.eval()
        try:
            for _ in range(steps):
                context = idx[:, -self.config.block_size :]  # (B, <= block_size)
                hidden = self._hidden(context)[:, -1, :]  # (B, C): only the last position samples
                logits = self.lm_head(hidden)[:, : self.config.vocab_size].float()  # (B, V)
                # weights gone NaN (a run that diverged): multinomial would raise, argmax pick junk
                if not torch.isfinite(logits).all():  # sync: sampling only
                    raise FloatingPointError("the model's logits are not finite (NaN or inf)")
                # a temperature float32 holds as 0 (below its smallest normal number) is greedy too:
                # dividing by it made the likeliest logit 0/0 = nan
                if temperature < torch.finfo(torch.float32).tiny:
                    next_id = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
                else:  # the max subtracted first: a tiny temperature gives -inf, never inf - inf = nan
                    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
                    if top_k is not None and top_k < logits.size(-1):
                        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = F.softmax(logits, dim=-1)
                    next_id = torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)
                idx = torch.cat((idx, next_id), dim=1)
                if on_token is not None:
                    on_token(next_id)
        finally:
            self.train(was_training)
        return idx


def raw_module(module: nn.Module) -> nn.Module:
    """The plain module under torch.compile's and DDP's / DataParallel's wrappers, in any order.

    Save and load checkpoints through this: the wrappers prefix every state_dict key
    (`_orig_mod.`, `module.`), and a checkpoint should load into a plain GPT.
    """
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile
            module = module._orig_mod
        else:
            return module
