"""Model FLOPs utilisation: achieved training FLOP/s as a fraction of the GPU's peak.

MFU is the figure that tells how fast "as fast as the hardware allows" is: tokens/s alone
cannot be compared across model sizes or GPUs. The FLOPs per token come from
`GPTConfig.flops_per_token` (one definition); this module only knows peak throughputs.
"""

from __future__ import annotations

import functools
import re

# Dense (no 2:4 sparsity) 16-bit tensor-core peak FLOP/s from NVIDIA's datasheets: bf16's (fp16's
# is the same on these GPUs), and fp16's on the GPUs whose tensor cores have no bf16 (Volta,
# Turing: train.py's --dtype auto trains in fp16 there), matched by substring of
# torch.cuda.get_device_name() (e.g. "NVIDIA H100 80GB HBM3"), case-insensitive, that no digit
# follows ("A100" is not "RTX A1000"; "GH200" is an H200).
# Order matters: the first match wins, so specific variants come before their family name.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),  # lower clocks and power than the SXM part
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200 NVL", 835e12),  # PCIe card, lower power: 1,671 TFLOPS with sparsity in the datasheet
    ("H200", 989e12),  # SXM (and GH200): the H100 chip with more and faster memory, same peak
    ("A100", 312e12),  # SXM and PCIe alike
    ("V100S", 130e12),  # fp16 (PCIe)
    ("V100-PCIE", 112e12),  # fp16; torch names them "Tesla V100-PCIE-32GB"
    ("V100", 125e12),  # fp16 (SXM2)
    ("T4", 65e12),  # fp16 ("Tesla T4"; a T400 is not one: a digit follows)
)


def peak_flops(device_name: str) -> float | None:
    """Dense 16-bit peak FLOP/s of the GPU called `device_name` (bf16's, or fp16's where its tensor
    cores have no bf16), or None if it is not in the table or is a MIG slice of one.

    None rather than a guess: an MFU computed against the wrong peak is worse than none. A MIG
    instance is named after its whole GPU ("NVIDIA A100-SXM4-40GB MIG 1g.5gb": 14 of its 108
    SMs): the whole GPU's peak would put its MFU about 8 times too low.
    """
    return _peak_flops(device_name.upper(), PEAK_FLOPS)


@functools.lru_cache(maxsize=64)
def _peak_flops(name: str, table: tuple[tuple[str, float], ...]) -> float | None:
    """peak_flops' search, once per name and table: train.py's metrics ask at every logging
    point (each step by default), and five regular expressions for an H200 took 5 us of it."""
    if re.search(r"\bMIG\b", name):  # a slice, named after its whole GPU
        return None
    for pattern, flops in table:
        if re.search(re.escape(pattern.upper()) + r"(?![0-9])", name):
            return flops
    return None


def mfu(
    tokens_per_s: float, flops_per_token: float, device_name: str, num_devices: int = 1
) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the device's peak is unknown.

    tokens_per_s is the throughput of all `num_devices` GPUs together (for DDP: the global
    batch tokens per second, with num_devices = world size); flops_per_token is the training
    cost per token, `model.flops_per_token(T)`, which counts forward and backward, so this is
    for training steps, not for forward-only evaluation.
    """
    if num_devices < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    peak = peak_flops(device_name)
    if peak is None:
        return None
    return tokens_per_s * flops_per_token / (peak * num_devices)
