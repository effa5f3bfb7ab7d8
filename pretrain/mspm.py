"""Masked spectrogram patch modeling (SSAST; Gong et al., AAAI 2022).

Mask ``mask_patches`` patches of each clip (in clusters for patch models, at random for
frame models), replace their embeddings by a learned mask token before the position
embedding, and from the encoder's output at the masked positions

* classify which masked patch is which (discriminative head, InfoNCE among the masked
  patches of the same clip), and
* reconstruct them (generative head, MSE against the normalized input patches).

``passes=2`` encodes each clip twice with independent masks, one per objective, as the
official code does (both copies in one batched call: the same computation as two passes, in
larger matrix products); ``passes=1`` shares one masked pass between the two heads (about
half the compute). Everything is batched: no Python loop over clips.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from ssast.heads import PatchPredictionHead
from ssast.losses import info_nce
from ssast.masking import cluster_mask, random_mask, true_positions
from ssast.schedules import Progress
from ssast.visualize import spectrogram_strip
from pretrain.base import PretrainModule
from pretrain.optimization import Optimization


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


# SSAST's optimization (src/run_mask_{patch,frame}.sh, traintest_mask.py): Adam, betas (0.95, 0.999),
# weight decay 5e-7 on every weight; lr 1e-4 (base, batch 24; the tiny model's 5e-4 is its recipe's),
# warmup of 1,000 steps in stairs of 50, then halved when the masked accuracy has stalled for 2 checks.
SSAST_RECIPE = Optimization(optimizer="adam", lr=1e-4, betas=(0.95, 0.999), weight_decay=5e-7,
                            decay_norms_and_biases=True, schedule="plateau", warmup_steps=1000, warmup_every=50,
                            min_lr=1e-6, plateau_factor=0.5, plateau_patience=2)


class MSPM(PretrainModule):
    """SSAST pretraining. Besides the shared options of
    :class:`~pretrain.base.PretrainModule`:

    Args:
        mask_patches: patches masked per clip (400 of 512 in the paper).
        passes: 2 for one encoder pass per objective (official), 1 to share one pass.
        cluster: cluster masking; ``None``: for patch models, not for frame models.
        mse_weight: weight of the generative loss (10 in the paper).
        optimization: SSAST's (:data:`SSAST_RECIPE`).
    """

    progress_bar = ("loss", "acc")
    validated = ("nce", "mse", "acc")
    plateau_figure = ("acc", "max")  # SSAST halves the lr when the masked accuracy stalls

    def __init__(
        self, mask_patches: int = 400, passes: int = 2, cluster: bool | None = None, mse_weight: float = 10.0,
        optimization: Optimization = SSAST_RECIPE, **kwargs,
    ) -> None:
        super().__init__(optimization=optimization, **kwargs)
        config = self.encoder.config
        if passes not in (1, 2):
            raise ValueError(f"passes must be 1 or 2, got {passes}")
        if not 0 < mask_patches < config.num_patches:
            raise ValueError(f"mask_patches must be in 1..{config.num_patches - 1}, got {mask_patches}")
        self.mask_patches = mask_patches
        self.passes = passes
        self.cluster = config.fshape < config.input_fdim if cluster is None else cluster
        self.mse_weight = mse_weight
        patch_dim = config.fshape * config.tshape
        self.discriminative_head = PatchPredictionHead(config.embed_dim, patch_dim)
        self.generative_head = PatchPredictionHead(config.embed_dim, patch_dim)

    def sample_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``mask_patches`` masked patches per clip, ``[batch_size, N]`` bool."""
        config, count = self.encoder.config, self.mask_patches
        if self.cluster:
            return cluster_mask(batch_size, config.grid, count, device=self.device, generator=generator)
        return random_mask(batch_size, config.num_patches, count, device=self.device, generator=generator)

    def masked(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The rows of ``values [B, N, D]`` at each clip's masked positions, ``[B, mask_patches, D]``."""
        return gather_masked(values, mask, self.mask_patches)

    def draw(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """One mask per pass: the discriminative pass's, then the generative one's."""
        return {"masks": torch.stack([self.sample_mask(len(fbank), generator) for _ in range(self.passes)])}

    def losses(self, fbank: torch.Tensor, draws: dict[str, torch.Tensor], progress: Progress) -> dict[str, torch.Tensor]:
        config = self.encoder.config
        targets = patchify(fbank, config.fshape, config.tshape)
        mask, generative_mask = draws["masks"][0], draws["masks"][-1]
        if self.passes == 2:  # the official code: a second pass with its own mask for the generative loss
            both = self.encoder(torch.cat([fbank, fbank]), torch.cat([mask, generative_mask]))
            tokens, generative_tokens = self.encoder.patch_tokens(both).chunk(2)
        else:
            tokens = generative_tokens = self.encoder.patch_tokens(self.encoder(fbank, mask))
        discriminative = self.discriminative_head(self.masked(tokens, mask))
        generative = self.generative_head(self.masked(generative_tokens, generative_mask))
        nce, accuracy = info_nce(discriminative, self.masked(targets, mask))
        mse = F.mse_loss(generative.float(), self.masked(targets, generative_mask))
        return {"loss": nce + self.mse_weight * mse, "nce": nce, "mse": mse, "acc": accuracy}

    @torch.no_grad()
    def picture(self, fbank: torch.Tensor) -> tuple[np.ndarray, str]:
        """Input, masked input, and the input with the masked patches generated."""
        config = self.encoder.config
        mask = self.sample_mask(1, torch.Generator(self.device).manual_seed(0))
        patches = patchify(fbank[:1], config.fshape, config.tshape)[0]
        generated = self.generative_head(self.masked(self.encoder.patch_tokens(self.encoder(fbank[:1], mask)), mask))[0]
        masked, rebuilt = patches.clone(), patches.clone()
        masked[mask[0]] = patches.min()
        rebuilt[mask[0]] = generated.to(patches.dtype)
        frames, bins = fbank.shape[1:]
        images = [unpatchify(p[None], config.fshape, config.tshape, frames, bins)[0] for p in (masked, rebuilt)]
        titles = ("input", "masked", "reconstructed")
        return spectrogram_strip(fbank[0], *images, titles=titles), " / ".join(titles)
