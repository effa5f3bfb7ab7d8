"""Training-step speed of the AST encoder: forward + backward time per batch.

A random ``[B, 1024, 128]`` log-mel goes through ``ASTEncoder`` of each ``--sizes``; the
loss is ``encoder(x).float().pow(2).mean()`` and ``loss.backward()`` is timed with the
forward (grads are zeroed before each step). After warm-up steps, the median of ``--steps``
timed steps is reported, with clips/s and the parameter count. ``--geometry`` picks the grid:

* ``patch``: 16x16 patches at stride 16, 512 patches (patch pretraining);
* ``finetune``: 16x16 patches at stride 10, 1212 patches (patch finetuning);
* ``frame``: 128x2 patches at stride 128x2, 512 patches (frame pretraining).

``tflop_per_batch`` is one forward + backward counted by ``FlopCounterMode`` outside the timed
steps (on CPU with the math attention kernel, whose matmuls the counter sees), and
``tflop_per_s`` is that over the median time. On CUDA, fp32 runs with TF32 matmuls, bf16 runs
under ``torch.autocast``, peak memory is ``torch.cuda.max_memory_allocated``, and ``mfu`` (bf16
only) is achieved over the GPU's peak dense bf16 TFLOP/s, a vendor datasheet number from the
table below (null for a GPU not in it). On CPU, ``process_max_rss_gib`` is the peak resident
set of the whole process so far (``ru_maxrss``), not of one size alone. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ssast.encoder import ASTEncoder, EncoderConfig

FRAMES, MEL_BINS = 1024, 128
GEOMETRIES: dict[str, dict[str, int]] = {
    "patch": {"fshape": 16, "tshape": 16, "fstride": 16, "tstride": 16},
    "finetune": {"fshape": 16, "tshape": 16, "fstride": 10, "tstride": 10},
    "frame": {"fshape": 128, "tshape": 2, "fstride": 128, "tstride": 2},
}
# Vendor dense (no sparsity) bf16 TFLOP/s; the first name fragment found in the device name wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
)


def peak_bf16_tflops(device_name: str) -> float | None:
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS if fragment in device_name), None)


def train_step(encoder: ASTEncoder, x: torch.Tensor, autocast: bool) -> None:
    encoder.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = encoder(x).float().pow(2).mean()
    loss.backward()


def count_flops(encoder: ASTEncoder, x: torch.Tensor) -> int:
    # The counter has no formula for CPU's fused attention kernel; the math kernel's matmuls it counts.
    kernel = sdpa_kernel(SDPBackend.MATH) if x.device.type == "cpu" else contextlib.nullcontext()
    with kernel, FlopCounterMode(display=False) as counter:
        train_step(encoder, x, autocast=False)
    return counter.get_total_flops()


def time_steps(
    encoder: ASTEncoder, x: torch.Tensor, autocast: bool, warmup: int, steps: int, flops: int
) -> dict[str, Any]:
    cuda = x.device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(x.device)
    for _ in range(warmup):
        train_step(encoder, x, autocast)
    seconds = []
    for _ in range(steps):
        if cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        train_step(encoder, x, autocast)
        if cuda:
            torch.cuda.synchronize(x.device)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    result: dict[str, Any] = {
        "ms_per_batch": round(median * 1e3, 2),
        "clips_per_s": round(len(x) / median, 2),
        "tflop_per_s": round(flops / 1e12 / median, 3),
    }
    if cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(x.device) / 2**30, 3)
    else:
        result["process_max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return result


def bench_size(
    size: str, geometry: str, device: torch.device, batch_size: int, warmup: int, steps: int, peak: float | None
) -> dict[str, Any]:
    config = EncoderConfig.from_size(size, input_tdim=FRAMES, input_fdim=MEL_BINS, **GEOMETRIES[geometry])
    encoder = ASTEncoder(config).to(device).train()
    x = torch.randn(batch_size, FRAMES, MEL_BINS, device=device)
    flops = count_flops(encoder, x)
    result: dict[str, Any] = {
        "params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 3),
        "num_patches": config.num_patches,
        "tflop_per_batch": round(flops / 1e12, 4),
    }
    precisions = {"fp32": False, "bf16": True} if device.type == "cuda" else {"fp32": False}
    for name, autocast in precisions.items():
        timing = time_steps(encoder, x, autocast, warmup, steps, flops)
        if autocast:
            timing["mfu"] = round(timing["tflop_per_s"] / peak, 4) if peak else None
        result[name] = timing
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,base", help="comma-separated: tiny, small, base")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="patch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="default 32 on CUDA, 2 on CPU")
    parser.add_argument("--warmup", type=int, help="untimed steps first; default 3 on CUDA, 1 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps, median reported; default 20 on CUDA, 3 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (32 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    steps = args.steps or (20 if cuda else 3)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak = peak_bf16_tflops(device_name) if cuda else None

    results = {}
    for size in (name.strip() for name in args.sizes.split(",") if name.strip()):
        results[size] = bench_size(size, args.geometry, device, batch_size, warmup, steps, peak)
    report: dict[str, Any] = {
        "benchmark": "encoder", "device": str(device), "device_name": device_name, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "frames": FRAMES, "mel_bins": MEL_BINS, "geometry": args.geometry,
        "batch_size": batch_size, "warmup": warmup, "steps": steps,
    }
    if cuda:
        report |= {"tf32": True, "peak_bf16_tflop_s": peak}
    print(json.dumps(report | {"results": results}))


if __name__ == "__main__":
    main()
