"""Loading encoders from this project's files and from the official SSAST, Hugging Face
AST and ASiT releases; exporting them.

:func:`load_checkpoint` recognizes the file, maps its parameter names onto
:class:`~ssast.encoder.ASTEncoder`'s (timm's ViT names), reads the geometry the weights
were trained at, loads strictly and then, if asked for another stride or input length,
adapts the position embedding. Every ``torch.load`` is ``weights_only=True``: a file that
would run code is refused. Anything unexpected (an unknown layout, a missing or extra key,
a shape that does not fit) raises :class:`CheckpointError` naming the file, the format it
looked like and the keys at fault; nothing is ever loaded partially.

Formats:

* ``ssast-encoder``: written by :func:`save_encoder` (``.pt`` or ``.safetensors``), or a
  ``save_pretrained`` folder of :class:`ssast.hub.HubEncoder` (with its classifier, if any);
* ``ssast-lightning``: a Lightning checkpoint of this project (``state_dict`` with the
  ``encoder_prefix`` beside it, ``encoder.`` or ASiT's ``teacher.``, and ``encoder_config``;
  a finetuning run's also its ``classifier``: see :func:`lightning_metadata`);
* ``ssast-official``: the official SSAST ``.pth`` files, pretrained (``module.v.*``,
  ``mask_embed``, ``cpredlayer``/``gpredlayer``, ``p_input_fdim/tdim``) or finetuned
  (``module.v.*``, ``module.mlp_head.*``), with or without DataParallel's ``module.``;
* ``huggingface-ast``: ``ASTModel`` / ``ASTForAudioClassification``, as a
  ``save_pretrained`` folder or a bare state dict, in transformers 4 or 5 names;
* ``asit``: an ASiT ``.pt`` with timm ViT keys, possibly under ``teacher``/``student``;
* ``imagenet-vit``: a timm/DeiT ImageNet ViT (RGB patch projection), adapted to audio as
  AST does (:func:`imagenet_to_audio`).
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ssast.encoder import ASTEncoder, EncoderConfig, Pooling, adapt_pos_embed
from ssast.features import PUBLISHED_STATS
from ssast.heads import ClassificationHead

OUR_FORMAT = "ssast-encoder"
# What a loaded encoder may be given at another value than it was trained with.
ADJUSTABLE = ("fstride", "tstride", "input_tdim", "drop_path")


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


@dataclass
class _Parsed:
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
    parsed = _parse(path, _Hints(stored_strides, num_heads, overrides))
    encoder = adapt_encoder(_load_strict(path, parsed), **overrides)
    target = encoder.config
    head = None
    if parsed.head_state is not None:
        weight = parsed.head_state["linear.weight"]
        head = ClassificationHead(weight.shape[1], weight.shape[0], parsed.head_eps)
        _load_module(head, parsed.head_state, path, parsed.format, "classifier")
    preprocessing = Preprocessing(parsed.preprocessing.mean, parsed.preprocessing.std, target.input_tdim)
    return Checkpoint(encoder, preprocessing, parsed.format, path, head, parsed.pooling, parsed.labels, parsed.extra)


def _check_adjustable(overrides: dict[str, Any]) -> None:
    unknown = set(overrides) - set(ADJUSTABLE)
    if unknown:
        raise TypeError(f"cannot change {sorted(unknown)} of a trained encoder; adjustable: {', '.join(ADJUSTABLE)}")


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


def save_encoder(encoder: ASTEncoder, path: str | Path, preprocessing: Preprocessing | None = None) -> None:
    """Write ``encoder`` with its config (and input preprocessing) for :func:`load_encoder`:
    safetensors when ``path`` ends in ``.safetensors``, else a ``torch.save`` dict of
    tensors and plain values."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    preprocessing = preprocessing or Preprocessing(target_length=encoder.config.input_tdim)
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
    input preprocessing.

    A module with a classifier ``head`` (as ``module.<head_attribute>``) records it too, with
    the ``pooling`` it reads and its class ``labels``, so that the checkpoint loads as a whole
    model (``Checkpoint.head``) and exports as one (``ssast-export``). Checkpoints without
    this record load as an encoder alone, as they always did."""
    metadata: dict[str, Any] = {"encoder_prefix": f"{attribute}.", "encoder_config": encoder.config.to_dict()}
    if preprocessing is not None:
        metadata["preprocessing"] = dict(preprocessing.__dict__)
    if head is not None:
        metadata["classifier"] = {"prefix": f"{head_attribute}.", "pooling": pooling, **classifier_record(head, labels)}
    return metadata


def classifier_record(head: ClassificationHead, labels: Sequence[str] | None = None) -> dict[str, Any]:
    """What a file records of a classifier beside its weights (read back by
    :func:`load_checkpoint`): its classes, LayerNorm epsilon and class names."""
    if labels is not None and len(labels) != head.num_classes:
        raise ValueError(f"{len(labels)} labels for a classifier of {head.num_classes} classes")
    return {"num_classes": head.num_classes, "layer_norm_eps": head.norm.eps,
            "labels": None if labels is None else [str(label) for label in labels]}


# --------------------------------------------------------------------------------------
# Reading files


@dataclass(frozen=True)
class _Hints:
    stored_strides: tuple[int, int] | None
    num_heads: int | None
    # The geometry asked for: a file without an audio geometry (an ImageNet ViT) is converted to it.
    target: dict[str, Any] = field(default_factory=dict)


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"loading it would import {found.group(1)}" if found else str(error).strip().splitlines()[0]


def _torch_load(path: Path) -> Any:
    with path.open("rb") as handle:
        head = handle.read(4)
    # torch.save writes zip files (since 1.6), older versions a pickle (protocol 2: 0x80 0x02).
    if not (zipfile.is_zipfile(path) or head.startswith(b"\x80")):
        raise CheckpointError(path, "unknown", "not a checkpoint: neither a torch.save file nor safetensors")
    # ASiT saves its argparse.Namespace of options; it only holds values, so it is allowed.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(path, "pickle", f"refused: {refusal_reason(error)}; only files of weights and plain "
                                              "values are loaded (re-save a trusted file's state_dict)") from None
    except (RuntimeError, EOFError) as error:
        raise CheckpointError(path, "unknown", f"not a readable torch file ({error})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(path, "safetensors", f"not a readable safetensors file ({error})") from None


def _tensors(mapping: dict) -> dict[str, torch.Tensor]:
    return {key: value for key, value in mapping.items() if isinstance(value, torch.Tensor)}


def _under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of ``state`` whose keys start with ``prefix``, without it."""
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Drop ``prefix`` from the keys when every key has it."""
    if state and all(key.startswith(prefix) for key in state):
        return {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _parse(path: Path, hints: _Hints) -> _Parsed:
    if path.is_dir():
        return _parse_folder(path, hints)
    if path.suffix == ".safetensors":
        tensors, metadata = _read_safetensors(path)
        if metadata.get("format") == OUR_FORMAT:
            config = EncoderConfig(**json.loads(metadata["config"]))
            return _Parsed(OUR_FORMAT, config, tensors, Preprocessing(**json.loads(metadata["preprocessing"])))
        obj: Any = tensors
    else:
        obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(path, "unknown", f"holds a {type(obj).__name__}, not a dict of weights")
    if obj.get("format") == OUR_FORMAT:
        preprocessing = Preprocessing(**obj.get("preprocessing", {}))
        return _Parsed(OUR_FORMAT, EncoderConfig(**obj["config"]), obj["state_dict"], preprocessing)
    if "encoder_config" in obj and "state_dict" in obj:
        prefix = obj.get("encoder_prefix", "encoder.")  # "teacher." for ASiT runs
        state = _under(obj["state_dict"], prefix)
        preprocessing = Preprocessing(**obj.get("preprocessing", {}))
        # Finetuning runs record their classifier; pretraining runs, and runs from before the
        # record existed, load as an encoder alone.
        classifier = {}
        if (record := obj.get("classifier")) is not None:
            classifier = _classifier(path, "ssast-lightning", record, _under(obj["state_dict"], record["prefix"]))
            classifier["pooling"] = _pooling(path, "ssast-lightning", record.get("pooling", "mean"))
        return _Parsed("ssast-lightning", EncoderConfig(**obj["encoder_config"]), state, preprocessing, **classifier)
    for branch in ("teacher", "student"):  # the teacher, an EMA of the student, transfers better
        if isinstance(obj.get(branch), dict):
            return _parse_asit(path, _tensors(obj[branch]), hints)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), dict) and not _tensors(obj):
            obj = obj[wrapper]
    state = _strip(_tensors(obj), "module.")
    if "v.patch_embed.proj.weight" in state:
        return _parse_official_ssast(path, state, hints)
    if any(key.endswith("embeddings.patch_embeddings.projection.weight") for key in state):
        return _parse_huggingface(path, state, None, hints)
    projection = state.get("patch_embed.proj.weight")
    if projection is not None and projection.shape[1] == 3:  # RGB input channels: an image model
        return _parse_imagenet(path, state, hints)
    if "patch_embed.proj.weight" in _strip(state, "backbone."):
        return _parse_asit(path, state, hints)
    sample = ", ".join(sorted(obj)[:8])
    raise CheckpointError(path, "unknown", f"not a checkpoint format ssast knows; its top-level keys: {sample}")


def _geometry(path: Path, format: str, state: dict[str, torch.Tensor], hints: _Hints) -> dict[str, Any]:
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


def _grid_geometry(
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


def _default_candidates(fshape: int, tshape: int, hints: _Hints, pretrained: bool) -> list[tuple[int, int]]:
    if hints.stored_strides:
        return [tuple(hints.stored_strides)]
    if fshape == 128:  # frame models: stride 2 to pretrain, 1 to finetune
        return [(fshape, tshape), (fshape, 1)] if pretrained else [(fshape, 1), (fshape, tshape)]
    return [(fshape, tshape), (10, 10)] if pretrained else [(10, 10), (fshape, tshape)]


_UNUSED_VIT_HEADS = re.compile(r"^(head|head_dist|pre_logits|fc_norm)\.")


def _parse_official_ssast(path: Path, state: dict[str, torch.Tensor], hints: _Hints) -> _Parsed:
    format = "ssast-official"
    # timm's DeiT classifiers ride along in SSAST's files but are never used.
    encoder_state = {k[2:]: v for k, v in state.items() if k.startswith("v.") and not _UNUSED_VIT_HEADS.match(k[2:])}
    geometry = _geometry(path, format, encoder_state, hints)
    num_patches = encoder_state["pos_embed"].shape[1] - geometry["num_lead_tokens"]
    if "p_input_tdim" in state:  # pretrained: the input size is recorded and stride = shape
        input_fdim, input_tdim = int(state["p_input_fdim"]), int(state["p_input_tdim"])
        grid = {"fstride": geometry["fshape"], "tstride": geometry["tshape"], "input_tdim": input_tdim}
        config = EncoderConfig(**geometry, **grid, input_fdim=input_fdim)
        if config.num_patches != num_patches:
            raise CheckpointError(path, format, f"p_input_tdim {input_tdim} does not match {num_patches} patches")
    else:
        candidates = _default_candidates(geometry["fshape"], geometry["tshape"], hints, pretrained=False)
        config = EncoderConfig(**geometry, **_grid_geometry(path, format, num_patches, geometry["fshape"],
                                                             geometry["tshape"], candidates))
    if "mask_embed" in state:
        encoder_state["mask_embed"] = state["mask_embed"]
    head_state = None
    if "mlp_head.1.weight" in state:
        head_state = {
            "norm.weight": state["mlp_head.0.weight"], "norm.bias": state["mlp_head.0.bias"],
            "linear.weight": state["mlp_head.1.weight"], "linear.bias": state["mlp_head.1.bias"],
        }
    used = {f"v.{k}" for k in encoder_state} | {"mask_embed", "p_input_fdim", "p_input_tdim"}
    used |= {f"mlp_head.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    extra = {k: v for k, v in state.items() if k not in used and not _UNUSED_VIT_HEADS.match(k.removeprefix("v."))}
    unexpected = [k for k in extra if not k.startswith(("cpredlayer.", "gpredlayer."))]
    if unexpected:
        raise CheckpointError(path, format, f"unexpected keys: {', '.join(sorted(unexpected)[:10])}")
    preprocessing = Preprocessing(target_length=config.input_tdim)
    return _Parsed(format, config, encoder_state, preprocessing, frozenset({"mask_embed"}), head_state, 1e-5,
                   "mean", None, extra)


# The Hugging Face AST parameter names, one table read both ways (loading them here, writing
# them in ssast.hub): ours, transformers 5's, transformers 4's. Transformers 4's are those of
# the Hub's files, and transformers 5 still reads and writes them. Name prefixes, "{i}" standing
# for a block index; a classifier is ours under "head.". Our fused qkv is three tensors there:
# "qkv.q." and so on name its thirds.
HF_AST_NAMES: list[tuple[str, str, str]] = [
    ("cls_token", "embeddings.cls_token", "embeddings.cls_token"),
    ("dist_token", "embeddings.distillation_token", "embeddings.distillation_token"),
    ("pos_embed", "embeddings.position_embeddings", "embeddings.position_embeddings"),
    ("patch_embed.proj.", "embeddings.patch_embeddings.projection.", "embeddings.patch_embeddings.projection."),
    ("blocks.{i}.attn.qkv.q.", "layers.{i}.attention.q_proj.", "encoder.layer.{i}.attention.attention.query."),
    ("blocks.{i}.attn.qkv.k.", "layers.{i}.attention.k_proj.", "encoder.layer.{i}.attention.attention.key."),
    ("blocks.{i}.attn.qkv.v.", "layers.{i}.attention.v_proj.", "encoder.layer.{i}.attention.attention.value."),
    ("blocks.{i}.attn.proj.", "layers.{i}.attention.o_proj.", "encoder.layer.{i}.attention.output.dense."),
    ("blocks.{i}.norm1.", "layers.{i}.layernorm_before.", "encoder.layer.{i}.layernorm_before."),
    ("blocks.{i}.norm2.", "layers.{i}.layernorm_after.", "encoder.layer.{i}.layernorm_after."),
    ("blocks.{i}.mlp.fc1.", "layers.{i}.mlp.fc1.", "encoder.layer.{i}.intermediate.dense."),
    ("blocks.{i}.mlp.fc2.", "layers.{i}.mlp.fc2.", "encoder.layer.{i}.output.dense."),
    ("norm.", "layernorm.", "layernorm."),
    ("head.norm.", "classifier.layernorm.", "classifier.layernorm."),
    ("head.linear.", "classifier.dense.", "classifier.dense."),
]
OURS, HF5, HF4 = 0, 1, 2  # the columns
# Transformers' classifier model keeps its encoder under this prefix (its base model's name).
HF_ENCODER_PREFIX = "audio_spectrogram_transformer."
_QKV = re.compile(r"^(blocks\.\d+\.attn\.qkv)\.(weight|bias)$")
_QKV_PART = re.compile(r"^(blocks\.\d+\.attn\.qkv)\.([qkv])\.(weight|bias)$")


def _hf_rename(key: str, source: int, target: int) -> str | None:
    """``key`` moved from one column of :data:`HF_AST_NAMES` to another; ``None`` when no row
    names it."""
    for row in HF_AST_NAMES:
        if match := re.match(re.escape(row[source]).replace(r"\{i\}", r"(?P<i>\d+)"), key):
            return row[target].replace("{i}", match.groupdict().get("i") or "") + key[match.end() :]
    return None


def to_huggingface_state(encoder: ASTEncoder, head: ClassificationHead | None = None) -> dict[str, torch.Tensor]:
    """The weights of ``encoder`` (and of its classifier ``head``) under the names of a
    transformers AST file: ``ASTModel``'s, or ``ASTForAudioClassification``'s when there is a
    head. Transformers 4 names, as the Hub's AST files have. The geometry must be one
    transformers has (``ssast.hub`` checks it); the mask token, used only to pretrain, stays
    behind."""
    state = {name: tensor for name, tensor in encoder.state_dict().items() if name != "mask_embed"}
    if head is not None:
        state |= {f"head.{name}": tensor for name, tensor in head.state_dict().items()}
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if match := _QKV.match(key):  # one tensor here, three there
            parts = {f"{match[1]}.{part}.{match[2]}": third for part, third in zip("qkv", tensor.chunk(3))}
        else:
            parts = {key: tensor}
        for part, value in parts.items():
            name = _hf_rename(part, OURS, HF4)
            if name is None:
                raise ValueError(f"{key} has no counterpart in a transformers AST")
            if head is not None and not name.startswith("classifier."):
                name = HF_ENCODER_PREFIX + name
            # Own storage for each (safetensors refuses tensors that share memory).
            renamed[name] = value.detach().cpu().clone().contiguous()
    return renamed


def _parse_huggingface(
    path: Path, state: dict[str, torch.Tensor], hf_config: dict | None, hints: _Hints
) -> _Parsed:
    format = "huggingface-ast"
    encoder_state: dict[str, torch.Tensor] = {}
    head_state: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix(HF_ENCODER_PREFIX)
        # A name no row knows is kept as it is, and the strict load below names it.
        name = _hf_rename(key, HF5, OURS) or _hf_rename(key, HF4, OURS) or key
        if match := _QKV_PART.match(name):
            qkv.setdefault(f"{match[1]}.{match[3]}", {})[match[2]] = value
        elif name.startswith("head."):
            head_state[name.removeprefix("head.")] = value
        else:
            encoder_state[name] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(path, format, f"{key}: only {sorted(parts)} of q, k, v are present")
        encoder_state[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    if hf_config is not None:
        config = EncoderConfig(
            embed_dim=hf_config["hidden_size"], depth=hf_config["num_hidden_layers"],
            num_heads=hf_config["num_attention_heads"],
            mlp_ratio=hf_config["intermediate_size"] / hf_config["hidden_size"],
            fshape=hf_config["patch_size"], tshape=hf_config["patch_size"],
            fstride=hf_config["frequency_stride"], tstride=hf_config["time_stride"],
            input_fdim=hf_config["num_mel_bins"], input_tdim=hf_config["max_length"],
            layer_norm_eps=hf_config["layer_norm_eps"], qkv_bias=hf_config.get("qkv_bias", True),
        )
    else:
        geometry = _geometry(path, format, encoder_state, hints)
        num_patches = encoder_state["pos_embed"].shape[1] - geometry["num_lead_tokens"]
        candidates = _default_candidates(geometry["fshape"], geometry["tshape"], hints, pretrained=False)
        grid = _grid_geometry(path, format, num_patches, geometry["fshape"], geometry["tshape"], candidates)
        config = EncoderConfig(**geometry, **grid, layer_norm_eps=1e-12)  # transformers' default eps
    return _Parsed(format, config, encoder_state, Preprocessing(target_length=config.input_tdim),
                   frozenset({"mask_embed"}), head_state or None, config.layer_norm_eps, "cls")


def _parse_folder(path: Path, hints: _Hints) -> _Parsed:
    """A ``save_pretrained`` folder: this project's (:class:`ssast.hub.HubEncoder`) or a
    Hugging Face AST's, told apart by their ``config.json``."""
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(path, "folder", "a folder checkpoint must be a save_pretrained folder (config.json "
                                              "beside the weights) of a Hugging Face AST or of ssast.hub")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(path, "folder", f"config.json is not JSON ({error})") from None
    if config.get("format") == OUR_FORMAT:
        return _parse_our_folder(path, config)
    return _parse_huggingface_folder(path, config, hints)


