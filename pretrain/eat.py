"""Efficient masked self-distillation (EAT; Chen et al., IJCAI 2024), on data2vec 2.0.

The teacher, an EMA of the student, sees each whole clip once. Its targets are the
feed-forward outputs (before the residual) of its top ``average_top_k_layers`` blocks at the
patch tokens, each instance-normalised over the tokens (``target_layer_norm: layer``
normalises over the channels instead), averaged, then layer-normalised
(:func:`ssast.losses.layer_averaged_targets`). Each clip is cloned ``clone_batch`` times and
every clone gets its own inverse block mask (:func:`ssast.masking.inverse_block_mask`: blocks
are kept, 80% is masked). The student encodes only a clone's visible tokens; a light CNN
decoder (:class:`ssast.heads.ConvDecoder`) sees them back on the patch grid, with small noise
at the masked positions, and predicts the targets there. Two losses, both squared errors
over channels divided by ``sqrt(D)`` (data2vec 2.0's ``d2v_loss``):

* frame: the decoder's predictions against the targets, averaged over the masked tokens;
* utterance: the student's cls output against the targets' mean over tokens, **summed**
  over the batch's clones, times ``utterance_weight`` (the official config's ``cls_loss``).
  The official code multiplies this term by the masked-token count that fairseq then divides
  every loss by, so it ends up a sum where the frame loss is a mean; that balance is kept here.

After each optimizer step the teacher follows the student with a decay rising linearly from
``ema_decay`` to ``ema_end_decay`` over ``ema_anneal_end_step`` updates
(:class:`~pretrain.teacher.EMATeacher`). The exported encoder is the student, as EAT's. Knob
names are the official config's (``config/pretraining_AS2M.yaml`` of cwx-worst-one/EAT) but
for ``utterance_weight``, named as every method's loss weights are (``<logged loss>_weight``).
The encoder is the AST one of DESIGN.md §5 by default (pre-norm blocks, a learned position
embedding), whose feed-forward output before the residual is the same kind of target; ``layout:
eat`` builds EAT's own (post-norm blocks, fixed sin-cos positions), and ``init_from`` continues
from EAT's released pretraining checkpoints: student, teacher and decoder (:meth:`EAT.continue_from`).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from einops import rearrange, repeat

from ssast.encoder import ASTEncoder
from ssast.heads import ConvDecoder
from ssast.losses import check_target_layer_norm, layer_averaged_targets, scaled_squared_error
from ssast.masking import inverse_block_kept, inverse_block_mask, true_positions
from ssast.schedules import Progress
from ssast.visualize import spectrogram_strip
from pretrain.base import PretrainModule
from pretrain.optimization import Optimization
from pretrain.teacher import EMATeacher


def channel_std(x: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over channels of the standard deviation over all other axes (over the positions
    where ``where`` holds, when given, without indexing them out: no data-dependent shape):
    data2vec 2.0's ``target_var`` / ``pred_var`` collapse monitors (they fall towards 0 on
    collapse)."""
    x = x.detach().float().reshape(-1, x.shape[-1])
    if where is None:
        variance = x.var(dim=0)
    else:
        weight = where.reshape(-1, 1).float()
        count = weight.sum()
        mean = (x * weight).sum(dim=0) / count
        variance = ((x - mean) ** 2 * weight).sum(dim=0) / (count - 1)  # unbiased, as Tensor.var
    return variance.add(1e-6).sqrt().mean()


# EAT's optimization (config/pretraining_AS2M.yaml, DESIGN.md section 7b): fairseq's Adam with decoupled
# weight decay 0.05 sparing norms and biases, betas (0.9, 0.95), lr 5e-4, cosine to 0 after 53,333 warmup
# updates of 400,000 (the global-norm clip of 4 is the trainer's, trainer.gradient_clip_val).
EAT_RECIPE = Optimization(optimizer="adamw", lr=5e-4, betas=(0.9, 0.95), weight_decay=0.05,
                          decay_norms_and_biases=False, schedule="warmup_cosine", warmup_steps=53_333, min_lr=0.0)


