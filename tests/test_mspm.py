"""MSPM: the losses against straightforward references, the passes, the schedules."""

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.mspm import MSPM, gather_masked, patchify, unpatchify
from ssast.losses import info_nce
from ssast.masking import cluster_mask
from ssast.schedules import Progress, WarmupCosine, WarmupPlateau

START = Progress(step=0, total_steps=1)


def reference_info_nce(prediction, target):
    """DESIGN.md section 6, clip by clip, as the official code computes it."""
    total_loss, correct = 0.0, 0
    for pred, tgt in zip(prediction, target):
        scores = tgt @ pred.T
        total_loss += torch.diag(torch.log_softmax(scores, dim=-1)).sum()
        probabilities = torch.softmax(scores, dim=-1)
        correct += sum(int(torch.argmax(probabilities[:, j], dim=0) == j) for j in range(len(pred)))
    correct = torch.tensor(float(correct))
    count = prediction.shape[0] * prediction.shape[1]
    return -total_loss / count, correct / count


def test_info_nce_equals_the_reference():
    generator = torch.Generator().manual_seed(0)
    prediction, target = torch.randn(3, 7, 5, generator=generator), torch.randn(3, 7, 5, generator=generator)
    loss, accuracy = info_nce(prediction, target)
    expected_loss, expected_accuracy = reference_info_nce(prediction, target)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
    assert accuracy.item() == pytest.approx(expected_accuracy.item())
    orthogonal = torch.eye(7).expand(2, 7, 7)
    perfect, accuracy = info_nce(orthogonal * 100, orthogonal)
    assert perfect.item() < 1e-3 and accuracy.item() == 1.0
    _, accuracy = info_nce(orthogonal.roll(1, dims=1), orthogonal)
    assert accuracy.item() == 0.0


def test_info_nce_accuracy_is_taken_over_row_softmaxed_scores():
    """Nearly collapsed predictions (one shared vector plus a small part of their own): the
    shared part dominates the raw scores, so an argmax over raw scores names the same target
    for every prediction (accuracy 1/M), while the row softmax cancels it and the official
    accuracy sees that each prediction leans to its own target."""
    target = torch.eye(3)[None]
    shared = torch.tensor([5.0, 2.0, 0.0])
    prediction = shared + 0.1 * torch.eye(3)[None]
    scores = target @ prediction.transpose(1, 2)
    raw = (scores.argmax(dim=1) == torch.arange(3)).float().mean()
    _, accuracy = info_nce(prediction, target)
    assert raw.item() == pytest.approx(1 / 3)
    assert accuracy.item() == 1.0 == reference_info_nce(prediction, target)[1].item()


