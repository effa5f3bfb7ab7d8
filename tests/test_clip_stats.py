"""The clip-statistics loss every method can add (``clip_stats_weight``): its target, its
place in each method's loss, and that it teaches the encoder the clip-level spectrum."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pretrain.base import PretrainModule
from pretrain.asit import ASiT
from pretrain.eat import EAT
from pretrain.mspm import MSPM
from ssast.features import logmel_statistics
from ssast.masking import GmmlOptions
from ssast.train.schedules import Progress

START = Progress(step=0, total_steps=1)
# Mini frame models on 64 frames, each method's heads kept small.
METHODS = {
    "mspm": lambda **kw: MSPM(size="mini", fshape=128, tshape=2, input_tdim=64, mask_patches=20, passes=1, **kw),
    "eat": lambda **kw: EAT(size="mini", fshape=128, tshape=2, input_tdim=64, clone_batch=3, decoder_layers=2,
                            decoder_groups=4, **kw),
    "asit": lambda **kw: ASiT(size="mini", fshape=128, tshape=2, input_tdim=64, view_frames=48, cls_dim=32,
                              patch_dim=16, num_lead_tokens=1, gmml=GmmlOptions(align=2), drop_path=0.0, **kw),
}


def built(method: str, **changes) -> PretrainModule:
    torch.manual_seed(0)
    return METHODS[method](**changes)


def clips(batch: int = 2) -> torch.Tensor:
    """Clips whose spectra differ in level and tilt, so their statistics differ."""
    generator = torch.Generator().manual_seed(1)
    tilt = torch.linspace(-1, 1, 128)
    return torch.stack([0.5 * torch.randn(64, 128, generator=generator) + i - i * tilt for i in range(batch)])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_loss_is_added_to_the_methods_own(method):
    """With the same weights and the same random draws, the loss with the term is the loss
    without it plus ``weight * clip_stats``: the method's own terms are untouched."""
    with_term = built(method, clip_stats_weight=2.5)
    without = built(method)
    assert without.clip_stats_head is None
    missing, unexpected = without.load_state_dict(with_term.state_dict(), strict=False)
    assert not missing and unexpected == ["clip_stats_head.weight", "clip_stats_head.bias"]
    fbank = clips()
    out = with_term.step(fbank, START, torch.Generator().manual_seed(0))
    plain = without.step(fbank, START, torch.Generator().manual_seed(0))
    assert "clip_stats" not in plain and out["clip_stats"] > 0
    torch.testing.assert_close(out["loss"] - 2.5 * out["clip_stats"], plain["loss"])


def test_the_target_is_each_clips_statistics_for_every_view_of_it():
    model = built("mspm", clip_stats_weight=1.0)
    fbank = clips(batch=2)
    patches = torch.randn(6, 5, model.encoder.config.embed_dim)  # 3 views of each clip: rows 0-2, then 3-5
    out = model.add_clip_stats({"loss": torch.tensor(1.0)}, patches, fbank)
    prediction = model.clip_stats_head(patches.mean(dim=1))
    target = logmel_statistics(fbank).repeat_interleave(3, dim=0)
    torch.testing.assert_close(out["clip_stats"], F.mse_loss(prediction, target))
    torch.testing.assert_close(out["loss"], 1.0 + out["clip_stats"])
    interleaved = logmel_statistics(fbank).repeat(3, 1)  # clip 0, clip 1, clip 0, ...: the wrong rows
    assert abs(F.mse_loss(prediction, interleaved).item() - out["clip_stats"].item()) > 1e-3


def test_the_statistics_are_learned_through_the_encoder():
    """Trained on the term alone, the encoder's pooled output comes to carry the clips'
    statistics: the loss falls well below where it starts."""
    model = built("mspm", clip_stats_weight=1.0)
    fbank = clips(batch=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(40):
        out = model.step(fbank, Progress(step, 40), torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        out["clip_stats"].backward()
        if step == 0:
            assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(out["clip_stats"].item())
    assert losses[-1] < 0.2 * losses[0]


def test_off_by_default_and_never_negative():
    model = built("mspm")
    assert model.clip_stats_head is None
    assert not any(name.startswith("clip_stats_head") for name in model.state_dict())
    with pytest.raises(ValueError, match="clip_stats_weight"):
        built("mspm", clip_stats_weight=-1.0)
