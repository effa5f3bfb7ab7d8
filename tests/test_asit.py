"""ASiT: GMML corruption, EMA teacher, centering, schedules (moving with the step given, in a
loop of its own and under a Trainer) and the three losses."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from pretrain.base import optimization_step
from pretrain.cli import main
from pretrain.asit import ASIT_RECIPE, ASiT
from pretrain.teacher import EMATeacher
from ssast.losses import CenteredDistillation, entropy
from ssast.masking import GmmlOptions, gmml_corrupt
from ssast.schedules import Progress, cosine_ramp, linear_warmup

REPO = Path(__file__).resolve().parents[1]
START = Progress(step=0, total_steps=1, steps_per_epoch=1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def coverage_of(mask: torch.Tensor) -> torch.Tensor:
    return mask.float().mean(dim=(1, 2))


# --- GMML corruption ------------------------------------------------------------------


@pytest.mark.parametrize("align", [1, 16])
def test_coverage_stays_within_the_drawn_range(align):
    fbank = torch.randn(64, 200, 128)
    options = GmmlOptions(coverage=(0.5, 0.7), align=align, replace_probability=0.0)
    _, mask = gmml_corrupt(fbank, options, generator=seeded(align))
    coverage = coverage_of(mask)
    # The last block may overshoot the drawn target by at most one block (30% x 30%).
    assert coverage.min() >= 0.5 and coverage.max() <= 0.7 + 0.3 * 0.3 + 0.01
    assert coverage.std() > 0.03  # targets are drawn per clip, not one for the batch


@pytest.mark.parametrize("align", [1, 16])
def test_a_block_obeys_the_size_and_alignment_limits(align):
    frames, bins = 300, 128
    for seed in range(40):
        # A target this small is reached by the first block: the mask is that block.
        options = GmmlOptions(coverage=(1e-6, 1e-6), align=align, replace_probability=0.0)
        _, mask = gmml_corrupt(torch.randn(1, frames, bins), options, generator=seeded(seed))
        rows, cols = mask[0].nonzero(as_tuple=True)
        t0, t1, f0, f1 = int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1
        assert mask[0, t0:t1, f0:f1].all() and mask.sum() == (t1 - t0) * (f1 - f0)  # one rectangle
        assert t1 - t0 <= max(align, int(0.3 * frames)) and f1 - f0 <= max(align, int(0.3 * bins))
        assert t0 % align == 0 and f0 % align == 0
        assert (t1 - t0) % align == 0 or t1 == frames  # whole cells, except at the far edge
        assert (f1 - f0) % align == 0 or f1 == bins


def test_fills():
    fbank = torch.randn(16, 100, 128) + 3.0
    zeros, mask = gmml_corrupt(fbank, GmmlOptions(fill="zeros", replace_probability=0.0), generator=seeded())
    assert torch.equal(zeros[mask], torch.zeros(int(mask.sum())))
    assert torch.equal(zeros[~mask], fbank[~mask])

    noise, mask = gmml_corrupt(fbank, GmmlOptions(fill="noise", replace_probability=0.0), generator=seeded())
    assert noise[mask].mean().abs() < 0.02 and noise[mask].std() == pytest.approx(0.5, abs=0.02)

    time_stripes, mask = gmml_corrupt(fbank, GmmlOptions(fill="time", replace_probability=0.0), generator=seeded())
    frame_masked = mask.any(dim=2)
    assert torch.equal(mask, frame_masked[..., None].expand_as(mask))  # whole frames
    freq_stripes, mask = gmml_corrupt(fbank, GmmlOptions(fill="freq", replace_probability=0.0), generator=seeded())
    bin_masked = mask.any(dim=1)
    assert torch.equal(mask, bin_masked[:, None].expand_as(mask))  # whole bins


def test_replacement_pastes_the_same_positions_from_another_clip():
    fbank = torch.randn(32, 100, 128)
    corrupted, mask = gmml_corrupt(fbank, GmmlOptions(replace_probability=1.0), generator=seeded())
    partner = fbank.roll(1, dims=0)
    assert torch.equal(corrupted[mask], partner[mask])
    coverage = coverage_of(mask)
    assert coverage.min() >= 0.3 and coverage.max() <= 0.3 + 0.09 + 0.01

    mixed, mask = gmml_corrupt(fbank, GmmlOptions(replace_probability=0.5), generator=seeded(1))
    pasted = (mixed[mask] != 0).view(-1)
    assert 0.2 < pasted.float().mean() < 0.8  # about half the clips pasted, the rest zeroed


def test_bad_settings_are_refused():
    fbank = torch.randn(2, 50, 128)
    with pytest.raises(ValueError, match="coverage"):
        gmml_corrupt(fbank, GmmlOptions(coverage=(0.7, 0.5)))
    with pytest.raises(ValueError, match="fill"):
        gmml_corrupt(fbank, GmmlOptions(fill="blur"))
    with pytest.raises(ValueError, match=r"\[B, T, F\]"):
        gmml_corrupt(fbank[0])


# --- teacher, centers, schedules ------------------------------------------------------


def test_the_ema_teacher_starts_as_its_students_frozen_and_follows_them_by_the_formula():
    pairs = [(torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)), (torch.nn.Linear(2, 4), torch.nn.Linear(2, 4))]
    ema = EMATeacher(pairs, decay=0.9, end_decay=1.0, schedule="cosine")
    for student, teacher in pairs:
        assert all(torch.equal(s, t) for s, t in zip(student.parameters(), teacher.parameters()))
        assert not any(p.requires_grad for p in teacher.parameters())
        assert all(p.requires_grad for p in student.parameters())
        with torch.no_grad():
            teacher.weight.add_(1.0)  # a teacher unlike its student
    before = [[p.detach().clone() for p in teacher.parameters()] for _, teacher in pairs]
    ema.update(START)  # the cosine's first step: decay 0.9
    for (student, teacher), old in zip(pairs, before):
        for t0, t1, s in zip(old, teacher.parameters(), student.parameters()):
            torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s.detach())


def test_the_ema_decay_schedules():
    cosine = EMATeacher([], decay=0.996, end_decay=1.0, schedule="cosine")
    assert [cosine.decay(Progress(step, 100)) for step in (0, 50, 100, 150)] == pytest.approx(
        [0.996, 0.998, 1.0, 1.0])
    linear = EMATeacher([], decay=0.9, end_decay=0.99, schedule="linear", anneal_steps=10)
    # fairseq counts the update after step 0 as update 1; the run's length does not matter.
    assert [linear.decay(Progress(step, 1000)) for step in (0, 4, 9, 50)] == pytest.approx([0.909, 0.945, 0.99, 0.99])
    with pytest.raises(ValueError, match="anneal_steps >= 1"):
        EMATeacher([], 0.9, 0.99, "linear")
    with pytest.raises(ValueError, match="takes no anneal_steps"):
        EMATeacher([], 0.9, 0.99, "cosine", anneal_steps=10)
    with pytest.raises(ValueError, match="total_steps >= 1"):
        Progress(step=0, total_steps=0)


def test_centering_and_sharpening():
    loss = CenteredDistillation(4, student_temp=0.1, center_momentum=0.9)
    teacher = torch.tensor([[1.0, 2.0, 3.0, 4.0], [3.0, 2.0, 1.0, 0.0]])
    torch.testing.assert_close(loss.teacher_probs(teacher, 0.04), F.softmax(teacher / 0.04, dim=-1))
    loss.update_center(teacher)
    torch.testing.assert_close(loss.center, 0.1 * teacher.mean(0))
    loss.update_center(teacher[None])  # patch outputs [B, N, K]: the mean over every row
    torch.testing.assert_close(loss.center, 0.9 * 0.1 * teacher.mean(0) + 0.1 * teacher.mean(0))
    torch.testing.assert_close(loss.teacher_probs(teacher, 0.07), F.softmax((teacher - loss.center) / 0.07, dim=-1))


def test_schedules():
    assert linear_warmup(0.04, 0.07, 0, 30) == pytest.approx(0.04)
    assert linear_warmup(0.04, 0.07, 15, 30) == pytest.approx(0.055)
    assert linear_warmup(0.04, 0.07, 31, 30) == pytest.approx(0.07)
    assert cosine_ramp(0.996, 1.0, 0, 100) == pytest.approx(0.996)
    assert cosine_ramp(0.996, 1.0, 50, 100) == pytest.approx(0.998)
    assert cosine_ramp(0.04, 0.4, 100, 100) == pytest.approx(0.4)
    assert cosine_ramp(0.04, 0.4, 25, 100) == pytest.approx(0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi / 4)))


# --- the module -------------------------------------------------------------------------


def small_asit(optimization: dict | None = None, **changes) -> ASiT:
    settings = dict(size="mini", input_tdim=64, view_frames=48, cls_prototypes=32, patch_prototypes=16, drop_path=0.0,
                    num_lead_tokens=1, gmml=GmmlOptions(align=16),
                    optimization=replace(ASIT_RECIPE, weight_decay_end=None, **(optimization or {})))
    return ASiT(**{**settings, **changes})


def reference_losses(model: ASiT, views: torch.Tensor, corrupted: torch.Tensor, mask: torch.Tensor) -> dict:
    """The three losses clip by clip, view by view and patch by patch."""
    with torch.no_grad():
        teacher_cls, teacher_patch, _ = model.heads(model.teacher, model.teacher_head, views)
        student_cls, student_patch, tokens = model.heads(model.encoder, model.student_head, corrupted)
        reconstruction = model.recon_head(tokens, model.encoder.grid)
    clips = len(views) // 2
    temp, student_temp = model.teacher_temperature(START), 0.1

    def cross_entropy(teacher, center, student):
        p = torch.softmax((teacher - center) / temp, dim=-1)
        return -(p * torch.log_softmax(student / student_temp, dim=-1)).sum()

    global_terms, local_terms, recon_terms = [], [], []
    for clip in range(clips):
        a, b = clip, clip + clips
        global_terms += [cross_entropy(teacher_cls[a], model.global_loss.center, student_cls[b]),
                         cross_entropy(teacher_cls[b], model.global_loss.center, student_cls[a])]
        for view in (a, b):
            for patch in range(teacher_patch.shape[1]):
                local_terms.append(cross_entropy(teacher_patch[view, patch], model.local_loss.center,
                                                 student_patch[view, patch]))
    for view in range(len(views)):
        recon_terms.append((reconstruction[view] - views[view]).abs()[mask[view]])
    return {
        "global": torch.stack(global_terms).mean(), "local": torch.stack(local_terms).mean(),
        "recon": torch.cat(recon_terms).mean(),
    }


def test_losses_match_a_reference():
    torch.manual_seed(0)
    model = small_asit().eval()
    model.global_loss.center.normal_()  # centers away from zero, so centering is exercised
    model.local_loss.center.normal_()
    with torch.no_grad():  # a teacher unlike the student
        for p in model.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
        fbank = torch.randn(3, 64, 128) * 0.5
        out = model.step(fbank, START, seeded())
        generator = seeded()  # the same draws as the step: views first, then their corruption
        views = model.views(fbank, generator)
        corrupted, mask = gmml_corrupt(views, model.gmml, generator)
    expected = reference_losses(model, views, corrupted, mask)
    for name in ("global", "local", "recon"):
        torch.testing.assert_close(out[name], expected[name], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], expected["global"] + expected["local"] + 2 * expected["recon"],
                               rtol=1e-4, atol=1e-5)


def test_views_are_crops_of_the_clip():
    model = small_asit(roll_probability=0.0)
    clips = torch.arange(64.0)[None, :, None].expand(2, 64, 128)  # each frame holds its index
    views = model.views(clips, seeded())
    assert views.shape == (4, 48, 128)
    assert torch.equal(views.diff(dim=1), torch.ones(4, 47, 128))  # consecutive frames


def test_teacher_gets_no_gradient_and_is_not_optimized():
    model = small_asit()
    model.step(torch.randn(2, 64, 128), START)["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher_head.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    assert not model.encoder.mask_embed.requires_grad  # unused by ASiT: DDP would wait for its gradient
    groups = model.build_optimizer(lr=1e-3).param_groups
    optimized = {id(p) for group in groups for p in group["params"]}
    teacher_ids = {id(p) for p in [*model.teacher.parameters(), *model.teacher_head.parameters()]}
    assert not optimized & teacher_ids
    decays, no_decay = groups  # the decaying group first: the weight-decay schedule moves it
    assert decays["weight_decay"] == 0.04 and all(p.ndim > 1 for p in decays["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])


def test_teacher_starts_as_the_student_without_drop_path():
    model = small_asit(drop_path=0.1)
    assert model.encoder.config.drop_path == 0.1 and model.teacher.config.drop_path == 0.0
    for (name, s), t in zip(model.encoder.state_dict().items(), model.teacher.state_dict().values()):
        assert torch.equal(s, t), name


def test_gradient_clipping_is_per_tensor():
    model = small_asit({"gradient_clip_per_tensor": 1.0})
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.full_like(p, 10.0)
    small = model.encoder.cls_token
    small.grad = torch.full_like(small, 1e-3)
    model.before_optimizer_step(None, START)
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None and p is not small]
    assert max(norms) == pytest.approx(1.0, rel=1e-4)
    assert torch.allclose(small.grad, torch.full_like(small, 1e-3))  # under the limit: untouched


def test_entropy_of_uniform():
    assert entropy(torch.full((2, 8), 1 / 8)) == pytest.approx(math.log(8))


def test_views_longer_than_the_clips_are_refused():
    with pytest.raises(ValueError, match="shorter than a view"):
        small_asit(input_tdim=32, view_frames=48)
    with pytest.raises(ValueError, match="multiple of the patch width"):
        small_asit(view_frames=40)


# --- where the run is: the step given, never the trainer read in the step -----------------


def frame_asit() -> ASiT:
    """A mini frame model on 16-frame clips, 12-frame views: the step of a CPU test."""
    torch.manual_seed(0)
    # The teacher's temperature warms up over 2/3 of an epoch: 2 steps of the 3-step epochs the tests run.
    return ASiT(size="mini", fshape=128, tshape=2, input_tdim=16, view_frames=12, cls_prototypes=32,
                patch_prototypes=16, head_hidden_dim=32, head_bottleneck_dim=16, teacher_temp_warmup_epochs=2 / 3,
                ema_decay=0.9, ema_end_decay=0.99,
                optimization=replace(ASIT_RECIPE, warmup_epochs=0, warmup_steps=1, lr=1e-3, lr_batch_size=None,
                                     weight_decay=0.04, weight_decay_end=0.4))


def test_the_schedules_move_with_the_step_given_to_optimization_step():
    model = frame_asit()
    optimizer = model.build_optimizer()
    fbank = torch.randn(2, 16, 128)
    first = optimization_step(model, optimizer, fbank, step=0, total_steps=4, steps_per_epoch=3)
    assert (first["teacher_temp"], first["ema_decay"]) == (pytest.approx(0.04), pytest.approx(0.9))
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.04)
    teacher = model.teacher.cls_token.detach().clone()
    later = optimization_step(model, optimizer, fbank, step=3, total_steps=4, steps_per_epoch=3)
    assert later["teacher_temp"] == pytest.approx(0.07)  # warmed up over 2 steps
    assert later["ema_decay"] == pytest.approx(cosine_ramp(0.9, 0.99, 3, 4))
    assert optimizer.param_groups[0]["weight_decay"] == pytest.approx(cosine_ramp(0.04, 0.4, 3, 4))
    decay = later["ema_decay"]  # the teacher moved with the decay of step 3, not of step 0
    expected = decay * teacher + (1 - decay) * model.encoder.cls_token.detach()
    torch.testing.assert_close(model.teacher.cls_token, expected)


class Figures(L.Callback):
    """The figures each training step logged, by step."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names, self.by_step = names, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.by_step[trainer.global_step - 1] = {name: float(trainer.callback_metrics[name]) for name in self.names}


