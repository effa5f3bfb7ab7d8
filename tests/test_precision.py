"""Precision and compile switches for every pretraining method: a training step under bf16
autocast (what ``trainer.precision: bf16-mixed`` runs; CPUs run bf16 too), and compiled
blocks (``compile: true``) giving the eager losses."""

from __future__ import annotations

import copy

import pytest
import torch

from pretrain.base import PretrainModule, optimization_step
from pretrain.asit import ASiT
from pretrain.eat import EAT
from pretrain.mspm import MSPM
from ssast.masking import GmmlOptions

FRAME = {"fshape": 128, "tshape": 2}


def build(method: str, **changes) -> PretrainModule:
    """Each method at mini size on short clips: a CPU step in well under a second."""
    torch.manual_seed(0)
    if method == "mspm":
        return MSPM(size="mini", input_tdim=64, mask_patches=20, **changes)
    if method == "asit":
        return ASiT(size="mini", input_tdim=64, view_frames=48, gmml=GmmlOptions(align=16), cls_prototypes=256,
                    patch_prototypes=128, head_hidden_dim=128, head_bottleneck_dim=64, **FRAME, **changes)
    return EAT(size="mini", input_tdim=64, clone_batch=2, num_lead_tokens=1, **changes)


def optimizer(model: PretrainModule) -> torch.optim.Optimizer:
    return model.build_optimizer(lr=1e-4)


@pytest.mark.parametrize("method", ["mspm", "asit", "eat"])
def test_a_training_step_under_bf16_autocast(method):
    model = build(method).train()
    seen = set()
    model.encoder.blocks[0].mlp.fc1.register_forward_hook(lambda m, args, out: seen.add(out.dtype))
    before = copy.deepcopy(model.encoder.state_dict())
    out = optimization_step(model, optimizer(model), torch.randn(2, 64, 128), autocast=True)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32  # losses are summed in float32
    assert seen == {torch.bfloat16}  # the matmuls really ran in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: the weights stay float32
    changed = [not torch.equal(before[name], value) for name, value in model.encoder.state_dict().items()]
    assert any(changed)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mspm", "asit", "eat"])
def test_compiled_blocks_give_the_eager_losses(method):
    fbank = torch.randn(2, 64, 128)
    losses = {}
    for compiled in (False, True):
        model = build(method, compile=compiled).train()
        opt = optimizer(model)
        losses[compiled] = []
        for _ in range(2):  # the second step runs on weights the first (compiled) step moved
            torch.manual_seed(1)  # the same masks, views and noise in both runs
            losses[compiled].append(float(optimization_step(model, opt, fbank)["loss"].detach()))
        if compiled:
            assert model._compiled
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)


def test_compile_is_off_by_default_and_applied_once():
    model = build("eat")
    assert not model.hparams.compile
    model.configure_model()
    assert not model._compiled and "forward_with_ffn" not in vars(model.encoder.blocks[0])
    model = build("eat", compile=True)
    model.configure_model()
    first = vars(model.encoder.blocks[0])["forward_with_ffn"]
    model.configure_model()
    assert vars(model.encoder.blocks[0])["forward_with_ffn"] is first  # not wrapped twice
    assert "forward_with_ffn" in vars(model.teacher.blocks[0])  # the teacher's blocks too
    assert set(model.state_dict()) == set(build("eat").state_dict())  # checkpoints unchanged
