"""Self-distillation with group-masked model learning (ASiT; Atito et al., 2024).

Each clip gives two random views (``view_frames`` each, rolled in time with p = 0.5). The
teacher, an EMA of the student, sees them clean; the student sees them corrupted by GMML
(:func:`ssast.masking.gmml_corrupt`) and must

* match the teacher's distribution over ``cls_prototypes`` prototypes for its cls token
  across views (global loss: DINO's cross-entropy, view a against view b and back),
* match the teacher's distribution over ``patch_prototypes`` prototypes at every patch of
  the same view (local loss), and
* reconstruct the corrupted bins (L1 on the corrupted bins only).

Total: ``global + local + recon_weight * recon``. The teacher's outputs are centered (each
loss keeps its own center, an EMA of the teacher's mean output over all ranks) and
sharpened by a temperature warmed up from 0.04 to 0.07 over the first 30 epochs; after each
optimizer step the centers move and the teacher follows the student with an EMA decay rising
to 1 on a cosine (:class:`~pretrain.teacher.EMATeacher`). The optimization is the official
recipe's (:data:`ASIT_RECIPE`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ssast.augment import random_crop_frames, random_roll
from ssast.encoder import ASTEncoder
from ssast.heads import DistillationHead, SpectrogramReconstructionHead
from ssast.losses import CenteredDistillation, entropy
from ssast.masking import GmmlOptions, gmml_corrupt
from ssast.schedules import Progress, linear_warmup
from ssast.visualize import spectrogram_strip
from pretrain.base import PretrainModule
from pretrain.optimization import Optimization
from pretrain.teacher import EMATeacher


# ASiT's optimization (the official main script's defaults, DESIGN.md section 7): AdamW at 5e-4 per 256
# clips of global batch, 10 warmup epochs then a cosine to 1e-6, weight decay 0.04 -> 0.4 on a cosine
# sparing norms and biases, every gradient tensor clipped to norm 3.
ASIT_RECIPE = Optimization(optimizer="adamw", lr=5e-4, lr_batch_size=256, betas=(0.9, 0.999), weight_decay=0.04,
                           weight_decay_end=0.4, decay_norms_and_biases=False, gradient_clip_per_tensor=3.0,
                           schedule="warmup_cosine", warmup_epochs=10, min_lr=1e-6)


class ASiT(PretrainModule):
    """ASiT pretraining. Besides the shared options of :class:`~pretrain.base.PretrainModule`:

    Args:
        view_frames: frames of each view (6 s = 592); the clips (``input_tdim``, linked to
            the data) must be at least this long. The encoder sees views.
        roll_probability: chance that a view is rolled in time.
        gmml: how the student's views are corrupted.
        cls_prototypes: prototypes of the global (cls) output.
        patch_prototypes: prototypes of the local (patch) outputs.
        head_hidden_dim: width of the projection MLP.
        head_bottleneck_dim: the projection's output, before the prototypes.
        student_temp: the student's softmax temperature.
        teacher_temp: the teacher's temperature after warmup.
        warmup_teacher_temp: the teacher's temperature at step 0.
        teacher_temp_warmup_epochs: epochs of the linear temperature warmup (30).
        center_momentum: momentum of both centers.
        ema_decay: the teacher's EMA decay at step 0; it rises along a cosine over the run.
        ema_end_decay: the decay at the end of the run (1: the teacher no longer moves).
        recon_weight: weight of the reconstruction loss.
        num_lead_tokens: one, the cls token.
        drop_path: the student's stochastic depth (0.1).
        optimization: ASiT's (:data:`ASIT_RECIPE`).
    """

    exported = "teacher"
    validated = ("loss", "global", "local", "recon")

    def __init__(
        self,
        input_tdim: int = 1024,  # the clips' frames: views of view_frames are cut from them
        num_lead_tokens: int = 1,
        drop_path: float = 0.1,
        optimization: Optimization = ASIT_RECIPE,
        view_frames: int = 592,
        roll_probability: float = 0.5,
        gmml: GmmlOptions = GmmlOptions(),
        cls_prototypes: int = 8192,
        patch_prototypes: int = 1024,
        head_hidden_dim: int = 2048,
        head_bottleneck_dim: int = 256,
        student_temp: float = 0.1,
        teacher_temp: float = 0.07,
        warmup_teacher_temp: float = 0.04,
        teacher_temp_warmup_epochs: float = 30,
        center_momentum: float = 0.9,
        ema_decay: float = 0.996,
        ema_end_decay: float = 1.0,
        recon_weight: float = 2.0,
        **kwargs: Any,
    ) -> None:
        if input_tdim < view_frames:
            raise ValueError(f"clips of {input_tdim} frames are shorter than a view ({view_frames}); "
                             "raise the data's target_length or lower view_frames")
        super().__init__(input_tdim=view_frames, num_lead_tokens=num_lead_tokens, drop_path=drop_path,  # views
                         optimization=optimization, **kwargs)
        config = self.encoder.config
        if view_frames % config.tshape:
            raise ValueError(f"view_frames ({view_frames}) must be a multiple of the patch width {config.tshape}")
        # GMML corrupts the input itself: no mask token, and DDP must not wait for its gradient.
        self.encoder.mask_embed.requires_grad_(False)
        self.teacher = ASTEncoder(config.replace(drop_path=0.0))
        head_dims = (config.embed_dim, cls_prototypes, patch_prototypes, head_hidden_dim, head_bottleneck_dim)
        self.student_head = DistillationHead(*head_dims)
        self.teacher_head = DistillationHead(*head_dims)
        self.ema = EMATeacher([(self.encoder, self.teacher), (self.student_head, self.teacher_head)],
                              ema_decay, ema_end_decay, "cosine")
        self.recon_head = SpectrogramReconstructionHead(config.embed_dim, config.fshape, config.tshape)
        self.global_loss = CenteredDistillation(cls_prototypes, student_temp, center_momentum)
        self.local_loss = CenteredDistillation(patch_prototypes, student_temp, center_momentum)
        self.view_frames = view_frames
        self.roll_probability = roll_probability
        self.gmml = gmml if isinstance(gmml, GmmlOptions) else GmmlOptions(**gmml)  # a dict from a checkpoint

    # --- schedules ------------------------------------------------------------------------

    def teacher_temperature(self, progress: Progress) -> float:
        hp = self.hparams
        return linear_warmup(hp.warmup_teacher_temp, hp.teacher_temp, progress.step,
                             progress.steps(hp.teacher_temp_warmup_epochs))

    # --- the method -----------------------------------------------------------------------

    def views(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Two random crops of every clip, each rolled with ``roll_probability``:
        ``[2B, view_frames, F]``, all first views, then all second views."""
        crops = [random_crop_frames(fbank, self.view_frames, generator) for _ in range(2)]
        return random_roll(torch.cat(crops), self.roll_probability, generator)

    def heads(self, encoder: ASTEncoder, head: DistillationHead, views: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """cls logits, patch logits and the patch tokens they came from."""
        tokens = encoder(views)
        patches = encoder.patch_tokens(tokens)
        return (*head(encoder.pool(tokens, "cls"), patches), patches)

    def draw(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The two views of every clip (:meth:`views`), and the student's GMML-corrupted copy of
        them with the mask of its corrupted bins (drawn block by block until each clip's
        coverage is reached: a loop the step itself does not hold)."""
        views = self.views(fbank, generator)
        corrupted, corrupted_bins = gmml_corrupt(views, self.gmml, generator)
        return {"views": views, "corrupted": corrupted, "corrupted_bins": corrupted_bins}

    def losses(self, fbank: torch.Tensor, draws: dict[str, torch.Tensor],
               progress: Progress) -> dict[str, torch.Tensor | float]:
        views, corrupted, corrupted_bins = draws["views"], draws["corrupted"], draws["corrupted_bins"]
        with torch.no_grad():
            teacher_cls, teacher_patch, _ = self.heads(self.teacher, self.teacher_head, views)
        student_cls, student_patch, student_tokens = self.heads(self.encoder, self.student_head, corrupted)

        temperature = self.teacher_temperature(progress)
        teacher_cls_probs = self.global_loss.teacher_probs(teacher_cls, temperature)
        # Global: view a's teacher against view b's student and back (the batch halves).
        global_loss = self.global_loss(student_cls, teacher_cls_probs.roll(len(fbank), dims=0))
        local_loss = self.local_loss(student_patch, self.local_loss.teacher_probs(teacher_patch, temperature))

        reconstruction = self.recon_head(student_tokens, self.encoder.grid).float()
        errors = (reconstruction - views.float()).abs() * corrupted_bins
        recon_loss = errors.sum() / corrupted_bins.sum().clamp_min(1)

        if self.training:  # the centers move with the teacher's outputs once the step is taken
            self.pending_updates.append(
                (self.global_loss.teacher_mean(teacher_cls), self.local_loss.teacher_mean(teacher_patch)))
        with torch.no_grad():  # the collapse monitor, same view for teacher and student
            student_log_probs = self.global_loss.student_log_probs(student_cls)
            teacher_entropy = entropy(teacher_cls_probs)
            cross_entropy = -(teacher_cls_probs * student_log_probs).sum(-1).mean()
        out = {
            "loss": global_loss + local_loss + self.hparams.recon_weight * recon_loss,
            "global": global_loss, "local": local_loss, "recon": recon_loss,
            "teacher_entropy": teacher_entropy, "student_entropy": entropy(student_log_probs.exp()),
            "kl": cross_entropy - teacher_entropy,
            "teacher_temp": temperature, "ema_decay": self.ema.decay(progress),
        }
        return out

    def apply_updates(self, pending: list[tuple[torch.Tensor, torch.Tensor]], progress: Progress) -> None:
        for global_mean, local_mean in pending:
            self.global_loss.move_center(global_mean)
            self.local_loss.move_center(local_mean)
        self.ema.update(progress)

    @torch.no_grad()
    def picture(self, fbank: torch.Tensor) -> tuple[np.ndarray, str]:
        """A clean view, its corruption, and the student's reconstruction."""
        generator = torch.Generator(self.device).manual_seed(0)
        views = self.views(fbank[:1], generator)[:1]
        corrupted, _ = gmml_corrupt(views, self.gmml, generator)
        reconstruction = self.recon_head(self.encoder.patch_tokens(self.encoder(corrupted)), self.encoder.grid)
        titles = ("clean view", "corrupted", "reconstructed")
        return spectrogram_strip(views[0], corrupted[0], reconstruction[0], titles=titles), " / ".join(titles)
