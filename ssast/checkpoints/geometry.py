"""The geometry of an encoder read off its weights (timm's ViT names), for the formats that
do not record it whole: official SSAST, Hugging Face AST state dicts, ASiT, ImageNet ViTs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ssast.checkpoints.common import CheckpointError, Hints

# timm's classifiers and pre-logits, which ride along in ViT files but an encoder never uses.
UNUSED_VIT_HEADS = re.compile(r"^(head|head_dist|pre_logits|fc_norm)\.")


def shape_geometry(path: Path, format: str, state: dict[str, torch.Tensor], hints: Hints) -> dict[str, Any]:
    """Shape fields of the config, read off the weights (timm names)."""
    try:
        embed_dim, _, fshape, tshape = state["patch_embed.proj.weight"].shape
        depth = 1 + max(int(match.group(1)) for key in state if (match := re.match(r"blocks\.(\d+)\.", key)))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise CheckpointError(path, format, f"lacks the keys of a ViT encoder ({error})") from None
    num_heads = hints.num_heads or max(1, embed_dim // 64)
    return {
        "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads, "mlp_ratio": hidden / embed_dim,
        "fshape": fshape, "tshape": tshape, "num_lead_tokens": 2 if "dist_token" in state else 1,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state,
    }


def grid_geometry(
    path: Path, format: str, num_patches: int, fshape: int, tshape: int, candidates: list[tuple[int, int]],
    input_fdim: int = 128,
) -> dict[str, int]:
    """Strides and input length under which ``num_patches`` form a grid, trying
    ``candidates`` (``(fstride, tstride)``) in order."""
    for fstride, tstride in candidates:
        n_freq = (input_fdim - fshape) // fstride + 1
        if num_patches % n_freq == 0:
            n_time = num_patches // n_freq
            return {"fstride": fstride, "tstride": tstride, "input_tdim": (n_time - 1) * tstride + tshape}
    raise CheckpointError(
        path, format,
        f"cannot tell the patch grid of its {num_patches} position embeddings (tried strides {candidates}); "
        "pass stored_strides=(fstride, tstride)",
    )


def default_candidates(fshape: int, tshape: int, hints: Hints, pretrained: bool) -> list[tuple[int, int]]:
    """The strides to try, in order, for weights that do not record theirs: the caller's, or
    those of pretraining (stride = patch shape) and finetuning (AST's 10, a frame model's 1),
    the likelier first."""
    if hints.stored_strides:
        return [tuple(hints.stored_strides)]
    if fshape == 128:  # frame models: stride 2 to pretrain, 1 to finetune
        return [(fshape, tshape), (fshape, 1)] if pretrained else [(fshape, 1), (fshape, tshape)]
    return [(fshape, tshape), (10, 10)] if pretrained else [(10, 10), (fshape, tshape)]


def inferred_geometry(
    path: Path, format: str, state: dict[str, torch.Tensor], hints: Hints, pretrained: bool
) -> dict[str, Any]:
    """The whole geometry of weights that record neither their strides nor their input
    length: the shapes, and the strides under which the position embeddings form a grid."""
    geometry = shape_geometry(path, format, state, hints)
    num_patches = state["pos_embed"].shape[1] - geometry["num_lead_tokens"]
    candidates = default_candidates(geometry["fshape"], geometry["tshape"], hints, pretrained)
    return geometry | grid_geometry(path, format, num_patches, geometry["fshape"], geometry["tshape"], candidates)
