"""Self-distillation with group-masked model learning (ASiT; Atito et al., 2024).

Each clip gives two random views (``view_frames`` each, rolled in time with p = 0.5). The
teacher, an EMA of the student, sees them clean; the student sees them corrupted by GMML
(:func:`ssast.masking.gmml_corrupt`) and must

* match the teacher's distribution over ``cls_dim`` prototypes for its cls token across
  views (global loss: DINO's cross-entropy, view a against view b and back),
* match the teacher's distribution over ``patch_dim`` prototypes at every patch of the
  same view (local loss), and
* reconstruct the corrupted bins (L1 on the corrupted bins only).

Total: ``global + local + recon_weight * recon``. The teacher's outputs are centered (each
loss keeps its own center, an EMA of the teacher's mean output over all ranks) and
sharpened by a temperature warmed up from 0.04 to 0.07. AdamW with the lr scaled by the
global batch / 256, warmup + cosine; the weight decay and the teacher momentum follow
cosines; every gradient tensor is clipped to norm ``gradient_clip`` as in the official code.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric

from ssast.augment import random_crop_frames, random_roll
from ssast.encoder import ASTEncoder
from ssast.heads import DistillationHead, SpectrogramReconstructionHead
from ssast.masking import GmmlFill, gmml_corrupt
from ssast.visualize import spectrogram_strip
from pretrain.base import PretrainModule
from pretrain.schedules import cosine_ramp, linear_warmup


class CenteredDistillation(nn.Module):
    """DINO's loss between a centered, sharpened teacher and the student, whose center is
    an EMA (``center_momentum``) of the teacher's mean output across all ranks."""

    def __init__(self, dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(dim))

    def teacher_probs(self, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        return ((teacher_logits.float() - self.center) / temperature).softmax(dim=-1)

    def student_log_probs(self, student_logits: torch.Tensor) -> torch.Tensor:
        return (student_logits.float() / self.student_temp).log_softmax(dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
        """Mean over all leading positions of ``-sum_k p_teacher[k] log p_student[k]``."""
        return -(teacher_probs * self.student_log_probs(student_logits)).sum(dim=-1).mean()

    @torch.no_grad()
    def teacher_mean(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        """The teacher's mean output over every leading position and every rank."""
        mean = teacher_logits.float().reshape(-1, teacher_logits.shape[-1]).mean(dim=0)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(mean)
            mean /= dist.get_world_size()
        return mean

    @torch.no_grad()
    def move_center(self, teacher_mean: torch.Tensor) -> None:
        self.center.mul_(self.center_momentum).add_(teacher_mean, alpha=1 - self.center_momentum)

    def update_center(self, teacher_logits: torch.Tensor) -> None:
        self.move_center(self.teacher_mean(teacher_logits))


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the distributions along the last axis."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student``, parameter by parameter."""
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, student_params, alpha=1 - momentum)


class ASiT(PretrainModule):
    """ASiT pretraining. Besides the shared options of :class:`~pretrain.base.PretrainModule`
    (here with ASiT's defaults: one cls token, drop-path 0.1, AdamW, ``lr`` per 256 clips of
    global batch, weight decay 0.04, cosine schedule):

    Args:
        view_frames: frames of each view (6 s = 592); the clips (``input_tdim``, linked to
            the data) must be at least this long.
        roll_probability: chance that a view is rolled in time.
        coverage: the fraction of each view GMML corrupts is drawn from ``U[coverage]``.
        max_block: the largest corruption block, as a fraction of height and of width.
        align: block corners and sizes on multiples of this many bins (16: the patch grid).
        fill: ``zeros``, ``noise``, or ``time`` / ``freq`` stripes.
        replace_probability: chance that a view is corrupted by pasting from another clip.
        replace_coverage: the area pasted.
        cls_dim: prototypes of the global (cls) output.
        patch_dim: prototypes of the local (patch) outputs.
        head_hidden_dim: width of the projection MLP.
        head_bottleneck_dim: the projection's output, before the prototypes.
        student_temp: the student's softmax temperature.
        teacher_temp: the teacher's temperature after warmup.
        warmup_teacher_temp: the teacher's temperature at step 0.
        teacher_temp_warmup_steps: steps of the linear temperature warmup (30 epochs).
        center_momentum: momentum of both centers.
        momentum: the teacher's EMA momentum at step 0, rising to 1 along a cosine.
        weight_decay_end: the weight decay at the end (from ``weight_decay`` along a cosine).
        recon_weight: weight of the reconstruction loss.
        gradient_clip: every gradient tensor is scaled to at most this norm (0: off).
    """

    exported = "teacher"

    def __init__(
        self,
        view_frames: int = 592,
        roll_probability: float = 0.5,
        coverage: tuple[float, float] = (0.5, 0.7),
        max_block: float = 0.3,
        align: int = 1,
        fill: GmmlFill = "zeros",
        replace_probability: float = 0.5,
        replace_coverage: float = 0.3,
        cls_dim: int = 8192,
        patch_dim: int = 1024,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_steps: int = 30_000,
        center_momentum: float = 0.9,
        momentum: float = 0.996,
        weight_decay_end: float = 0.4,
        recon_weight: float = 2.0,
        gradient_clip: float = 3.0,
        num_lead_tokens: int = 1,
        drop_path: float = 0.1,
        optimizer: Literal["adam", "adamw"] = "adamw",
        lr: float = 5e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.04,
        schedule: Literal["plateau", "cosine"] = "cosine",
        **kwargs: Any,
    ) -> None:
        self.view_frames = view_frames
        super().__init__(
            num_lead_tokens=num_lead_tokens, drop_path=drop_path, optimizer=optimizer, lr=lr, betas=betas,
            weight_decay=weight_decay, schedule=schedule, **kwargs,
        )
        config = self.encoder.config
        if view_frames % config.tshape:
            raise ValueError(f"view_frames ({view_frames}) must be a multiple of the patch width {config.tshape}")
        # GMML corrupts the input itself: no mask token, and DDP must not wait for its gradient.
        self.encoder.mask_embed.requires_grad_(False)
        self.teacher = ASTEncoder(config.replace(drop_path=0.0))
        head_dims = (config.embed_dim, cls_dim, patch_dim, head_hidden_dim, head_bottleneck_dim)
        self.student_head = DistillationHead(*head_dims)
        self.teacher_head = DistillationHead(*head_dims)
        for teacher, student in ((self.teacher, self.encoder), (self.teacher_head, self.student_head)):
            teacher.load_state_dict(student.state_dict())
            teacher.requires_grad_(False)
        self.recon_head = SpectrogramReconstructionHead(config.embed_dim, config.fshape, config.tshape)
        self.global_loss = CenteredDistillation(cls_dim, student_temp, center_momentum)
        self.local_loss = CenteredDistillation(patch_dim, student_temp, center_momentum)
        # The centers are averaged across ranks by the losses themselves. DDP would also
        # broadcast them from rank 0 before every forward: a collective that hangs evaluation
        # whenever ranks hold different numbers of batches.
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, ["global_loss.center", "local_loss.center"]
        )
        self.val_losses = nn.ModuleDict({name: MeanMetric() for name in ("loss", "global", "local", "recon")})
        # The teacher's mean outputs of the batches since the last optimizer step: the centers
        # move once that step is taken (a NaN batch skipped must not poison them for good).
        self._pending_centers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def encoder_input_frames(self, clip_frames: int) -> int:
        if clip_frames < self.view_frames:
            raise ValueError(
                f"clips of {clip_frames} frames are shorter than a view ({self.view_frames}); "
                "raise the data's target_length or lower view_frames"
            )
        return self.view_frames

    # --- schedules ----------------------------------------------------------------------

    @property
    def total_steps(self) -> int:
        return int(self.trainer.estimated_stepping_batches)

    def teacher_temperature(self) -> float:
        hp = self.hparams
        return linear_warmup(hp.warmup_teacher_temp, hp.teacher_temp, self.global_step, hp.teacher_temp_warmup_steps)

    def teacher_momentum(self) -> float:
        return cosine_ramp(self.hparams.momentum, 1.0, self.global_step, self.total_steps)

    def weight_decay_now(self) -> float:
        return cosine_ramp(self.hparams.weight_decay, self.hparams.weight_decay_end, self.global_step, self.total_steps)

    # --- the method ---------------------------------------------------------------------

    def views(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Two random crops of every clip, each rolled with ``roll_probability``:
        ``[2B, view_frames, F]``, all first views, then all second views."""
        crops = [random_crop_frames(fbank, self.view_frames, generator) for _ in range(2)]
        return random_roll(torch.cat(crops), self.hparams.roll_probability, generator)

    def corrupt(self, views: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        return gmml_corrupt(
            views, coverage=tuple(hp.coverage), max_block=hp.max_block, align=hp.align, fill=hp.fill,
            replace_probability=hp.replace_probability, replace_coverage=hp.replace_coverage, generator=generator,
        )

    def heads(self, encoder: ASTEncoder, head: DistillationHead, views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tokens = encoder(views)
        patches = encoder.patch_tokens(tokens)
        return (*head(encoder.pool(tokens, "cls"), patches), patches)

    def losses(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        views = self.views(fbank, generator)
        corrupted, mask = self.corrupt(views, generator)
        with torch.no_grad():
            teacher_cls, teacher_patch, _ = self.heads(self.teacher, self.teacher_head, views)
        student_cls, student_patch, student_tokens = self.heads(self.encoder, self.student_head, corrupted)

        temperature = self.teacher_temperature()
        teacher_cls_probs = self.global_loss.teacher_probs(teacher_cls, temperature)
        # Global: view a's teacher against view b's student and back (the batch halves).
        global_loss = self.global_loss(student_cls, teacher_cls_probs.roll(len(fbank), dims=0))
        local_loss = self.local_loss(student_patch, self.local_loss.teacher_probs(teacher_patch, temperature))

        reconstruction = self.recon_head(student_tokens, self.encoder.grid).float()
        recon_loss = ((reconstruction - views.float()).abs() * mask).sum() / mask.sum().clamp_min(1)

        hp = self.hparams
        with torch.no_grad():  # the collapse monitor, same view for teacher and student
            student_log_probs = self.global_loss.student_log_probs(student_cls)
            teacher_entropy = entropy(teacher_cls_probs)
            cross_entropy = -(teacher_cls_probs * student_log_probs).sum(-1).mean()
        return {
            "loss": global_loss + local_loss + hp.recon_weight * recon_loss,
            "global": global_loss, "local": local_loss, "recon": recon_loss,
            "teacher_entropy": teacher_entropy, "student_entropy": entropy(student_log_probs.exp()),
            "kl": cross_entropy - teacher_entropy,
            "teacher_cls": teacher_cls, "teacher_patch": teacher_patch,
            "views": views, "corrupted": corrupted, "reconstruction": reconstruction.detach(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch["fbank"])
        self._pending_centers.append(
            (self.global_loss.teacher_mean(out["teacher_cls"]), self.local_loss.teacher_mean(out["teacher_patch"]))
        )
        size = len(batch["fbank"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        names = ("global", "local", "recon", "teacher_entropy", "student_entropy", "kl")
        self.log_dict({f"train/{name}": out[name] for name in names}, batch_size=size)
        self.log_dict({
            "train/teacher_temp": self.teacher_temperature(), "train/momentum": self.teacher_momentum(),
            "train/weight_decay": self.weight_decay_now(),
        }, batch_size=size)
        if self.should_draw():
            picture = spectrogram_strip(out["views"][0], out["corrupted"][0], out["reconstruction"][0])
            self.log_picture("train/reconstruction", picture, caption="clean view / corrupted / reconstructed")
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Views and corruption seeded by the batch index: every validation sees the same.
        out = self.losses(batch["fbank"], torch.Generator(self.device).manual_seed(batch_idx))
        for name, metric in self.val_losses.items():
            metric.update(out[name], len(batch["fbank"]))
            self.log(f"val/{name}", metric, batch_size=len(batch["fbank"]))

    def plateau_metric(self) -> float:
        return -float(self.val_losses["loss"].compute())

    # --- optimization -------------------------------------------------------------------

    def param_groups(self) -> list[dict[str, Any]]:
        # DINO's groups: biases and norms take no weight decay; the first group's follows a cosine.
        trained = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        decays = {name: p.ndim > 1 and not name.endswith(".bias") for name, p in trained}
        return [
            {"params": [p for name, p in trained if decays[name]]},
            {"params": [p for name, p in trained if not decays[name]], "weight_decay": 0.0},
        ]

    def peak_lr(self) -> float:
        """``lr`` is given for a global batch of 256 and scales linearly with the batch."""
        datamodule = getattr(self.trainer, "datamodule", None)
        per_device = getattr(getattr(datamodule, "hparams", None), "batch_size", 256)
        global_batch = per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches
        return self.hparams.lr * global_batch / 256

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.optimizers().param_groups[0]["weight_decay"] = self.weight_decay_now()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        clip = self.hparams.gradient_clip
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if clip > 0 and grads:
            norms = torch._foreach_norm(grads)
            scales = [torch.clamp(clip / (norm + 1e-6), max=1.0) for norm in norms]
            torch._foreach_mul_(grads, scales)

    def after_optimizer_step(self, skipped: bool) -> None:
        pending, self._pending_centers = self._pending_centers, []
        if skipped:
            return
        for global_mean, local_mean in pending:
            self.global_loss.move_center(global_mean)
            self.local_loss.move_center(local_mean)
        momentum = self.teacher_momentum()  # of the step just taken: global_step counts it only afterwards
        ema_update(self.teacher, self.encoder, momentum)
        ema_update(self.teacher_head, self.student_head, momentum)

