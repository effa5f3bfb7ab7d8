"""Masked spectrogram patch modeling (SSAST; Gong et al., AAAI 2022).

Mask ``mask_patches`` patches of each clip (in clusters for patch models, at random for
frame models), replace their embeddings by a learned mask token before the position
embedding, and from the encoder's output at the masked positions

* classify which masked patch is which (discriminative head, InfoNCE among the masked
  patches of the same clip), and
* reconstruct them (generative head, MSE against the normalized input patches).

``passes=2`` runs the encoder twice with independent masks, one per objective, as the
official code does; ``passes=1`` shares one masked pass between the two heads (about half
the compute). Everything is batched: no Python loop over clips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torchmetrics import MeanMetric

from ssast.heads import PatchPredictionHead
from ssast.masking import cluster_mask, random_mask
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
    # A stable sort puts each clip's masked positions first, in order, with no host sync.
    index = mask.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :num_masked]
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


def info_nce(prediction: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SSAST's discriminative loss over the ``M`` masked patches of each clip.

    ``scores[b, i, j] = target_i . prediction_j``; the loss is the mean of
    ``-log_softmax(scores, dim=-1)`` on the diagonal (the softmax runs over predictions, as
    in the official code), and the accuracy is how often ``argmax(scores, dim=0)`` of a
    prediction is its own target (DESIGN.md; the official code takes that argmax over the
    row-softmaxed scores, which can differ). Both are computed in float32.
    """
    scores = torch.bmm(target.float(), prediction.float().transpose(1, 2))
    loss = -scores.log_softmax(dim=-1).diagonal(dim1=1, dim2=2).mean()
    own = torch.arange(scores.shape[-1], device=scores.device)
    accuracy = (scores.argmax(dim=1) == own).float().mean()
    return loss, accuracy


class MSPM(PretrainModule):
    """SSAST pretraining. Besides the shared options of
    :class:`~pretrain.base.PretrainModule`:

    Args:
        mask_patches: patches masked per clip (400 of 512 in the paper).
        passes: 2 for one encoder pass per objective (official), 1 to share one pass.
        cluster: cluster masking; ``None``: for patch models, not for frame models.
        mse_weight: weight of the generative loss (10 in the paper).
    """

    def __init__(
        self,
        mask_patches: int = 400,
        passes: int = 2,
        cluster: bool | None = None,
        mse_weight: float = 10.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
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
        self.val_nce, self.val_mse, self.val_acc = MeanMetric(), MeanMetric(), MeanMetric()

    def sample_mask(self, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
        config = self.encoder.config
        if self.cluster:
            return cluster_mask(batch_size, config.grid, self.mask_patches, device=self.device, generator=generator)
        return random_mask(batch_size, config.num_patches, self.mask_patches, device=self.device, generator=generator)

    def masked_outputs(
        self, fbank: torch.Tensor, mask: torch.Tensor, head: PatchPredictionHead
    ) -> torch.Tensor:
        tokens = self.encoder.patch_tokens(self.encoder(fbank, mask))
        return head(gather_masked(tokens, mask, self.mask_patches))

    def losses(self, fbank: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        config = self.encoder.config
        targets = patchify(fbank, config.fshape, config.tshape)
        mask = self.sample_mask(len(fbank), generator)
        if self.passes == 2:
            generative_mask = self.sample_mask(len(fbank), generator)
            discriminative = self.masked_outputs(fbank, mask, self.discriminative_head)
            generative = self.masked_outputs(fbank, generative_mask, self.generative_head)
        else:
            generative_mask = mask
            tokens = gather_masked(self.encoder.patch_tokens(self.encoder(fbank, mask)), mask, self.mask_patches)
            discriminative, generative = self.discriminative_head(tokens), self.generative_head(tokens)
        nce, accuracy = info_nce(discriminative, gather_masked(targets, mask, self.mask_patches))
        mse = F.mse_loss(generative.float(), gather_masked(targets, generative_mask, self.mask_patches))
        return {
            "loss": nce + self.mse_weight * mse, "nce": nce, "mse": mse, "acc": accuracy,
            "generative_mask": generative_mask, "generative": generative.detach(),
        }

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        out = self.losses(batch["fbank"])
        size = len(batch["fbank"])
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=size)
        self.log_dict({f"train/{name}": out[name] for name in ("nce", "mse")}, batch_size=size)
        self.log("train/acc", out["acc"], prog_bar=True, batch_size=size)
        if self.should_draw():
            self.draw(batch["fbank"][0], out["generative_mask"][0], out["generative"][0])
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # Masks seeded by the batch index: every validation sees the same masks.
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        out = self.losses(batch["fbank"], generator)
        size = len(batch["fbank"])
        for name, metric in (("nce", self.val_nce), ("mse", self.val_mse), ("acc", self.val_acc)):
            metric.update(out[name], size)
            self.log(f"val/{name}", metric, batch_size=size)

    def plateau_metric(self) -> float:
        return float(self.val_acc.compute())

    def draw(self, fbank: torch.Tensor, mask: torch.Tensor, generated: torch.Tensor) -> None:
        """Input, masked input and reconstruction (input with the masked patches predicted)."""
        config = self.encoder.config
        patches = patchify(fbank[None], config.fshape, config.tshape)[0]
        masked, rebuilt = patches.clone(), patches.clone()
        masked[mask] = patches.min()
        rebuilt[mask] = generated.to(patches.dtype)
        frames, bins = fbank.shape
        images = [unpatchify(p[None], config.fshape, config.tshape, frames, bins)[0] for p in (masked, rebuilt)]
        self.log_picture("train/reconstruction", spectrogram_strip(fbank, *images),
                         caption="input / masked / reconstructed")
