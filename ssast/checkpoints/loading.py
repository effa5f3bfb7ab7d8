"""Building the encoder (and classifier) a parsed checkpoint describes: loaded strictly, then
adapted to the geometry asked for."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssast.checkpoints import registry
from ssast.checkpoints.common import Checkpoint, CheckpointError, Hints, Parsed, read_labels
from ssast.encoder import ASTEncoder
from ssast.positions import resize_positions
from ssast.heads import ClassificationHead

# What a loaded encoder may be given at another value than it was trained with.
ADJUSTABLE = ("fstride", "tstride", "input_tdim", "drop_path")


def load_encoder(path: str | Path, **overrides: Any) -> ASTEncoder:
    """The encoder of any supported checkpoint (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, **overrides).encoder


def load_checkpoint(
    path: str | Path,
    *,
    stored_strides: tuple[int, int] | None = None,
    num_heads: int | None = None,
    labels: str | Path | Sequence[str] | None = None,
    **overrides: Any,
) -> Checkpoint:
    """Load an encoder (and its classifier, when the file has one) from ``path``.

    ``overrides`` set the new encoder's ``fstride``, ``tstride``, ``input_tdim`` or
    ``drop_path``; the position embedding is cropped or interpolated to the new grid.
    Files that do not record the strides their position embedding was trained with
    (finetuned SSAST, bare Hugging Face state dicts, ASiT) are read as stride 10 (AST's
    finetuning) or stride = patch shape, whichever fits; pass ``stored_strides`` when
    neither is right. ``num_heads`` is read as ``embed_dim // 64`` unless given (or recorded).

    An ImageNet ViT (format ``imagenet-vit``) has no audio geometry of its own: it is
    converted straight to the one asked for, AST's ``fstride=10, tstride=10,
    input_tdim=1024`` unless ``overrides`` say otherwise (see :func:`imagenet_to_audio`).
    Nor has EAT (format ``eat``), whose fixed position table covers any length up to its own:
    it is built at the strides and length asked for, 16, 16 and 1024 frames unless told.

    ``labels`` names the classes of the file's classifier where the file does not (EAT's
    AudioSet models): a list, a text file of one name per line, or AudioSet's
    ``class_labels_indices.csv``; their number must be the classifier's.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    _check_adjustable(overrides)
    parsed = registry.parse(path, Hints(stored_strides, num_heads, overrides))
    encoder = adapt_encoder(_load_strict(path, parsed), **overrides)
    head, names = None, parsed.labels
    if parsed.head_state is not None:
        weight = parsed.head_state["linear.weight"]
        standardized = "standardize.running_mean" in parsed.head_state  # a finetune's standardize_embedding
        head = ClassificationHead(weight.shape[1], weight.shape[0], parsed.head_eps, standardized)
        _load_module(head, parsed.head_state, path, parsed.format, "classifier")
        head = head.folded() if standardized else head
    if labels is not None:
        if head is None:
            raise CheckpointError(path, parsed.format, "labels were given, but the file holds no classifier")
        names = read_labels(labels, path, parsed.format)
        if len(names) != head.num_classes:
            raise CheckpointError(path, parsed.format, f"{len(names)} labels for a classifier of {head.num_classes} "
                                                       "classes")
    return Checkpoint(encoder, parsed.preprocessing.for_encoder(encoder.config), parsed.format, path, head,
                      parsed.pooling, names, parsed.extra)


def adapt_encoder(encoder: ASTEncoder, **overrides: Any) -> ASTEncoder:
    """``encoder`` with some of ``fstride``, ``tstride``, ``input_tdim`` and ``drop_path``
    changed: a new encoder with the same weights, its position embedding moved to the new
    patch grid (:func:`~ssast.positions.resize_positions`: a learned one cropped or interpolated,
    a fixed sin-cos table indexed); the same encoder when nothing changes."""
    _check_adjustable(overrides)
    target = encoder.config.replace(**overrides)
    if target == encoder.config:
        return encoder
    state = encoder.state_dict()
    state["pos_embed"] = resize_positions(state["pos_embed"], encoder.config, target)
    adapted = ASTEncoder(target)
    adapted.load_state_dict(state)
    return adapted


def check_fits(checkpoint: Checkpoint, wanted: dict[str, Any], remedy: str) -> None:
    """Refuse, in one line naming each field, an encoder whose config differs from what a
    recipe builds (``wanted``: config fields; ``None`` values are not checked): starting frame
    tokens from a patch checkpoint, say, would otherwise go unnoticed. ``remedy`` says what to
    set."""
    config = checkpoint.encoder.config
    differ = [name for name, value in wanted.items() if value is not None and getattr(config, name) != value]
    if differ:
        has = ", ".join(f"{name}={getattr(config, name)}" for name in differ)
        asked = ", ".join(f"{name}={wanted[name]}" for name in differ)
        raise CheckpointError(checkpoint.path, checkpoint.format,
                              f"holds an encoder with {has} but the recipe asks for {asked}; {remedy}")


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
