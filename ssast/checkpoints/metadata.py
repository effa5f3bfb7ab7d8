"""What a Lightning checkpoint of this project records beside its ``state_dict`` so that
:func:`~ssast.checkpoints.load_checkpoint` reads it as format ``ssast-lightning``
(:func:`~ssast.checkpoints.ours.parse_lightning`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ssast.checkpoints.common import Preprocessing
from ssast.checkpoints.ours import classifier_record
from ssast.encoder import ASTEncoder, Pooling
from ssast.heads import ClassificationHead


def lightning_metadata(
    encoder: ASTEncoder,
    attribute: str = "encoder",
    preprocessing: Preprocessing | None = None,
    *,
    head: ClassificationHead | None = None,
    head_attribute: str = "head",
    pooling: Pooling = "mean",
    labels: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What a Lightning checkpoint of a module holding ``encoder`` as ``module.<attribute>``
    needs beside its ``state_dict`` for :func:`load_checkpoint` to read that encoder back
    (format ``ssast-lightning``): the prefix of its weights, its config and, when known, the
    input preprocessing, whose length is the encoder's own (see
    :meth:`Preprocessing.for_encoder`).

    A module with a classifier ``head`` (as ``module.<head_attribute>``) records it too, with
    the ``pooling`` it reads and its class ``labels``, so that the checkpoint loads as a whole
    model (``Checkpoint.head``) and exports as one (``ssast-export``). Checkpoints without
    this record load as an encoder alone, as they always did."""
    metadata: dict[str, Any] = {"encoder_prefix": f"{attribute}.", "encoder_config": encoder.config.to_dict()}
    if preprocessing is not None:
        metadata["preprocessing"] = dict(preprocessing.for_encoder(encoder.config).__dict__)
    if head is not None:
        metadata["classifier"] = {"prefix": f"{head_attribute}.", "pooling": pooling, **classifier_record(head, labels)}
    return metadata
