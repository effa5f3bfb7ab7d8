"""``huggingface-ast``: transformers' ``ASTModel`` / ``ASTForAudioClassification``, as a
``save_pretrained`` folder (``config.json``, weights, ``preprocessor_config.json``) or a bare
state dict, in transformers 4 or 5 names; and the way back (:func:`to_huggingface_state`,
which ``ssast.hub`` writes)."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import torch

from ssast.checkpoints.common import (
    CheckpointError, Contents, Hints, Parsed, Preprocessing, read_safetensors, tensors, torch_load,
)
from ssast.checkpoints.geometry import inferred_geometry
from ssast.encoder import ASTEncoder, EncoderConfig
from ssast.heads import ClassificationHead

FORMAT = "huggingface-ast"

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


# --- writing ---------------------------------------------------------------------------


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


# --- reading ---------------------------------------------------------------------------


def is_huggingface_state(contents: Contents) -> bool:
    return any(key.endswith("embeddings.patch_embeddings.projection.weight") for key in contents.state)


def parse_huggingface_state(contents: Contents, hints: Hints) -> Parsed:
    """A bare state dict: no config, so the geometry is read off the weights."""
    return _parse_state(contents, contents.state, None, hints)


def is_huggingface_folder(contents: Contents) -> bool:
    # Any folder that is not ours: a folder of another model is refused for its model_type.
    return contents.folder_config is not None


def parse_huggingface_folder(contents: Contents, hints: Hints) -> Parsed:
    path, hf_config = contents.path, contents.folder_config
    if hf_config.get("model_type") != "audio-spectrogram-transformer":
        raise CheckpointError(path, "huggingface", f"model_type is {hf_config.get('model_type')!r}, not an AST")
    if (path / "model.safetensors").exists():
        state, _ = read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").exists():
        state = tensors(torch_load(path / "pytorch_model.bin"))
    else:
        raise CheckpointError(path, FORMAT, "no model.safetensors or pytorch_model.bin (sharded weights are not "
                                            "supported)")
    parsed = _parse_state(contents, state, hf_config, hints)
    preprocessing, labels = parsed.preprocessing, parsed.labels
    extractor = path / "preprocessor_config.json"
    if extractor.exists():
        settings = json.loads(extractor.read_text())
        preprocessing = Preprocessing(
            settings.get("mean", preprocessing.mean), settings.get("std", preprocessing.std),
            settings.get("max_length", parsed.config.input_tdim),
        )
    if hf_config.get("id2label") and parsed.head_state is not None:
        id2label = hf_config["id2label"]
        labels = [id2label[str(index)] for index in range(len(id2label))]
    return replace(parsed, preprocessing=preprocessing, labels=labels)


def _parse_state(
    contents: Contents, state: dict[str, torch.Tensor], hf_config: dict[str, Any] | None, hints: Hints
) -> Parsed:
    """Transformers' weights in our names; the geometry from its ``config.json`` when there is
    one, else off the weights."""
    encoder_state: dict[str, torch.Tensor] = {}
    head_state: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        key = key.removeprefix(HF_ENCODER_PREFIX)
        # A name no row knows is kept as it is, and the strict load names it.
        name = _hf_rename(key, HF5, OURS) or _hf_rename(key, HF4, OURS) or key
        if match := _QKV_PART.match(name):
            qkv.setdefault(f"{match[1]}.{match[3]}", {})[match[2]] = value
        elif name.startswith("head."):
            head_state[name.removeprefix("head.")] = value
        else:
            encoder_state[name] = value
    for key, parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(contents.path, FORMAT, f"{key}: only {sorted(parts)} of q, k, v are present")
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
        geometry = inferred_geometry(contents.path, FORMAT, encoder_state, hints, pretrained=False)
        config = EncoderConfig(**geometry, layer_norm_eps=1e-12)  # transformers' default eps
    return Parsed(format=FORMAT, config=config, encoder_state=encoder_state,
                  preprocessing=Preprocessing(target_length=config.input_tdim), optional=frozenset({"mask_embed"}),
                  head_state=head_state or None, head_eps=config.layer_norm_eps, pooling="cls")
