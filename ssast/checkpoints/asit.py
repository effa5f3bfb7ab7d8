"""``asit``: ASiT's ``.pt`` files, timm ViT names (possibly under ``backbone.``), either a
training checkpoint with its ``teacher`` and ``student`` or the weights of one."""

from __future__ import annotations

import torch

from ssast.checkpoints.common import Contents, Hints, Parsed, Preprocessing, strip, tensors
from ssast.checkpoints.geometry import UNUSED_VIT_HEADS, inferred_geometry
from ssast.encoder import EncoderConfig

FORMAT = "asit"
# The branches of a training checkpoint, the preferred first: the teacher, an EMA of the
# student, transfers better.
BRANCHES = ("teacher", "student")


def _branch(contents: Contents) -> str | None:
    return next((branch for branch in BRANCHES if isinstance(contents.top.get(branch), dict)), None)


def is_asit_training(contents: Contents) -> bool:
    return _branch(contents) is not None


def parse_asit_training(contents: Contents, hints: Hints) -> Parsed:
    return _parse_state(contents, tensors(contents.top[_branch(contents)]), hints)


def is_asit_state(contents: Contents) -> bool:
    return "patch_embed.proj.weight" in strip(contents.state, "backbone.")


def parse_asit_state(contents: Contents, hints: Hints) -> Parsed:
    return _parse_state(contents, contents.state, hints)


def _parse_state(contents: Contents, state: dict[str, torch.Tensor], hints: Hints) -> Parsed:
    """The encoder of ASiT's weights; what rides along beside its ``backbone.`` (the
    projection heads) is kept as :attr:`Parsed.extra`."""
    state = strip(state, "module.")
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")} or state
    extra = {k: v for k, v in state.items() if not k.startswith("backbone.")} if backbone is not state else {}
    encoder_state = {k: v for k, v in backbone.items() if not UNUSED_VIT_HEADS.match(k)}
    config = EncoderConfig(**inferred_geometry(contents.path, FORMAT, encoder_state, hints, pretrained=True))
    return Parsed(format=FORMAT, config=config, encoder_state=encoder_state,
                  preprocessing=Preprocessing(target_length=config.input_tdim), optional=frozenset({"mask_embed"}),
                  extra=extra)
