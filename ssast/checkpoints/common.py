"""What every checkpoint format shares: the loaded result (:class:`Checkpoint`), the error
(:class:`CheckpointError`), a file read once (:class:`Contents`) and parsed
(:class:`Parsed`), and the safe ways to open files.

Every ``torch.load`` here is ``weights_only=True``: a file that would run code is refused.
"""

from __future__ import annotations

import argparse
import csv
import pickle
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssast.encoder import ASTEncoder, EncoderConfig, Pooling
from ssast.features import PUBLISHED_STATS
from ssast.heads import ClassificationHead

# What a file whose format is not known yet is called in errors.
UNKNOWN = "unknown"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with the file, its apparent format and why."""

    def __init__(self, path: str | Path, format: str, message: str) -> None:
        super().__init__(f"{path} ({format}): {message}")
        self.path, self.format = Path(path), format


@dataclass(frozen=True)
class Preprocessing:
    """How the encoder's input was made: the fbank is always Kaldi's with the AST
    settings (``ssast.features.Fbank``); these are the normalization and the length."""

    mean: float = PUBLISHED_STATS["audioset"][0]
    std: float = PUBLISHED_STATS["audioset"][1]
    target_length: int = 1024

    def for_encoder(self, config: EncoderConfig) -> Preprocessing:
        """This normalization with the input length of an encoder of ``config``, which is what
        files record and loading returns: an encoder may see less than the data's clips (ASiT's
        teacher sees views of them) or be adapted to another length."""
        return replace(self, target_length=config.input_tdim)


@dataclass
class Checkpoint:
    """An encoder loaded from a file, with whatever else the file knew."""

    encoder: ASTEncoder
    preprocessing: Preprocessing
    format: str
    path: Path
    head: ClassificationHead | None = None
    pooling: Pooling = "mean"  # the pooling the head was trained with
    labels: list[str] | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. SSAST's pretraining heads


@dataclass(frozen=True, kw_only=True)
class Parsed:
    """What a format parser read from a file, in our names, before anything is built."""

    format: str
    config: EncoderConfig  # the geometry the weights were trained at
    encoder_state: dict[str, torch.Tensor]
    preprocessing: Preprocessing
    optional: frozenset[str] = frozenset()  # encoder keys the file may lack
    head_state: dict[str, torch.Tensor] | None = None
    head_eps: float = 1e-5
    pooling: Pooling = "mean"
    labels: list[str] | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Hints:
    """What the caller of ``load_checkpoint`` knows that a file may not record."""

    stored_strides: tuple[int, int] | None
    num_heads: int | None
    # The geometry asked for: a file without an audio geometry (an ImageNet ViT) is converted to it.
    target: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Contents:
    """A checkpoint read once, for the formats to recognize and parse: a ``save_pretrained``
    folder's ``config.json``, or a file's top-level dict (and a safetensors file's metadata)."""

    path: Path
    folder_config: dict[str, Any] | None = None
    top: dict[str, Any] = field(default_factory=dict)  # what torch.load returned; a safetensors file's tensors
    metadata: dict[str, str] = field(default_factory=dict)  # a safetensors file's

    @cached_property
    def weights(self) -> dict[str, Any]:
        """``top``, or the dict it keeps its weights in (``state_dict``, ``model``) when it
        holds no tensors itself."""
        weights = self.top
        for wrapper in ("state_dict", "model"):
            if isinstance(weights.get(wrapper), dict) and not tensors(weights):
                weights = weights[wrapper]
        return weights

    @cached_property
    def state(self) -> dict[str, torch.Tensor]:
        """The tensors of :attr:`weights`, without DataParallel's ``module.`` prefix."""
        return strip(tensors(self.weights), "module.")


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"loading it would import {found.group(1)}" if found else str(error).strip().splitlines()[0]


def _numpy_values() -> list[Any]:
    """What unpickling numpy scalars and arrays needs, and nothing more: fairseq's checkpoints
    (EAT's) keep numpy values among their training state (``extra_state``, the optimizer
    history). The reconstructors are allowed under numpy 2's module and numpy 1's, whichever
    wrote the file; each dtype's class is what a pickled dtype is rebuilt as here."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1
        from numpy.core import multiarray
    values: list[Any] = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        values += [(function, f"numpy.core.multiarray.{name}"), (function, f"numpy._core.multiarray.{name}")]
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    return values + [type(np.dtype(kind)) for kind in kinds]


def torch_load(path: Path) -> Any:
    """What ``torch.save`` wrote to ``path``, if it is only weights and plain values."""
    with path.open("rb") as handle:
        head = handle.read(4)
    # torch.save writes zip files (since 1.6), older versions a pickle (protocol 2: 0x80 0x02).
    if not (zipfile.is_zipfile(path) or head.startswith(b"\x80")):
        raise CheckpointError(path, UNKNOWN, "not a checkpoint: neither a torch.save file nor safetensors")
    # ASiT saves its argparse.Namespace of options, fairseq numpy values: both only hold values.
    try:
        with torch.serialization.safe_globals([argparse.Namespace, *_numpy_values()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, "pickle", f"refused: {refusal_reason(error)}; only files of weights and plain "
                                              "values are loaded (re-save a trusted file's state_dict)") from None
    except (RuntimeError, EOFError, OSError) as error:  # a cut file fails as any of these
        raise CheckpointError(path, UNKNOWN, f"not a readable torch file ({error})") from None


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its metadata."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(path, "safetensors", f"not a readable safetensors file ({error})") from None


def tensors(mapping: dict) -> dict[str, torch.Tensor]:
    """The entries of ``mapping`` that are tensors."""
    return {key: value for key, value in mapping.items() if isinstance(value, torch.Tensor)}


def under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose keys start with ``prefix``, without it."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from the keys when every key has it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def read_labels(labels: str | Path | Sequence[str], path: Path, format: str) -> list[str]:
    """Class names given for the classifier of the checkpoint at ``path``: a list, a text file
    with one name per line (a ``classes.txt``), or AudioSet's ``class_labels_indices.csv``
    (``index,mid,display_name``, with or without its header; EAT's ``labels.csv``)."""
    if not isinstance(labels, (str, Path)):
        return [str(label) for label in labels]
    source = Path(labels)
    if not source.is_file():
        raise CheckpointError(path, format, f"no label file at {source}")
    lines = [line for line in source.read_text().splitlines() if line.strip()]
    if source.suffix != ".csv":
        return [line.strip() for line in lines]
    rows = [row for row in csv.reader(lines) if row and row[0].strip().isdigit()]  # leaves the header out
    if not rows or any(len(row) < 3 for row in rows):
        raise CheckpointError(path, format, f"{source} is not AudioSet's index,mid,display_name table")
    names = {int(row[0]): row[2] for row in rows}
    if sorted(names) != list(range(len(names))):
        raise CheckpointError(path, format, f"{source} does not number its classes 0 to {len(names) - 1}")
    return [names[index] for index in range(len(names))]
