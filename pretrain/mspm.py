"""Masked spectrogram patch modeling (SSAST; Gong et al., AAAI 2022).

Mask ``mask_patches`` patches of each clip (in clusters for patch models, at random for
frame models), replace their embeddings by a learned mask token before the position
embedding, and from the encoder's output at the masked positions

* classify which masked patch is which (discriminative head, InfoNCE among the masked
  patches of the same clip), and
* reconstruct them (generative head, MSE against the normalized input patches); with
  ``visible_mse_weight`` the visible patches too, from the same pass.

``passes=2`` runs the encoder twice with independent masks, one per objective, as the
official code does; ``passes=1`` shares one masked pass between the two heads (about half
the compute). Everything is batched: no Python loop over clips.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ssast.heads import PatchPredictionHead
from ssast.losses import info_nce
from ssast.masking import cluster_mask, random_mask, true_positions
from ssast.train.schedules import Progress
from ssast.visualize import spectrogram_strip
from pretrain.base import PretrainModule


def patchify(fbank: torch.Tensor, fshape: int, tshape: int) -> torch.Tensor:
    """``[B, T, F]`` -> non-overlapping patches ``[B, N, fshape * tshape]``, in the
    encoder's token order (frequency-major)."""
    patches = F.unfold(rearrange(fbank, "b t f -> b 1 f t"), kernel_size=(fshape, tshape), stride=(fshape, tshape))
    return rearrange(patches, "b p n -> b n p")


def unpatchify(patches: torch.Tensor, fshape: int, tshape: int, frames: int, bins: int) -> torch.Tensor:
    """The inverse of :func:`patchify`: ``[B, N, fshape * tshape]`` -> ``[B, T, F]``."""
    image = F.fold(rearrange(patches, "b n p -> b p n"), (bins, frames), kernel_size=(fshape, tshape),
                   stride=(fshape, tshape))
    return rearrange(image, "b 1 f t -> b t f")


