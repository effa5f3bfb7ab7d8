"""This project's own formats, which record the encoder's config whole:

* ``ssast-encoder``: a file :func:`save_encoder` wrote (``.safetensors``, config in its
  metadata, or a ``torch.save`` dict), or a ``save_pretrained`` folder of
  :class:`ssast.hub.HubEncoder` (``config.json`` and ``model.safetensors``, with its
  classifier, if any);
* ``ssast-lightning``: a Lightning checkpoint of a run, with the record
  :func:`~ssast.checkpoints.metadata.lightning_metadata` puts beside its ``state_dict``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssast.checkpoints.common import CheckpointError, Contents, Hints, Parsed, Preprocessing, read_safetensors, under
from ssast.encoder import ASTEncoder, EncoderConfig, Pooling
from ssast.heads import ClassificationHead

OUR_FORMAT = "ssast-encoder"
LIGHTNING_FORMAT = "ssast-lightning"


# --- writing ---------------------------------------------------------------------------


def save_encoder(encoder: ASTEncoder, path: str | Path, preprocessing: Preprocessing | None = None) -> None:
    """Write ``encoder`` with its config (and input preprocessing) for :func:`load_encoder`:
    safetensors when ``path`` ends in ``.safetensors``, else a ``torch.save`` dict of
    tensors and plain values. The recorded input length is the encoder's own, whatever
    ``preprocessing`` says (see :meth:`Preprocessing.for_encoder`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    preprocessing = (preprocessing or Preprocessing()).for_encoder(encoder.config)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in encoder.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        metadata = {
            "format": OUR_FORMAT,
            "config": json.dumps(encoder.config.to_dict()),
            "preprocessing": json.dumps(preprocessing.__dict__),
        }
        save_file(state, str(path), metadata=metadata)
    else:
        torch.save(
            {"format": OUR_FORMAT, "version": 1, "config": encoder.config.to_dict(),
             "preprocessing": dict(preprocessing.__dict__), "state_dict": state},
            path,
        )


def classifier_record(head: ClassificationHead, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """What a file records of a classifier beside its weights (read back by
    :func:`load_checkpoint`): its classes, LayerNorm epsilon and class names."""
    if labels is not None and len(labels) != head.num_classes:
        raise ValueError(f"{len(labels)} labels for a classifier of {head.num_classes} classes")
    return {"num_classes": head.num_classes, "layer_norm_eps": head.norm.eps,
            "labels": None if labels is None else [str(label) for label in labels]}


# --- reading ---------------------------------------------------------------------------


def is_our_file(contents: Contents) -> bool:
    # Safetensors record the format in their metadata, a torch.save dict beside the weights.
    recorded = contents.metadata.get("format") if contents.metadata else contents.top.get("format")
    return recorded == OUR_FORMAT


def parse_our_file(contents: Contents, hints: Hints) -> Parsed:
    """A file of :func:`save_encoder`: safetensors keep the config and preprocessing as JSON
    in their metadata, a ``torch.save`` dict as plain values beside the weights."""
    if contents.metadata:
        config = json.loads(contents.metadata["config"])
        preprocessing = json.loads(contents.metadata["preprocessing"])
        state = contents.top
    else:
        config = contents.top["config"]
        preprocessing = contents.top.get("preprocessing", {})
        state = contents.top["state_dict"]
    return Parsed(format=OUR_FORMAT, config=EncoderConfig(**config), encoder_state=state,
                  preprocessing=Preprocessing(**preprocessing))


def is_lightning(contents: Contents) -> bool:
    return "encoder_config" in contents.top and "state_dict" in contents.top


def parse_lightning(contents: Contents, hints: Hints) -> Parsed:
    """A Lightning checkpoint of a run: the exported encoder's weights under ``encoder_prefix``
    (``encoder.``, ASiT's ``teacher.``) and, for a finetuning run, its classifier."""
    top = contents.top
    prefix = top.get("encoder_prefix", "encoder.")
    # Finetuning runs record their classifier; pretraining runs, and runs from before the
    # record existed, load as an encoder alone.
    classifier = {}
    if (record := top.get("classifier")) is not None:
        head_state = under(top["state_dict"], record["prefix"])
        classifier = recorded_classifier(contents.path, LIGHTNING_FORMAT, record, head_state)
        classifier["pooling"] = recorded_pooling(contents.path, LIGHTNING_FORMAT, record.get("pooling", "mean"))
    return Parsed(format=LIGHTNING_FORMAT, config=EncoderConfig(**top["encoder_config"]),
                  encoder_state=under(top["state_dict"], prefix),
                  preprocessing=Preprocessing(**top.get("preprocessing", {})), **classifier)


def is_our_folder(contents: Contents) -> bool:
    return contents.folder_config is not None and contents.folder_config.get("format") == OUR_FORMAT


def parse_our_folder(contents: Contents, hints: Hints) -> Parsed:
    """A folder :class:`ssast.hub.HubEncoder` saved: ``config.json`` (``encoder``,
    ``preprocessing``, ``pooling``, ``classifier`` or null) and ``model.safetensors``
    (``encoder.*``, ``head.*``)."""
    path, config = contents.path, contents.folder_config
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(path, OUR_FORMAT, "no model.safetensors beside its config.json")
    tensors, _ = read_safetensors(weights)
    unexpected = sorted(key for key in tensors if not key.startswith(("encoder.", "head.")))
    if unexpected:
        raise CheckpointError(path, OUR_FORMAT, f"unexpected keys: {', '.join(unexpected[:10])}")
    encoder_state, head_state = under(tensors, "encoder."), under(tensors, "head.")
    try:
        encoder_config = EncoderConfig(**config["encoder"])
        preprocessing = Preprocessing(**config["preprocessing"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(path, OUR_FORMAT, f"config.json lacks or garbles {error}") from None
    if head_state and not config.get("classifier"):
        raise CheckpointError(path, OUR_FORMAT, "holds classifier weights (head.*) that config.json does not record")
    classifier = {}
    if config.get("classifier"):
        classifier = recorded_classifier(path, OUR_FORMAT, config["classifier"], head_state)
    pooling = recorded_pooling(path, OUR_FORMAT, config.get("pooling", "mean"))
    return Parsed(format=OUR_FORMAT, config=encoder_config, encoder_state=encoder_state,
                  preprocessing=preprocessing, pooling=pooling, **classifier)


def recorded_classifier(
    path: Path, format: str, record: dict[str, Any], head_state: dict[str, torch.Tensor]
) -> dict[str, Any]:
    """The :class:`Parsed` fields of a classifier recorded by :func:`classifier_record`,
    checked against its weights."""
    if not head_state:
        raise CheckpointError(path, format, "records a classifier but holds none of its weights")
    labels = record.get("labels")
    weight = head_state.get("linear.weight")
    if labels is not None and weight is not None and len(labels) != weight.shape[0]:
        raise CheckpointError(path, format, f"{len(labels)} labels for a classifier of {weight.shape[0]} classes")
    return {"head_state": head_state, "head_eps": float(record.get("layer_norm_eps", 1e-5)),
            "labels": None if labels is None else list(labels)}


def recorded_pooling(path: Path, format: str, pooling: Any) -> Pooling:
    if pooling not in ("mean", "cls"):
        raise CheckpointError(path, format, f"records pooling {pooling!r}, not 'mean' or 'cls'")
    return pooling