def test_gather_masked_keeps_position_order():
    values = torch.arange(2 * 6).reshape(2, 6, 1).float()
    mask = torch.tensor([[0, 1, 0, 1, 1, 0], [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert gather_masked(values, mask, 3)[..., 0].tolist() == [[1, 3, 4], [6, 10, 11]]


def test_patchify_matches_the_encoder_token_order_and_inverts():
    fbank = torch.randn(2, 48, 32)  # T=48, F=32: grid 2 x 3 of 16x16 patches
    patches = patchify(fbank, 16, 16)
    assert patches.shape == (2, 6, 256)
    f_row, t_col = divmod(4, 3)  # token 4: frequency row 1, time column 1
    expected = fbank[1, t_col * 16 : (t_col + 1) * 16, f_row * 16 : (f_row + 1) * 16].T.flatten()
    assert torch.equal(patches[1, 4], expected)
    assert torch.equal(unpatchify(patches, 16, 16, 48, 32), fbank)


def tiny_mspm(**changes) -> MSPM:
    settings = dict(size="tiny", input_tdim=64, mask_patches=20)
    torch.manual_seed(0)
    return MSPM(**{**settings, **changes})


@pytest.mark.parametrize("passes", [1, 2])
def test_losses_follow_the_method(passes):
    model = tiny_mspm(passes=passes)
    calls = []
    model.encoder.register_forward_hook(lambda module, args, out: calls.append(args[1]))
    fbank = torch.randn(3, 64, 128)
    out = model.step(fbank, START)
    assert len(calls) == 1 and len(calls[0]) == 3 * passes  # two passes: both masked copies in one batched call
    assert calls[0].sum(1).eq(20).all()
    assert out["loss"].item() == pytest.approx(out["nce"].item() + 10 * out["mse"].item(), rel=1e-5)
    # The generative loss, recomputed by hand from the encoder's output at the masked patches.
    generative_mask = calls[0][-3:]
    with torch.no_grad():
        tokens = model.encoder.patch_tokens(model.encoder(fbank, generative_mask))
        predicted = model.generative_head(tokens[generative_mask].reshape(3, 20, -1))
        target = patchify(fbank, 16, 16)[generative_mask].reshape(3, 20, -1)
    assert out["mse"].item() == pytest.approx(F.mse_loss(predicted, target).item(), rel=1e-4)
    out["loss"].backward()
    for module in (model.encoder.blocks[0], model.discriminative_head, model.generative_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert model.encoder.mask_embed.grad.abs().sum() > 0


def test_two_passes_use_independent_masks_and_patch_models_cluster():
    model = tiny_mspm(passes=2)
    masks = []
    model.encoder.register_forward_hook(lambda module, args, out: masks.append(args[1]))
    model.step(torch.randn(4, 64, 128), START)
    assert not torch.equal(masks[0][:4], masks[0][4:])  # the discriminative copies' masks, then the generative
    assert model.cluster and not tiny_mspm(fshape=128, tshape=2).cluster


def test_training_lowers_the_loss():
    model = tiny_mspm(passes=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, betas=(0.95, 0.999))
    fbank = torch.randn(4, 64, 128) * 0.5
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(35):  # the loss falls after a plateau of about 10 steps, later on fewer threads
        out = model.step(fbank, START, generator)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="passes"):
        tiny_mspm(passes=3)
    with pytest.raises(ValueError, match="mask_patches"):
        tiny_mspm(mask_patches=32)  # all 8 x 4 patches


def optimizer_with(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def rates_over(optimizer, schedule, steps: int) -> list[float]:
    """The learning rate now and after each of ``steps`` optimizer steps."""
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


def test_warmup_plateau_schedule():
    optimizer = optimizer_with()
    stairs = WarmupPlateau(optimizer_with(), warmup_steps=4, warmup_every=2)  # SSAST: 1000 in stairs of 50, from 0
    assert rates_over(stairs.optimizer, stairs, 5) == [0.0, 0.0, 0.5, 0.5, 1.0, 1.0]
    schedule = WarmupPlateau(optimizer, warmup_steps=4, factor=0.5, patience=2)
    assert rates_over(optimizer, schedule, 5) == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    for metric, expected in [(0.5, 1.0), (0.4, 1.0), (0.5, 1.0), (0.3, 0.5), (0.6, 0.5), (0.6, 0.5)]:
        schedule.report(metric)  # best 0.5; three reports without improvement halve the rate
        assert optimizer.param_groups[0]["lr"] == expected
    assert rates_over(optimizer, schedule, 1)[-1] == 0.5  # the next step keeps the reduction
    resumed = WarmupPlateau(optimizer_with(), warmup_steps=4)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.scale == 0.5 and resumed.best == 0.6 and resumed.get_lr() == [0.5]


def official_pretraining_rates(lr: float, epoch_iter: int, metrics: list[float], patience: int = 2) -> list[float]:
    """The rate of every step of SSAST's pretraining loop (``src/traintest_mask.py``): the
    warmup sets ``g / 1000 * lr`` when ``g <= 1000 and g % 50 == 0``, and every
    ``epoch_iter`` steps ``ReduceLROnPlateau(mode="max", factor=0.5)`` takes the eval accuracy."""
    optimizer = optimizer_with(lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=patience)
    rates, reports = [], iter(metrics)
    for g in range(epoch_iter * len(metrics)):
        if g <= 1000 and g % 50 == 0:
            optimizer.param_groups[0]["lr"] = g / 1000 * lr
        rates.append(optimizer.param_groups[0]["lr"])
        if (g + 1) % epoch_iter == 0:
            plateau.step(next(reports))
    return rates


@pytest.mark.parametrize("epoch_iter", [800, 4000])
def test_the_plateau_schedule_gives_the_official_loops_rate_at_every_step(epoch_iter):
    """``mspm_*_tiny`` (5e-4, checks every 800 steps) and the base recipes (1e-4, every
    4,000): the rate of each step, with improvements, ties, gains under the threshold and
    several halvings, as the official loop sets it."""
    lr = 5e-4 if epoch_iter == 800 else 1e-4
    metrics = [0.1, 0.2, 0.3, 0.3, 0.30001, 0.29, 0.31, 0.31, 0.2, 0.31, 0.32, 0.32, 0.32, 0.32, 0.4, 0.1, 0.1, 0.1]
    optimizer = optimizer_with(lr)
    schedule = WarmupPlateau(optimizer, warmup_steps=1000, factor=0.5, patience=2, warmup_every=50)
    ours, reports = [], iter(metrics)
    for step in range(epoch_iter * len(metrics)):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
        if (step + 1) % epoch_iter == 0:  # a validation at the end of each of the recipe's epochs
            schedule.report(next(reports))
    official = official_pretraining_rates(lr, epoch_iter, metrics)
    assert len(set(official)) > 20 and min(official[1000:]) <= lr / 8  # the stairs and three halvings happened
    assert ours == pytest.approx(official, rel=1e-12, abs=0)


def test_warmup_cosine_schedule():
    optimizer = optimizer_with()
    schedule = WarmupCosine(optimizer, warmup_steps=2, total_steps=10, min_lr=0.1)
    rates = rates_over(optimizer, schedule, 10)
    assert rates[:2] == [0.5, 1.0]
    # After 6 steps the schedule is at step 7: 5 of the 8 cosine steps done.
    assert rates[6] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 8)))
    assert rates[-1] == pytest.approx(0.1) and all(a >= b for a, b in zip(rates[1:], rates[2:]))


def test_cluster_mask_is_what_the_module_draws():
    model = tiny_mspm()
    generator = torch.Generator().manual_seed(5)
    expected = cluster_mask(2, model.encoder.grid, 20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(model.sample_mask(2, generator), expected)
