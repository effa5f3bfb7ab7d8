"""Pretraining step speed: our batched MSPM step against the official SSAST step's structure,
(``--method asit``) the ASiT step beside MSPM's, and (``--method eat``) the EAT step beside
ASiT's and MSPM's, all on the same clips in one run.

One optimizer step is timed: ``zero_grad`` + masking + forward + losses + backward +
``optimizer.step()`` (each method's own optimizer, its class defaults: SSAST's Adam for MSPM).
The input is a random ``[B, frames, 128]`` normalized log-mel already in memory, so the
fbank is not timed. Each variant gets a fresh model with the same seed and its warm-up
steps; then the timed steps go round-robin, one step of each variant per round, so that a
slow spell of a shared machine hits all of them alike. ``step_s`` is the median of
``--steps`` timed steps. The variants:

* ``passes`` (``1``, ``2`` or ``1,2``): ``pretrain.mspm.MSPM.step`` (batched masks, no
  Python loop over clips); ``2`` runs one encoder pass per objective, ``1`` shares one;
* ``official_style``: :func:`official_style_step`, our re-implementation of the official
  SSAST code's algorithmic structure (its code cannot be run here: nothing may be
  downloaded). Masks are built clip by clip with a Python ``while`` loop over random block
  starts; two encoder passes with their own masks, each putting the mask token in clip by
  clip; the predictions, targets, InfoNCE and MSE are gathered and computed clip by clip;
  attention is explicit, ``softmax(q k^T / sqrt(d)) v``, as in the timm ViT the official
  code is built on. It uses the same encoder weights and heads as ``MSPM``, so only the
  implementation differs (``tflop_per_step`` of it and of ``passes=2`` should match).

* ``asit`` (with ``--method asit``): one ASiT step, ``pretrain.asit.ASiT``: two
  ``--view-frames`` views cut from each ``--frames`` clip, GMML corruption, teacher and
  student passes, the three losses, per-tensor gradient clipping, AdamW, then the centers
  and the EMA teacher updated; the MSPM variants run beside it on the same clips, and
  ``ratio_asit_vs_passes{1,2}`` compare them.

* ``eat`` (with ``--method eat``): one EAT step, ``pretrain.eat.EAT`` as its paper recipe
  sets it (the class defaults) at ``--size``: ``--clone-batch`` masked clones of
  each clip (80% inverse block masks), one teacher pass per clip, the student on the visible
  tokens, the CNN decoder, both losses, AdamW (0.9, 0.95), then the EMA teacher; ASiT and the
  MSPM variants run beside it, and ``ratio_eat_vs_{asit,passes1,passes2}`` compare them.
  (The recipe's global-norm gradient clip is the trainer's and is not timed.)

Precision and compilation: ``--precision fp32,bf16`` and ``--compile eager,compiled`` time
every method in every combination (``compiled``: the ``compile`` option of the methods,
``torch.compile`` on the transformer blocks; the compilation happens in the untimed first
step, whose FLOPs are then not counted). The first combination fills the top-level fields
as before; ``variants`` holds them all, keyed ``"<precision>/<eager|compiled>"``.

``ratio_passes{1,2}_vs_official`` are ``step_s`` over ``official_style_step_s``, measured in
the same run (lower is better). ``official_reference_s`` is a constant, not a measurement:
the task's figure for the official code itself, about 1.95 s per step on a 2-core CPU
machine like ours (tiny, batch 4, 1024 frames); compare with it only on such a machine.

``tflop_per_step`` counts one training step with ``FlopCounterMode`` outside the timed
steps (on CPU with the math attention kernel, whose matmuls the counter sees; grouped
convolutions' weight gradients counted per group, which torch's own formula does not). On CUDA,
fp32 uses TF32 matmuls, bf16 runs under ``torch.autocast``, ``peak_mem_mb`` is
``torch.cuda.max_memory_allocated`` while the variant is built and warmed up, less what was
allocated before (the input and the other variants), and ``mfu`` (bf16 only) is achieved
over the GPU's peak dense bf16 TFLOP/s from ``benchmarks/encoder.py``'s table. On CPU,
``peak_mem_mb`` is the process's peak resident set so far (``ru_maxrss``), so it only grows
from one variant to the next.

``matmul`` is this machine's own ceiling, measured in the same rounds as the steps: one
``[tokens, D] @ [D, 4D]`` product per clip (the feed-forward's first matrix at the run's
size and token count), in the step's precision. Each variant's ``matmul_ratio`` is its
counted FLOP/s over the matmul's: what stands in for MFU on a CPU, where no peak is
published. A step well below the encoder's own ratio loses time to something other than its
matrix products (masking, gathers, clones, the teacher, the optimizer, Python loops).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode, conv_backward_flop

from pretrain.base import PretrainModule, optimization_step
from pretrain.asit import ASiT
from pretrain.eat import EAT
from pretrain.mspm import MSPM, patchify
from ssast.encoder import SIZES
from ssast.heads import PatchPredictionHead
from ssast.masking import GmmlOptions

MEL_BINS = 128
OFFICIAL_REFERENCE_S = 1.95
OFFICIAL_ROW = 64  # the official cluster masks step rows by 64: the time width of its 1024-frame grid
GEOMETRIES: dict[str, dict[str, int]] = {"patch": {"fshape": 16, "tshape": 16}, "frame": {"fshape": 128, "tshape": 2}}
Step = Callable[[torch.Tensor], None]


def build_mspm(size: str, geometry: str, frames: int, mask_patches: int, passes: int, compile: bool = False) -> MSPM:
    return MSPM(size=size, input_tdim=frames, mask_patches=mask_patches, passes=passes, compile=compile,
                **GEOMETRIES[geometry])


def build_asit(size: str, geometry: str, frames: int, view_frames: int, align: int, compile: bool = False) -> ASiT:
    """ASiT with its paper's defaults (the class's), at this size."""
    return ASiT(size=size, input_tdim=frames, view_frames=view_frames, gmml=GmmlOptions(align=align), compile=compile,
                **GEOMETRIES[geometry])


def build_eat(size: str, geometry: str, frames: int, clone_batch: int, compile: bool = False) -> EAT:
    """EAT with its paper's defaults (the class's), at this size."""
    return EAT(size=size, input_tdim=frames, clone_batch=clone_batch, compile=compile, **GEOMETRIES[geometry])


def method_optimizer(model: PretrainModule) -> torch.optim.Optimizer:
    """The method's own optimizer (its class defaults) at its base lr."""
    return model.build_optimizer(lr=model.optimization.lr)