def _classifier(path: Path, format: str, record: dict[str, Any], head_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The :class:`_Parsed` fields of a classifier this project recorded (in a Lightning
    checkpoint or a :class:`ssast.hub.HubEncoder` folder), checked against its weights."""
    if not head_state:
        raise CheckpointError(path, format, "records a classifier but holds none of its weights")
    labels = record.get("labels")
    weight = head_state.get("linear.weight")
    if labels is not None and weight is not None and len(labels) != weight.shape[0]:
        raise CheckpointError(path, format, f"{len(labels)} labels for a classifier of {weight.shape[0]} classes")
    return {"head_state": head_state, "head_eps": float(record.get("layer_norm_eps", 1e-5)),
            "labels": None if labels is None else list(labels)}


def _pooling(path: Path, format: str, pooling: Any) -> Pooling:
    if pooling not in ("mean", "cls"):
        raise CheckpointError(path, format, f"records pooling {pooling!r}, not 'mean' or 'cls'")
    return pooling


def _parse_our_folder(path: Path, config: dict[str, Any]) -> _Parsed:
    """A folder :class:`ssast.hub.HubEncoder` saved: ``config.json`` (``encoder``,
    ``preprocessing``, ``pooling``, ``classifier`` or null) and ``model.safetensors``
    (``encoder.*``, ``head.*``)."""
    weights = path / "model.safetensors"
    if not weights.exists():
        raise CheckpointError(path, OUR_FORMAT, "no model.safetensors beside its config.json")
    tensors, _ = _read_safetensors(weights)
    unexpected = sorted(key for key in tensors if not key.startswith(("encoder.", "head.")))
    if unexpected:
        raise CheckpointError(path, OUR_FORMAT, f"unexpected keys: {', '.join(unexpected[:10])}")
    encoder_state, head_state = _under(tensors, "encoder."), _under(tensors, "head.")
    try:
        encoder_config = EncoderConfig(**config["encoder"])
        preprocessing = Preprocessing(**config["preprocessing"])
    except (KeyError, TypeError) as error:
        raise CheckpointError(path, OUR_FORMAT, f"config.json lacks or garbles {error}") from None
    if head_state and not config.get("classifier"):
        raise CheckpointError(path, OUR_FORMAT, "holds classifier weights (head.*) that config.json does not record")
    classifier = _classifier(path, OUR_FORMAT, config["classifier"], head_state) if config.get("classifier") else {}
    pooling = _pooling(path, OUR_FORMAT, config.get("pooling", "mean"))
    return _Parsed(OUR_FORMAT, encoder_config, encoder_state, preprocessing, pooling=pooling, **classifier)


def _parse_huggingface_folder(path: Path, hf_config: dict[str, Any], hints: _Hints) -> _Parsed:
    if hf_config.get("model_type") != "audio-spectrogram-transformer":
        raise CheckpointError(path, "huggingface", f"model_type is {hf_config.get('model_type')!r}, not an AST")
    if (path / "model.safetensors").exists():
        state, _ = _read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").exists():
        state = _tensors(_torch_load(path / "pytorch_model.bin"))
    else:
        raise CheckpointError(
            path, "huggingface-ast", "no model.safetensors or pytorch_model.bin (sharded weights are not supported)"
        )
    parsed = _parse_huggingface(path, state, hf_config, hints)
    extractor = path / "preprocessor_config.json"
    if extractor.exists():
        settings = json.loads(extractor.read_text())
        parsed.preprocessing = Preprocessing(
            settings.get("mean", parsed.preprocessing.mean), settings.get("std", parsed.preprocessing.std),
            settings.get("max_length", parsed.config.input_tdim),
        )
    if hf_config.get("id2label") and parsed.head_state is not None:
        id2label = hf_config["id2label"]
        parsed.labels = [id2label[str(index)] for index in range(len(id2label))]
    return parsed


def _parse_asit(path: Path, state: dict[str, torch.Tensor], hints: _Hints) -> _Parsed:
    format = "asit"
    state = _strip(state, "module.")
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")} or state
    extra = {k: v for k, v in state.items() if not k.startswith("backbone.")} if backbone is not state else {}
    encoder_state = {k: v for k, v in backbone.items() if not _UNUSED_VIT_HEADS.match(k)}
    geometry = _geometry(path, format, encoder_state, hints)
    num_patches = encoder_state["pos_embed"].shape[1] - geometry["num_lead_tokens"]
    candidates = _default_candidates(geometry["fshape"], geometry["tshape"], hints, pretrained=True)
    grid = _grid_geometry(path, format, num_patches, geometry["fshape"], geometry["tshape"], candidates)
    config = EncoderConfig(**geometry, **grid)
    return _Parsed(format, config, encoder_state, Preprocessing(target_length=config.input_tdim),
                   frozenset({"mask_embed"}), extra=extra)


# AST's finetuning geometry, what an ImageNet ViT becomes unless told otherwise.
IMAGENET_AUDIO_DEFAULTS = {"fstride": 10, "tstride": 10, "input_tdim": 1024}


def imagenet_to_audio(
    state: dict[str, torch.Tensor], config: EncoderConfig, num_lead_tokens: int
) -> dict[str, torch.Tensor]:
    """An ImageNet ViT's weights (timm names, RGB patch projection, square grid of position
    embeddings) made into those of an audio encoder of geometry ``config``, as the official
    AST code does: the projection's three input channels summed into one (its bias kept), and
    the grid of position embeddings cut from the middle or bilinearly stretched along time,
    then along frequency (:func:`~ssast.encoder.adapt_pos_embed`); the leading tokens kept."""
    state = dict(state)
    state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].sum(dim=1, keepdim=True)
    num_patches = state["pos_embed"].shape[1] - num_lead_tokens
    side = round(num_patches**0.5)
    if side * side != num_patches:
        raise ValueError(f"{num_patches} position embeddings do not form a square image grid")
    state["pos_embed"] = adapt_pos_embed(state["pos_embed"], num_lead_tokens, (side, side), config.grid)
    return state


def _parse_imagenet(path: Path, state: dict[str, torch.Tensor], hints: _Hints) -> _Parsed:
    format = "imagenet-vit"
    encoder_state = {k: v for k, v in state.items() if not _UNUSED_VIT_HEADS.match(k)}
    geometry = _geometry(path, format, encoder_state, hints)
    if geometry["fshape"] != geometry["tshape"]:
        raise CheckpointError(path, format, f"patches of {geometry['fshape']}x{geometry['tshape']} are not square")
    target = {**IMAGENET_AUDIO_DEFAULTS, **hints.target}
    try:
        config = EncoderConfig(**geometry, **target, layer_norm_eps=1e-6)  # timm's ViT eps
        encoder_state = imagenet_to_audio(encoder_state, config, geometry["num_lead_tokens"])
    except ValueError as error:
        raise CheckpointError(path, format, str(error)) from None
    # ImageNet statistics mean nothing for log-mels: AudioSet's, as AST uses.
    return _Parsed(format, config, encoder_state, Preprocessing(target_length=config.input_tdim),
                   frozenset({"mask_embed"}))


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


def _load_strict(path: Path, parsed: _Parsed) -> ASTEncoder:
    encoder = ASTEncoder(parsed.config)
    state = dict(parsed.encoder_state)
    for key in parsed.optional - set(state):  # e.g. no mask token in a finetuned model
        state[key] = encoder.state_dict()[key]
    _load_module(encoder, state, path, parsed.format, "encoder")
    return encoder