def test_the_schedules_move_with_the_trainers_step():
    model, steps = frame_asit(), 3
    figures = Figures(("train/teacher_temp", "train/ema_decay", "train/weight_decay"))
    clips = DataLoader([{"fbank": torch.randn(2, 16, 128)} for _ in range(steps)], batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[figures])
    trainer.fit(model, train_dataloaders=clips)
    for step in range(steps):
        progress = Progress(step, steps, steps_per_epoch=steps)
        assert figures.by_step[step] == {
            "train/teacher_temp": pytest.approx(model.teacher_temperature(progress)),
            "train/ema_decay": pytest.approx(model.ema.decay(progress)),
            "train/weight_decay": pytest.approx(cosine_ramp(0.04, 0.4, step, steps)),
        }
    assert [figures.by_step[step]["train/teacher_temp"] for step in range(steps)] == pytest.approx([0.04, 0.055, 0.07])


class ValidatedProgress(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.progress = pl_module.trainer_progress()


def test_validating_needs_no_train_loader_and_sees_the_fitted_runs_length(tmp_path):
    model, steps = frame_asit(), 3
    clips = DataLoader([{"fbank": torch.randn(2, 16, 128)} for _ in range(steps)], batch_size=None)
    options = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer = L.Trainer(max_steps=steps, limit_val_batches=0, default_root_dir=tmp_path, **options)
    trainer.fit(model, train_dataloaders=clips)
    assert model.run_steps() == steps
    trainer.save_checkpoint(tmp_path / "fitted.ckpt")

    # validate alone (ssast-pretrain validate): no train loader to size a run from
    seen = ValidatedProgress()
    L.Trainer(callbacks=[seen], **options).validate(frame_asit(), dataloaders=clips, ckpt_path=tmp_path / "fitted.ckpt")
    assert seen.progress == Progress(steps, steps, steps)  # the schedules where the fit left them
    # a module that was never fitted: its run taken as ending where it is
    L.Trainer(callbacks=[seen], **options).validate(frame_asit(), dataloaders=clips)
    assert seen.progress == Progress(0, 1, 1)
