"""Building the encoder (and classifier) a parsed checkpoint describes: loaded strictly, then
adapted to the geometry asked for."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ssast.checkpoints import registry
from ssast.checkpoints.common import Checkpoint, CheckpointError, Hints, Parsed
from ssast.encoder import ASTEncoder, adapt_pos_embed
from ssast.heads import ClassificationHead

# What a loaded encoder may be given at another value than it was trained with.
ADJUSTABLE = ("fstride", "tstride", "input_tdim", "drop_path")


def load_encoder(path: str | Path, **overrides: Any) -> ASTEncoder:
    """The encoder of any supported checkpoint (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, **overrides).encoder


def load_checkpoint(
    path: str | Path, *, stored_strides: tuple[int, int] | None = None, num_heads: int | None = None, **overrides: Any
) -> Checkpoint:
    """Load an encoder (and its classifier, when the file has one) from ``path``.

    ``overrides`` set the new encoder's ``fstride``, ``tstride``, ``input_tdim`` or
    ``drop_path``; the position embedding is cropped or interpolated to the new grid.
    Files that do not record the strides their position embedding was trained with
    (finetuned SSAST, bare Hugging Face state dicts, ASiT) are read as stride 10 (AST's
    finetuning) or stride = patch shape, whichever fits; pass ``stored_strides`` when
    neither is right. ``num_heads`` is read as ``embed_dim // 64`` unless given.

    An ImageNet ViT (format ``imagenet-vit``) has no audio geometry of its own: it is
    converted straight to the one asked for, AST's ``fstride=10, tstride=10,
    input_tdim=1024`` unless ``overrides`` say otherwise (see :func:`imagenet_to_audio`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _check_adjustable(overrides)
    parsed = registry.parse(path, Hints(stored_strides, num_heads, overrides))
    encoder = adapt_encoder(_load_strict(path, parsed), **overrides)
    head = None
    if parsed.head_state is not None:
        weight = parsed.head_state["linear.weight"]
        head = ClassificationHead(weight.shape[1], weight.shape[0], parsed.head_eps)
        _load_module(head, parsed.head_state, path, parsed.format, "classifier")
    return Checkpoint(encoder, parsed.preprocessing.for_encoder(encoder.config), parsed.format, path, head,
                      parsed.pooling, parsed.labels, parsed.extra)


def adapt_encoder(encoder: ASTEncoder, **overrides: Any) -> ASTEncoder:
    """``encoder`` with some of ``fstride``, ``tstride``, ``input_tdim`` and ``drop_path``
    changed: a new encoder with the same weights, its position embedding cropped or
    interpolated to the new patch grid (the same encoder when nothing changes)."""
    _check_adjustable(overrides)
    target = encoder.config.replace(**overrides)
    if target == encoder.config:
        return encoder
    state = encoder.state_dict()
    state["pos_embed"] = adapt_pos_embed(state["pos_embed"], target.num_lead_tokens, encoder.config.grid, target.grid)
    adapted = ASTEncoder(target)
    adapted.load_state_dict(state)
    return adapted


def _check_adjustable(overrides: dict[str, Any]) -> None:
    unknown = set(overrides) - set(ADJUSTABLE)
    if unknown:
        raise TypeError(f"cannot change {sorted(unknown)} of a trained encoder; adjustable: {', '.join(ADJUSTABLE)}")


def _load_module(module: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, format: str, what: str) -> None:
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        mismatches = re.findall(r"size mismatch for ([^:]+): (.*?)\.(?:\n|$)", str(error))
        detail = "; ".join(f"{name}: {reason}" for name, reason in mismatches) or str(error)
        raise CheckpointError(path, format, f"{what} shapes do not fit: {detail}") from None
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {what} keys: {', '.join(missing[:10])}")
        if unexpected:
            parts.append(f"unexpected {what} keys: {', '.join(unexpected[:10])}")
        raise CheckpointError(path, format, "; ".join(parts))


def _load_strict(path: Path, parsed: Parsed) -> ASTEncoder:
    encoder = ASTEncoder(parsed.config)
    state = dict(parsed.encoder_state)
    for key in parsed.optional - set(state):  # e.g. no mask token in a finetuned model
        state[key] = encoder.state_dict()[key]
    _load_module(encoder, state, path, parsed.format, "encoder")
    return encoder