def gather_masked(values: torch.Tensor, mask: torch.Tensor, num_masked: int) -> torch.Tensor:
    """The rows of ``values [B, N, D]`` where ``mask [B, N]`` holds, in position order,
    as ``[B, num_masked, D]`` (every clip has exactly ``num_masked``)."""
    index = true_positions(mask, num_masked)
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class MSPM(PretrainModule):
    """SSAST pretraining. Besides the shared options of
    :class:`~pretrain.base.PretrainModule`:

    Args:
        mask_patches: patches masked per clip (400 of 512 in the paper).
        passes: 2 for one encoder pass per objective (official), 1 to share one pass.
        cluster: cluster masking; ``None``: for patch models, not for frame models.
        mse_weight: weight of the generative loss (10 in the paper).
        negatives: the patches a masked patch is told apart from: ``clip``, the other masked
            patches of its clip (the paper's); ``batch``, those of every clip in the batch,
            which rewards the encoder for knowing whose patch it is (voice, instrument, room).
        visible_mse_weight: weight, beside the masked patches' generative loss, of
            reconstructing the visible patches as well (MAE's "loss on all patches"); 0, the
            paper's, reconstructs masked patches only. The output at a visible patch then has to
            keep that patch's own spectrum, which the other losses let the blocks drown.
        min_mask_patches: ``None`` (the paper's): every step masks ``mask_patches``; else each
            step masks a number drawn uniformly from ``min_mask_patches`` to ``mask_patches``
            (the same for every clip of the batch), so that the encoder also learns on clips
            that are mostly visible, as every clip is when it is used.
    """

    progress_bar = ("loss", "acc")
    validated = ("nce", "mse", "acc")
    plateau_figure = ("acc", "max")  # SSAST halves the lr when the masked accuracy stalls

    def __init__(
        self, mask_patches: int = 400, passes: int = 2, cluster: bool | None = None, mse_weight: float = 10.0,
        negatives: Literal["clip", "batch"] = "clip", visible_mse_weight: float = 0.0,
        min_mask_patches: int | None = None, **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        config = self.encoder.config
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {passes}")
        if not 0 < mask_patches < config.num_patches:
            raise ValueError(f"mask_patches must be in 1..{config.num_patches - 1}, got {mask_patches}")
        if negatives not in ("clip", "batch"):
            raise ValueError(f"negatives must be 'clip' or 'batch', got {negatives!r}")
        if visible_mse_weight < 0:
            raise ValueError(f"visible_mse_weight must be at least 0, got {visible_mse_weight}")
        if min_mask_patches is not None and not 2 <= min_mask_patches <= mask_patches:
            raise ValueError(f"min_mask_patches must be in 2..mask_patches ({mask_patches}), got {min_mask_patches}")
        self.mask_patches = mask_patches
        self.min_mask_patches = mask_patches if min_mask_patches is None else min_mask_patches
        self.visible_mse_weight = visible_mse_weight
        self.negatives = negatives
        self.passes = passes
        self.cluster = config.fshape < config.input_fdim if cluster is None else cluster
        self.mse_weight = mse_weight
        patch_dim = config.fshape * config.tshape
        self.discriminative_head = PatchPredictionHead(config.embed_dim, patch_dim)
        self.generative_head = PatchPredictionHead(config.embed_dim, patch_dim)

    def sample_count(self, generator: torch.Generator | None = None) -> int:
        """The patches this step masks per clip."""
        if self.min_mask_patches == self.mask_patches:
            return self.mask_patches
        # Drawn on the host in training (no generator): reading a count back from the GPU would
        # stall every step.
        device = generator.device if generator is not None else "cpu"
        return int(torch.randint(self.min_mask_patches, self.mask_patches + 1, (1,), device=device,
                                 generator=generator))

    def sample_mask(self, batch_size: int, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        config = self.encoder.config
        if self.cluster:
            return cluster_mask(batch_size, config.grid, count, device=self.device, generator=generator)
        return random_mask(batch_size, config.num_patches, count, device=self.device, generator=generator)

    def masked_outputs(self, tokens: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
        """The encoder's outputs ``tokens`` at the ``count`` masked positions of each clip,
        ``[B, count, D]``."""
        return gather_masked(self.encoder.patch_tokens(tokens), mask, count)

    def step(self, fbank: torch.Tensor, progress: Progress,
             generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        config = self.encoder.config
        targets = patchify(fbank, config.fshape, config.tshape)
        count = self.sample_count(generator)
        mask = self.sample_mask(len(fbank), count, generator)
        generative_mask = self.sample_mask(len(fbank), count, generator) if self.passes == 2 else mask
        tokens = self.encoder(fbank, mask)
        generative_tokens = self.encoder(fbank, generative_mask) if self.passes == 2 else tokens
        discriminative = self.discriminative_head(self.masked_outputs(tokens, mask, count))
        generative = self.generative_head(self.masked_outputs(generative_tokens, generative_mask, count))
        discriminative_targets = gather_masked(targets, mask, count)
        if self.negatives == "batch":  # one set of B * M patches, each told apart from all the others
            discriminative, discriminative_targets = (rearrange(x, "b m p -> 1 (b m) p")
                                                      for x in (discriminative, discriminative_targets))
        nce, accuracy = info_nce(discriminative, discriminative_targets)
        mse = F.mse_loss(generative.float(), gather_masked(targets, generative_mask, count))
        out = {"loss": nce + self.mse_weight * mse, "nce": nce, "mse": mse, "acc": accuracy}
        if self.visible_mse_weight:
            kept = ~generative_mask
            visible = self.generative_head(self.encoder.patch_tokens(generative_tokens)[kept])
            out["visible_mse"] = F.mse_loss(visible.float(), targets[kept])
            out["loss"] = out["loss"] + self.mse_weight * self.visible_mse_weight * out["visible_mse"]
        return self.add_clip_stats(out, self.encoder.patch_tokens(tokens), fbank)

    @torch.no_grad()
    def picture(self, fbank: torch.Tensor) -> tuple[np.ndarray, str]:
        """Input, masked input, and the input with the masked patches generated."""
        config = self.encoder.config
        mask = self.sample_mask(1, self.mask_patches, torch.Generator(self.device).manual_seed(0))
        patches = patchify(fbank[:1], config.fshape, config.tshape)[0]
        generated = self.generative_head(self.masked_outputs(self.encoder(fbank[:1], mask), mask, self.mask_patches))[0]
        masked, rebuilt = patches.clone(), patches.clone()
        masked[mask[0]] = patches.min()
        rebuilt[mask[0]] = generated.to(patches.dtype)
        frames, bins = fbank.shape[1:]
        images = [unpatchify(p[None], config.fshape, config.tshape, frames, bins)[0] for p in (masked, rebuilt)]
        titles = ("input", "masked", "reconstructed")
        return spectrogram_strip(fbank[0], *images, titles=titles), " / ".join(titles)
