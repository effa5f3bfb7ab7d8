"""``imagenet-vit``: a timm/DeiT ImageNet ViT (an RGB patch projection), adapted to audio as
AST does (:func:`imagenet_to_audio`)."""

from __future__ import annotations

import torch

from ssast.checkpoints.common import CheckpointError, Contents, Hints, Parsed, Preprocessing
from ssast.checkpoints.geometry import UNUSED_VIT_HEADS, shape_geometry
from ssast.encoder import EncoderConfig
from ssast.positions import adapt_pos_embed

FORMAT = "imagenet-vit"
# AST's finetuning geometry, what an ImageNet ViT becomes unless told otherwise.
IMAGENET_AUDIO_DEFAULTS = {"fstride": 10, "tstride": 10, "input_tdim": 1024}


def imagenet_to_audio(
    state: dict[str, torch.Tensor], config: EncoderConfig, num_lead_tokens: int
) -> dict[str, torch.Tensor]:
    """An ImageNet ViT's weights (timm names, RGB patch projection, square grid of position
    embeddings) made into those of an audio encoder of geometry ``config``, as the official
    AST code does: the projection's three input channels summed into one (its bias kept), and
    the grid of position embeddings cut from the middle or bilinearly stretched along time,
    then along frequency (:func:`~ssast.positions.adapt_pos_embed`); the leading tokens kept."""
    state = dict(state)
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].sum(dim=1, keepdim=True)
    num_patches = state["pos_embed"].shape[1] - num_lead_tokens
    side = round(num_patches**0.5)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} position embeddings do not form a square image grid")
    state["pos_embed"] = adapt_pos_embed(state["pos_embed"], num_lead_tokens, (side, side), config.grid)
    return state


def is_imagenet(contents: Contents) -> bool:
    projection = contents.state.get("patch_embed.proj.weight")
    return projection is not None and projection.shape[1] == 3  # RGB input channels: an image model


def parse_imagenet(contents: Contents, hints: Hints) -> Parsed:
    """The ViT converted straight to the audio geometry asked for (``hints.target``), AST's
    finetuning one (:data:`IMAGENET_AUDIO_DEFAULTS`) where nothing is asked."""
    path = contents.path
    encoder_state = {k: v for k, v in contents.state.items() if not UNUSED_VIT_HEADS.match(k)}
    geometry = shape_geometry(path, FORMAT, encoder_state, hints)
    if geometry["fshape"] != geometry["tshape"]:
        raise CheckpointError(path, FORMAT, f"patches of {geometry['fshape']}x{geometry['tshape']} are not square")
    target = {**IMAGENET_AUDIO_DEFAULTS, **hints.target}
    try:
        config = EncoderConfig(**geometry, **target, layer_norm_eps=1e-6)  # timm's ViT eps
        encoder_state = imagenet_to_audio(encoder_state, config, geometry["num_lead_tokens"])
    except ValueError as error:
        raise CheckpointError(path, FORMAT, str(error)) from None
    # ImageNet statistics mean nothing for log-mels: AudioSet's, as AST uses.
    return Parsed(format=FORMAT, config=config, encoder_state=encoder_state,
                  preprocessing=Preprocessing(target_length=config.input_tdim), optional=frozenset({"mask_embed"}))
