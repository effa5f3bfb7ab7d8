"""Which format a checkpoint is: the file is read once (:func:`read`), then the formats of
:data:`FORMATS` are tried in order, and the first that recognizes it parses it.

The order matters where layouts overlap:

1. folders: ours (``config.json`` says ``"format": "ssast-encoder"``), EAT's (``model_type:
   eat``), then any other folder as a Hugging Face AST (which refuses a ``model_type`` that is
   not an AST's);
2. files that record what they are: ours (:func:`~ssast.checkpoints.ours.save_encoder`),
   then a Lightning checkpoint of ours (``encoder_config`` beside the ``state_dict``);
3. ASiT training checkpoints, told by their ``teacher``/``student`` dicts;
4. bare weights (under ``state_dict`` or ``model``, with or without ``module.``), by their
   names: data2vec 2.0's (``modality_encoders.*``: EAT's fairseq files, and the data2vec 2.0
   models that are refused), official SSAST (``v.*``), Hugging Face AST, then timm names, an ImageNet ViT
   when the patch projection reads RGB, else ASiT's, which only the channel count tells
   apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ssast.checkpoints import asit, eat, huggingface, imagenet, ours, ssast_official
from ssast.checkpoints.common import UNKNOWN, CheckpointError, Contents, Hints, Parsed, read_safetensors, torch_load


class Format(NamedTuple):
    name: str
    recognizes: Callable[[Contents], bool]
    parse: Callable[[Contents, Hints], Parsed]


FORMATS: list[Format] = [
    Format(ours.OUR_FORMAT, ours.is_our_folder, ours.parse_our_folder),
    Format(eat.FORMAT, eat.is_eat_folder, eat.parse_eat_folder),
    Format(huggingface.FORMAT, huggingface.is_huggingface_folder, huggingface.parse_huggingface_folder),
    Format(ours.OUR_FORMAT, ours.is_our_file, ours.parse_our_file),
    Format(ours.LIGHTNING_FORMAT, ours.is_lightning, ours.parse_lightning),
    Format(asit.FORMAT, asit.is_asit_training, asit.parse_asit_training),
    Format(eat.FORMAT, eat.is_eat_file, eat.parse_eat_file),
    Format(ssast_official.FORMAT, ssast_official.is_ssast_official, ssast_official.parse_ssast_official),
    Format(huggingface.FORMAT, huggingface.is_huggingface_state, huggingface.parse_huggingface_state),
    Format(imagenet.FORMAT, imagenet.is_imagenet, imagenet.parse_imagenet),
    Format(asit.FORMAT, asit.is_asit_state, asit.parse_asit_state),
]


def parse(path: Path, hints: Hints) -> Parsed:
    """The checkpoint at ``path`` parsed by the first of :data:`FORMATS` that recognizes it."""
    contents = read(path)
    for format in FORMATS:
        if format.recognizes(contents):
            return format.parse(contents, hints)
    sample = ", ".join(sorted(contents.weights)[:8])
    raise CheckpointError(path, UNKNOWN, f"not a checkpoint format ssast knows; its top-level keys: {sample}")


def read(path: Path) -> Contents:
    """A folder's ``config.json``, or a file's dict: a safetensors file's tensors and metadata,
    or what ``torch.load`` (weights only) returns."""
    if path.is_dir():
        config_file = path / "config.json"
        if not config_file.exists():
            raise CheckpointError(path, "folder", "a folder checkpoint must be a save_pretrained folder (config.json "
                                                  "beside the weights) of a Hugging Face AST or of ssast.hub")
        try:
            return Contents(path=path, folder_config=json.loads(config_file.read_text()))
        except json.JSONDecodeError as error:
            raise CheckpointError(path, "folder", f"config.json is not JSON ({error})") from None
    if path.suffix == ".safetensors":
        tensors, metadata = read_safetensors(path)
        return Contents(path=path, top=tensors, metadata=metadata)
    top = torch_load(path)
    if not isinstance(top, dict):
        raise CheckpointError(path, UNKNOWN, f"holds a {type(top).__name__}, not a dict of weights")
    return Contents(path=path, top=top)