class EAT(PretrainModule):
    """EAT pretraining. Besides the shared options of :class:`~pretrain.base.PretrainModule`:

    Args:
        mask_prob: the fraction of patches masked (0.8; 410 of 512 are).
        mask_length: side of the kept blocks, in patches (5).
        mask_prob_adjust: extra block centres, making up for overlaps (0.07).
        clone_batch: masked clones of each clip sharing one teacher pass (16).
        average_top_k_layers: the teacher's last blocks averaged into targets (``None``:
            all, as EAT-Base's 12 of 12).
        target_layer_norm: how each of those blocks' outputs is normalised before the average
            (:func:`~ssast.losses.layer_averaged_targets`): ``instance``, over the tokens (EAT's
            ``instance_norm_target_layer``: the targets lose what a whole clip shares), or
            ``layer``, over the channels (``layer_norm_target_layer``: they keep it).
        decoder_dim: the CNN decoder's width (``None``: the encoder's; EAT-Base 768).
        decoder_layers: its convolution blocks (6).
        decoder_kernel: its kernel size (3).
        decoder_groups: its convolution groups (16).
        mask_noise_std: standard deviation of the noise the decoder sees at masked positions.
        utterance_weight: weight of the utterance loss (1; the official config's ``cls_loss``).
        ema_decay: the teacher's EMA decay at the first update.
        ema_end_decay: its decay from ``ema_anneal_end_step`` on.
        ema_anneal_end_step: updates over which the decay rises linearly.
        num_lead_tokens: one, the cls token.
        optimization: EAT's (:data:`EAT_RECIPE`).
    """

    exported = "encoder"  # the student, as EAT exports it
    validated = ("loss", "frame", "utterance")

    def __init__(
        self,
        num_lead_tokens: int = 1,
        optimization: Optimization = EAT_RECIPE,
        mask_prob: float = 0.8,
        mask_length: int = 5,
        mask_prob_adjust: float = 0.07,
        clone_batch: int = 16,
        average_top_k_layers: int | None = None,
        target_layer_norm: Literal["instance", "layer"] = "instance",
        decoder_dim: int | None = None,
        decoder_layers: int = 6,
        decoder_kernel: int = 3,
        decoder_groups: int = 16,
        mask_noise_std: float = 0.01,
        utterance_weight: float = 1.0,
        ema_decay: float = 0.9998,
        ema_end_decay: float = 0.99999,
        ema_anneal_end_step: int = 100_000,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_lead_tokens=num_lead_tokens, optimization=optimization, **kwargs)
        config = self.encoder.config
        self.top_k = average_top_k_layers or config.depth
        if not 1 <= self.top_k <= config.depth:
            raise ValueError(f"average_top_k_layers must be in 1..{config.depth} (the depth), got {average_top_k_layers}")
        if clone_batch < 1:
            raise ValueError(f"clone_batch must be at least 1, got {clone_batch}")
        check_target_layer_norm("target_layer_norm", target_layer_norm)
        self.clone_batch = clone_batch
        self.kept = inverse_block_kept(config.num_patches, mask_prob)
        # Masked tokens are dropped, never replaced: no mask token, and DDP must not wait for its gradient.
        self.encoder.mask_embed.requires_grad_(False)
        self.teacher = ASTEncoder(config.replace(drop_path=0.0))
        self.ema = EMATeacher([(self.encoder, self.teacher)], ema_decay, ema_end_decay, "linear", ema_anneal_end_step)
        self.decoder = ConvDecoder(config.embed_dim, config.grid, decoder_dim, decoder_layers, decoder_kernel,
                                   decoder_groups)
        self.continue_from(self.init_extra)
        self.init_extra = {}

    def continue_from(self, extra: dict[str, torch.Tensor]) -> None:
        """Take the teacher and decoder of the checkpoint the student came from (``init_from``;
        EAT's pretrained files hold both, :mod:`ssast.checkpoints.eat`), so that pretraining goes
        on where it stopped. What EAT's EMA does not keep (the patch embedding, when
        ``ema_local_encoder`` was off) stays the student's, as EAT's teacher shares it."""
        teacher = {key.removeprefix("teacher."): value for key, value in extra.items() if key.startswith("teacher.")}
        decoder = {key.removeprefix("decoder."): value for key, value in extra.items() if key.startswith("decoder.")}
        try:
            if teacher:
                self.teacher.load_state_dict(self.teacher.state_dict() | teacher)
            if decoder:
                self.decoder.load_state_dict(decoder)
        except RuntimeError as error:  # another shape: the recipe's decoder is not the file's
            raise ValueError(f"init_from: the checkpoint's {'decoder' if decoder else 'teacher'} does not fit this "
                             f"recipe's (decoder_dim, decoder_layers, decoder_kernel, decoder_groups?): "
                             f"{str(error).splitlines()[0]}") from None

    # --- the method -----------------------------------------------------------------------

    def sample_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """One inverse block mask per clone, ``[batch_size, N]`` bool, ``True`` = masked."""
        hp = self.hparams
        return inverse_block_mask(batch_size, self.encoder.grid, hp.mask_prob, hp.mask_length, hp.mask_prob_adjust,
                                  device=self.device, generator=generator)

    @torch.no_grad()
    def teacher_targets(self, fbank: torch.Tensor) -> torch.Tensor:
        """The teacher's targets for whole clips, ``[B, N, D]`` float32: its top blocks'
        feed-forward outputs at the patch tokens, normalised and averaged."""
        layers = self.teacher.block_ffn_outputs(fbank)[-self.top_k :]
        return layer_averaged_targets([ffn[:, self.teacher.num_lead_tokens :] for ffn in layers],
                                      self.hparams.target_layer_norm)

    def draw(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Each clone's mask (clone j of clip i is row i * clones + j), and the noise the
        decoder sees where tokens were dropped."""
        mask = self.sample_mask(len(fbank) * self.clone_batch, generator)
        noise = fbank.new_empty(len(mask), mask.shape[1], self.encoder.embed_dim)
        return {"mask": mask, "noise": noise.normal_(0.0, self.hparams.mask_noise_std, generator=generator)}

    def losses(self, fbank: torch.Tensor, draws: dict[str, torch.Tensor],
               progress: Progress) -> dict[str, torch.Tensor | float]:
        lead, clones, mask = self.encoder.num_lead_tokens, self.clone_batch, draws["mask"]
        visible = true_positions(~mask, self.kept)

        targets = self.teacher_targets(fbank)  # one teacher pass per clip, whatever the number of clones

        # The student encodes each clone's visible tokens only (position embedding added first).
        tokens = self.encoder(fbank, visible=visible)  # [B * clones, lead + K, D]

        # The decoder sees the student's outputs back on the grid, small noise where tokens were dropped.
        patches = tokens[:, lead:]
        at_visible = repeat(visible, "b k -> b k d", d=patches.shape[-1])
        on_grid = draws["noise"].to(patches.dtype).scatter(1, at_visible, patches)
        prediction = rearrange(self.decoder(on_grid), "(b c) n d -> b c n d", c=clones)

        # Frame loss: the mean over masked tokens; the clones' targets are their clip's (broadcast).
        masked = rearrange(mask, "(b c) n -> b c n", c=clones)
        frame = (scaled_squared_error(prediction, targets[:, None]) * masked).sum() / masked.sum()
        # Utterance loss: the student's cls output (EAT has one leading token; with two, cls rather than dist)
        # against the clip's mean target, summed over clones.
        cls = rearrange(tokens[:, 0], "(b c) d -> b c d", c=clones)
        utterance = scaled_squared_error(cls, targets.mean(dim=1, keepdim=True)).sum()

        out = {
            "loss": frame + self.hparams.utterance_weight * utterance, "frame": frame, "utterance": utterance,
            "target_var": channel_std(targets), "pred_var": channel_std(prediction, masked),
            "ema_decay": self.ema.decay(progress),
        }
        return out

    def apply_updates(self, pending: list[Any], progress: Progress) -> None:
        self.ema.update(progress)

    @torch.no_grad()
    def picture(self, fbank: torch.Tensor) -> tuple[np.ndarray, str]:
        """A clip and what the student sees of it (masked patches blanked)."""
        config = self.encoder.config
        mask = self.sample_mask(1, torch.Generator(self.device).manual_seed(0))[0]
        hidden = repeat(mask, "(f t) -> (t pt) (f pf)", f=config.grid[0], pt=config.tstride, pf=config.fstride)
        seen = fbank[0].clone()
        seen[: hidden.shape[0], : hidden.shape[1]].masked_fill_(hidden, float(fbank[0].min()))
        titles = ("input", "visible to the student")
        return spectrogram_strip(fbank[0], seen, titles=titles), " / ".join(titles)