def official_mask_ids(num_patches: int, num_masked: int, cluster: bool) -> list[int]:
    """One clip's masked patch indices, drawn the way the official code draws them."""
    if not cluster:
        return random.sample(range(num_patches), num_masked)
    ids: list[int] = []
    while len(set(ids)) <= num_masked:
        start, side = random.randrange(num_patches), random.randrange(3) + 3
        ids += [c for i in range(side) for j in range(side) if 0 < (c := start + OFFICIAL_ROW * i + j) < num_patches]
    return list(set(ids))[:num_masked]


def official_style_pass(
    model: MSPM, fbank: torch.Tensor, targets: torch.Tensor, head: PatchPredictionHead
) -> tuple[torch.Tensor, torch.Tensor]:
    """One masked encoder pass with per-clip loops; ``(predictions, targets)`` ``[B, M, P]``."""
    encoder, batch, count = model.encoder, len(fbank), model.mask_patches
    index = torch.empty(batch, count, dtype=torch.long, device=fbank.device)
    x = encoder.patch_embed(fbank)
    for i in range(batch):
        ids = torch.tensor(official_mask_ids(encoder.config.num_patches, count, model.cluster), device=fbank.device)
        index[i] = ids  # (autograd keeps ids, which index[i + 1] = ... must not overwrite)
        x[i, ids, :] = encoder.mask_embed[0].to(x.dtype)
    x = torch.cat([encoder.lead_tokens(batch).to(x.dtype), x], dim=1) + encoder.pos_embed
    for block in encoder.blocks:
        x = block(x)
    x = encoder.norm(x)
    predictions = torch.empty(batch, count, targets.shape[-1], device=fbank.device)
    chosen = torch.empty_like(predictions)
    for i in range(batch):
        predictions[i] = head(x[i, index[i] + encoder.num_lead_tokens, :])
        chosen[i] = targets[i, index[i], :]
    return predictions, chosen


def official_style_step(model: MSPM, optimizer: torch.optim.Optimizer, fbank: torch.Tensor, autocast: bool) -> None:
    """Two passes (discriminative, then generative), per-clip InfoNCE and MSE, Adam step.

    Attention runs as explicit ``softmax(q k^T / sqrt(d)) v`` (the math kernel), as the
    timm ViT attention of the official code does; everything else is the same model."""
    optimizer.zero_grad(set_to_none=True)
    config = model.encoder.config
    targets = patchify(fbank, config.fshape, config.tshape)
    explicit_attention = sdpa_kernel(SDPBackend.MATH)
    with explicit_attention, torch.autocast(fbank.device.type, dtype=torch.bfloat16, enabled=autocast):
        predictions, chosen = official_style_pass(model, fbank, targets, model.discriminative_head)
        batch, count = predictions.shape[:2]
        nce, correct = fbank.new_zeros(()), fbank.new_zeros(())
        for i in range(batch):
            scores = chosen[i] @ predictions[i].T
            own = torch.arange(count, device=fbank.device)
            correct += (scores.softmax(dim=-1).argmax(dim=0) == own).sum()
            nce += scores.log_softmax(dim=-1).diagonal().sum()
        nce = nce / (-batch * count)
        generated, chosen = official_style_pass(model, fbank, targets, model.generative_head)
        mse = fbank.new_zeros(())
        for i in range(batch):
            mse += ((generated[i] - chosen[i]) ** 2).sum()
        mse = mse / generated.numel()
    (nce + model.mse_weight * mse).backward()
    optimizer.step()


def method_step(model: PretrainModule, optimizer: torch.optim.Optimizer, fbank: torch.Tensor, autocast: bool) -> None:
    """The method's own training step (:func:`pretrain.base.optimization_step`): its
    ``step``, backward, its gradient hooks (ASiT: per-tensor clipping, the weight-decay
    schedule), the optimizer, then its updates (ASiT: centers and EMA teacher)."""
    optimization_step(model, optimizer, fbank, autocast)


def conv_backward_flop_with_groups(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                                   output_padding, groups, output_mask, out_shape=None) -> int:
    """torch's count of a convolution's backward, corrected for groups: its weight-gradient
    term pairs every input with every output channel, where a grouped convolution pairs them
    within groups only (``groups`` times fewer; EAT's decoder has 16). The input gradient is
    counted right."""
    count = conv_backward_flop.__wrapped__  # torch's formula on shapes (the registered one takes tensors)
    args = (grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding, groups)
    grad_input = count(*args, [output_mask[0], False, False], out_shape=out_shape)
    grad_weight = count(*args, [False, output_mask[1], False], out_shape=out_shape)
    return grad_input + grad_weight // groups


def prepare(build: Callable[[], Step], fbank: torch.Tensor, warmup: int,
            count_flops: bool = True) -> tuple[Step, int | None, float]:
    """Build a variant, count one step's FLOPs (also its first warm-up step; a compiled
    variant's first step compiles instead, uncounted) and warm it up; returns the step, its
    FLOPs and its peak memory in MiB."""
    cuda = fbank.device.type == "cuda"
    if cuda:
        before = torch.cuda.memory_allocated(fbank.device)
        torch.cuda.reset_peak_memory_stats(fbank.device)
    step = build()
    kernel = sdpa_kernel(SDPBackend.MATH) if not cuda else contextlib.nullcontext()
    counter = (FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward:
                                                              conv_backward_flop_with_groups})
               if count_flops else contextlib.nullcontext())
    with kernel, counter:
        step(fbank)
    flops = counter.get_total_flops() if count_flops else None
    for _ in range(warmup):
        step(fbank)
    if cuda:
        torch.cuda.synchronize(fbank.device)
        return step, flops, (torch.cuda.max_memory_allocated(fbank.device) - before) / 2**20
    return step, flops, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB


def matmul_step(clips: int, tokens: int, dim: int, device: torch.device, dtype: torch.dtype) -> tuple[Step, int]:
    """``clips`` products ``[tokens, dim] @ [dim, 4 dim]`` as a step, and their FLOPs."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(tokens, dim, generator=generator).to(device, dtype)
    right = torch.randn(dim, 4 * dim, generator=generator).to(device, dtype)

    def step(_: torch.Tensor) -> None:
        for _ in range(clips):
            torch.mm(left, right)
    return step, 2 * clips * tokens * dim * 4 * dim


def time_round_robin(steps: dict[str, Step], fbank: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per step of each variant, one step of each per round, so that a slow
    spell of a shared machine hits every variant alike."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            if fbank.device.type == "cuda":
                torch.cuda.synchronize(fbank.device)
            start = time.perf_counter()
            step(fbank)
            if fbank.device.type == "cuda":
                torch.cuda.synchronize(fbank.device)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def peak_bf16_tflops(device_name: str) -> float | None:
    """``benchmarks/encoder.py``'s table (``benchmarks`` is no package, so load it by path)."""
    spec = importlib.util.spec_from_file_location("_encoder_benchmark", Path(__file__).with_name("encoder.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.peak_bf16_tflops(device_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=("mspm", "asit", "eat"), default="mspm",
                        help="asit: time ASiT's step beside MSPM's; eat: EAT's beside ASiT's and MSPM's")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--geometry", choices=sorted(GEOMETRIES), default="patch")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--mask-patches", type=int, default=400)
    parser.add_argument("--passes", default="1,2", help="1, 2 or a comma list such as 1,2")
    parser.add_argument("--view-frames", type=int, default=592, help="asit, eat: frames of each of ASiT's two views")
    parser.add_argument("--align", type=int, default=1, help="asit, eat: GMML block alignment (1 or 16)")
    parser.add_argument("--clone-batch", type=int, default=16, help="eat: masked clones of each clip (paper: 16)")
    parser.add_argument("--alone", action="store_true",
                        help="time the named method only: no MSPM or ASiT beside it, no official-style step")
    parser.add_argument("--skip-official", action="store_true",
                        help="do not time the official-style step (always skipped with --method asit or eat)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", help="fp32, bf16 or fp32,bf16; default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--compile", default="eager", help="eager, compiled or eager,compiled")
    parser.add_argument("--warmup", type=int, help="untimed steps after the FLOP count; default 3 on CUDA, 1 on CPU")
    parser.add_argument("--steps", type=int, help="timed steps, median reported; default 20 on CUDA, 3 on CPU")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    precisions = [p.strip() for p in (args.precision or ("bf16" if cuda else "fp32")).split(",") if p.strip()]
    modes = [m.strip() for m in args.compile.split(",") if m.strip()]
    if not precisions or set(precisions) - {"fp32", "bf16"} or not modes or set(modes) - {"eager", "compiled"}:
        parser.error("--precision takes fp32 and/or bf16, --compile eager and/or compiled")
    combos = [(precision, mode) for precision in precisions for mode in modes]
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    steps = args.steps or (20 if cuda else 3)
    passes = [int(p) for p in args.passes.split(",") if p.strip()]
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    peak_tflops = peak_bf16_tflops(device_name) if cuda and "bf16" in precisions else None
    fbank = torch.randn(args.batch, args.frames, MEL_BINS, generator=torch.Generator().manual_seed(0)).to(device)

    def builder(official: bool, num_passes: int, autocast: bool, compiled: bool) -> Callable[[], Step]:
        def build() -> Step:
            torch.manual_seed(0)
            random.seed(0)
            model = build_mspm(args.size, args.geometry, args.frames, args.mask_patches, num_passes,
                               compiled).to(device)
            optimizer = method_optimizer(model.train())
            variant = official_style_step if official else method_step
            return lambda x: variant(model, optimizer, x, autocast)
        return build

    def build_asit_step(autocast: bool, compiled: bool) -> Callable[[], Step]:
        def build() -> Step:
            torch.manual_seed(0)
            model = build_asit(args.size, args.geometry, args.frames, args.view_frames, args.align,
                               compiled).to(device).train()
            optimizer = method_optimizer(model)
            return lambda x: method_step(model, optimizer, x, autocast)
        return build

    def build_eat_step(autocast: bool, compiled: bool) -> Callable[[], Step]:
        def build() -> Step:
            torch.manual_seed(0)
            model = build_eat(args.size, args.geometry, args.frames, args.clone_batch, compiled).to(device).train()
            optimizer = method_optimizer(model)
            return lambda x: method_step(model, optimizer, x, autocast)
        return build

    # Every variant of every combination, timed round-robin together.
    builders: dict[tuple[str, str], Callable[[], Step]] = {}
    for precision, mode in combos:
        combo, autocast, compiled = f"{precision}/{mode}", precision == "bf16", mode == "compiled"
        if args.method == "mspm" or not args.alone:
            for p in passes:
                builders[combo, f"passes{p}"] = builder(False, p, autocast, compiled)
        if args.method == "asit" or (args.method == "eat" and not args.alone):
            builders[combo, "asit"] = build_asit_step(autocast, compiled)
        if args.method == "eat":
            builders[combo, "eat"] = build_eat_step(autocast, compiled)
        elif args.method == "mspm" and not (args.skip_official or args.alone) and not compiled:
            builders[combo, "official_style"] = builder(True, 2, autocast, False)
    prepared = {key: prepare(build, fbank, warmup, count_flops=key[0].endswith("eager"))
                for key, build in builders.items()}
    dim = SIZES[args.size][0]
    grid = GEOMETRIES[args.geometry]
    tokens = (MEL_BINS // grid["fshape"]) * (args.frames // grid["tshape"]) + 2
    matmuls = {precision: matmul_step(args.batch, tokens, dim, device, torch.bfloat16 if precision == "bf16"
                                      else torch.float32) for precision in precisions}
    for step, _ in matmuls.values():
        for _ in range(warmup + 1):
            step(fbank)
    medians = time_round_robin({key: step for key, (step, _, _) in prepared.items()}
                               | {(precision, "matmul"): step for precision, (step, _) in matmuls.items()},
                               fbank, steps)
    matmul_flop_s = {precision: flops / medians[precision, "matmul"] for precision, (_, flops) in matmuls.items()}
    variants: dict[str, dict[str, dict[str, Any]]] = {f"{p}/{m}": {} for p, m in combos}
    for (combo, name), (_, flops, memory) in prepared.items():
        eager_flops = prepared.get((combo.split("/")[0] + "/eager", name), (None, None))[1]
        flops = flops if flops is not None else eager_flops  # compiling changes how, not what, is computed
        result = {"step_s": round(medians[combo, name], 4), "peak_mem_mb": round(memory, 1)}
        if flops is not None:
            result["tflop_per_step"] = round(flops / 1e12, 4)
            result["matmul_ratio"] = round(flops / medians[combo, name] / matmul_flop_s[combo.split("/")[0]], 3)
            if peak_tflops is not None and combo.startswith("bf16"):
                result["mfu"] = round(flops / 1e12 / medians[combo, name] / peak_tflops, 4)
        variants[combo][name] = result

    first = f"{combos[0][0]}/{combos[0][1]}"
    results = variants[first]
    report: dict[str, Any] = {
        "benchmark": "pretrain_step", "method": args.method, "device": str(device), "device_name": device_name,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "size": args.size,
        "geometry": args.geometry, "batch": args.batch, "frames": args.frames, "mask_patches": args.mask_patches,
        "precision": combos[0][0], "compile": combos[0][1], "warmup": warmup, "steps": steps,
        "peak_mem_kind": "cuda_max_memory_allocated" if cuda else "process_peak_rss_so_far",
        "load_avg_1m_after": round(os.getloadavg()[0], 2),  # above ~threads: other processes shared the CPU
    }
    if peak_tflops is not None:
        report["peak_bf16_tflop_s"] = peak_tflops
    report["matmul"] = {"shape": [tokens, dim, 4 * dim], "per_step": args.batch,
                        **{f"{precision}_tflop_s": round(flop_s / 1e12, 4) for precision, flop_s in matmul_flop_s.items()}}
    timed_passes = [p for p in passes if f"passes{p}" in results]
    if timed_passes:
        report["passes"] = {str(p): results[f"passes{p}"] for p in timed_passes}
    if "asit" in results:
        report |= {"view_frames": args.view_frames, "align": args.align, "asit": results["asit"]}
        for p in timed_passes:
            report[f"ratio_asit_vs_passes{p}"] = round(results["asit"]["step_s"] / results[f"passes{p}"]["step_s"], 3)
    if "eat" in results:
        report |= {"clone_batch": args.clone_batch, "eat": results["eat"]}
        if "asit" in results:
            report["ratio_eat_vs_asit"] = round(results["eat"]["step_s"] / results["asit"]["step_s"], 3)
        for p in timed_passes:
            report[f"ratio_eat_vs_passes{p}"] = round(results["eat"]["step_s"] / results[f"passes{p}"]["step_s"], 3)
    if "official_style" in results:
        official = results["official_style"]
        report |= {"official_style": official, "official_style_step_s": official["step_s"]}
        for p in passes:
            report[f"ratio_passes{p}_vs_official"] = round(results[f"passes{p}"]["step_s"] / official["step_s"], 3)
        report["official_reference_s"] = OFFICIAL_REFERENCE_S
    report["variants"] = variants
    print(json.dumps(report))


if __name__ == "__main__":
    main()
