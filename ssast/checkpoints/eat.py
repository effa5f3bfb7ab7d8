"""``eat``: EAT's released weights (Chen et al., IJCAI 2024; cwx-worst-one/EAT), and SSLAM's,
which continue EAT's checkpoint with the same model (ta012/SSLAM).

Two forms of one model, data2vec 2.0's image encoder on log-mels:

* fairseq's ``.pt`` (``{cfg, model, optimizer_history, extra_state, ...}``; numpy values in the
  training state, which :func:`~ssast.checkpoints.common.torch_load` allows by an explicit
  list). A pretrained file holds the student (``modality_encoders.IMAGE.*``, ``blocks.*``), the
  EMA teacher under ``_ema`` and the CNN decoder (``modality_encoders.IMAGE.decoder.*``); a
  finetuned one the encoder under ``model.`` and the classifier (``fc_norm``, ``head``) on the
  cls token. Weights may be fp16.
* Hugging Face's ``trust_remote_code`` folders (``config.json`` with ``model_type: eat`` and
  ``model.safetensors``, the same modules under ``model.`` with other names).

What each name becomes (:data:`NAMES`): the patch projection, its kernel turned from EAT's
``(time, frequency)`` input to ours; the one extra token, our cls; the fixed sin-cos table,
our position buffer; the LayerNorm before the blocks, our ``embed_norm``; the post-norm
blocks, ours by the same names; ``fc_norm`` and ``head``, our classifier. EAT flattens patches
time-major (row ``t * 8 + f``) and adds ``positions[:, :N]``, the table's first rows, for any
input up to the table's length; the table rows of the grid asked for are taken and put in our
frequency-major order. The encoder is built in EAT's layout
(:data:`~ssast.encoder.LAYOUTS` ``eat``), at the strides and length asked for (EAT has no
trained length: its own finetuning takes 1024 frames for AudioSet, 512 for ESC-50, 128 for
Speech Commands), with EAT's normalization ``(x + 4.268) / (2 * 4.569)``. A pretrained file's
teacher and decoder ride along as :attr:`Parsed.extra` (``teacher.*``, ``decoder.*``, our
names), for continuing EAT's pretraining (``pretrain.eat``).

Anything else that looks like data2vec 2.0 is refused, naming what gives it away: another
modality, RGB input (an image model), ALiBi, a transformer prenet, pre-norm blocks, or keys
this map does not know.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from einops import rearrange

from ssast.checkpoints.common import (
    CheckpointError, Contents, Hints, Parsed, Preprocessing, read_safetensors, tensors, torch_load,
)
from ssast.encoder import LAYOUTS, EncoderConfig

FORMAT = "eat"
# EAT normalizes with AudioSet's statistics rounded (feature_extract.py, inference.py).
PREPROCESSING = Preprocessing(mean=-4.268, std=4.569)
PATCH = 16  # EAT cuts 16x16 patches at stride 16 (PatchEmbed_new's default stride)
MEL_BINS = 128
DEFAULT_FRAMES = 1024  # task.target_length of EAT's pretraining and AudioSet finetuning

# Name prefixes: ours, fairseq's (a finetuned file adds "model." to the encoder's), Hugging Face's
# (under "model.").
NAMES: list[tuple[str, str, str]] = [
    ("patch_embed.proj.", "modality_encoders.IMAGE.local_encoder.proj.", "local_encoder.proj."),
    ("cls_token", "modality_encoders.IMAGE.extra_tokens", "extra_tokens"),
    ("pos_embed", "modality_encoders.IMAGE.fixed_positional_encoder.positions", "fixed_positional_encoder.positions"),
    ("embed_norm.", "modality_encoders.IMAGE.context_encoder.norm.", "pre_norm."),
    ("blocks.", "blocks.", "blocks."),
    ("head.norm.", "fc_norm.", "fc_norm."),
    ("head.linear.", "head.", "head."),
]
OURS, FAIRSEQ, HUGGINGFACE = 0, 1, 2
DECODER = "modality_encoders.IMAGE.decoder."
_DECODER_CONV = re.compile(r"^blocks\.(\d+)\.0\.(weight|bias)$")


# --- recognition -----------------------------------------------------------------------


def is_eat_file(contents: Contents) -> bool:
    # Every data2vec 2.0 model keeps its input embedding under modality_encoders: those that are
    # not EAT's are recognized here too, and refused by name.
    return any(key.removeprefix("model.").startswith("modality_encoders.") for key in contents.state)


def is_eat_folder(contents: Contents) -> bool:
    config = contents.folder_config
    return config is not None and (config.get("model_type") == "eat" or "EATModel" in (config.get("architectures") or []))


# --- fairseq ---------------------------------------------------------------------------


def parse_eat_file(contents: Contents, hints: Hints) -> Parsed:
    """A fairseq checkpoint of EAT (or SSLAM), pretrained or finetuned."""
    path = contents.path
    model_cfg = _fairseq_model_cfg(contents.top)
    _refuse_cfg(path, model_cfg)
    state = {key.removeprefix("model."): value for key, value in contents.state.items()}
    decoder = {key[len(DECODER):]: value for key, value in state.items() if key.startswith(DECODER)}
    state = {key: value for key, value in state.items() if not key.startswith(DECODER)}
    encoder_state, head_state = _renamed(path, state, FAIRSEQ)
    config = _config(path, encoder_state, hints, model_cfg.get("num_heads"), model_cfg.get("norm_eps", 1e-6))
    extra = {f"decoder.{key}": value for key, value in _decoder_state(path, decoder).items()}
    teacher = contents.weights.get("_ema")
    if isinstance(teacher, dict) and teacher:
        teacher_state, _ = _renamed(path, tensors(teacher), FAIRSEQ, what="_ema")
        extra |= {f"teacher.{key}": value for key, value in _converted(path, teacher_state, config).items()}
    return Parsed(format=FORMAT, config=config, encoder_state=_converted(path, encoder_state, config),
                  preprocessing=PREPROCESSING.for_encoder(config), optional=frozenset({"mask_embed"}),
                  head_state=head_state or None, head_eps=1e-6, pooling="cls", extra=extra)


def _fairseq_model_cfg(top: dict[str, Any]) -> dict[str, Any]:
    """The pretrained model's settings in a fairseq file's ``cfg``: ``cfg.model`` of a
    pretraining run, ``cfg.model.pretrained_model_args.model`` of a finetuning one; ``{}``
    when the file has none."""
    cfg = top.get("cfg")
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        return {}
    pretrained = model.get("pretrained_model_args")
    if isinstance(pretrained, dict) and isinstance(pretrained.get("model"), dict):
        return pretrained["model"]
    return model


def _refuse_cfg(path: Any, model_cfg: dict[str, Any]) -> None:
    image = (model_cfg.get("modalities") or {}).get("image") or {}
    wrong = []
    if model_cfg.get("layer_norm_first"):
        wrong.append("model.layer_norm_first is true (pre-norm blocks; EAT's are post-norm)")
    if image.get("use_alibi_encoder"):
        wrong.append("modalities.image.use_alibi_encoder is true (ALiBi biases; EAT uses a fixed sin-cos table)")
    if image.get("fixed_positions") is False:
        wrong.append("modalities.image.fixed_positions is false (EAT adds a fixed sin-cos table)")
    if image.get("num_extra_tokens", 1) != 1:
        wrong.append(f"modalities.image.num_extra_tokens is {image['num_extra_tokens']} (EAT has one, the cls token)")
    if image.get("prenet_depth", 0):
        wrong.append(f"modalities.image.prenet_depth is {image['prenet_depth']} (EAT has no blocks before its own)")
    if image.get("in_chans", 1) != 1:
        wrong.append(f"modalities.image.in_chans is {image['in_chans']} (an image model; EAT reads one log-mel)")
    if wrong:
        raise CheckpointError(path, FORMAT, "a data2vec 2.0 model that is not EAT's audio model: cfg " + "; ".join(wrong))


def _decoder_state(path: Any, decoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EAT's CNN decoder (data2vec 2.0's ``Decoder2d``) in :class:`~ssast.heads.ConvDecoder`'s
    names; its kernels turned from EAT's ``(time, frequency)`` grid to ours."""
    ours: dict[str, torch.Tensor] = {}
    for key, value in decoder.items():
        if match := _DECODER_CONV.match(key):
            ours[f"convs.{match[1]}.{match[2]}"] = value.transpose(-1, -2) if match[2] == "weight" else value
        elif key.startswith("proj."):
            ours[key] = value
        else:
            raise CheckpointError(path, FORMAT, f"unexpected decoder key {DECODER}{key}")
    return ours


# --- Hugging Face ----------------------------------------------------------------------


def parse_eat_folder(contents: Contents, hints: Hints) -> Parsed:
    """A ``save_pretrained`` folder of EAT's Hugging Face model (``worstchan/EAT-*``,
    ``ta012/SSLAM_*``)."""
    path, hf_config = contents.path, contents.folder_config
    wrong = [f"{key} is {hf_config[key]!r} (EAT's is {value!r})"
             for key, value in {"layer_norm_first": False, "fixed_positions": True, "in_chans": 1,
                                "norm_affine": True}.items() if key in hf_config and hf_config[key] != value]
    if hf_config.get("patch_size", PATCH) != hf_config.get("stride", PATCH):
        wrong.append(f"stride {hf_config.get('stride')} differs from patch_size {hf_config.get('patch_size')}")
    if wrong:
        raise CheckpointError(path, FORMAT, "config.json describes a model that is not EAT's: " + "; ".join(wrong))
    if (path / "model.safetensors").exists():
        state, _ = read_safetensors(path / "model.safetensors")
    elif (path / "pytorch_model.bin").exists():
        state = tensors(torch_load(path / "pytorch_model.bin"))
    else:
        raise CheckpointError(path, FORMAT, "no model.safetensors or pytorch_model.bin beside config.json")
    state = {key.removeprefix("model."): value for key, value in state.items()}
    encoder_state, head_state = _renamed(path, state, HUGGINGFACE)
    config = _config(path, encoder_state, hints, hf_config.get("num_heads"), hf_config.get("norm_eps", 1e-6),
                     default_frames=(hf_config.get("img_size") or [DEFAULT_FRAMES])[0])
    labels = None
    id2label = hf_config.get("id2label") or {}
    if head_state and len(id2label) == head_state["linear.weight"].shape[0]:
        names = [id2label[str(index)] for index in range(len(id2label))]
        labels = None if names == [f"LABEL_{index}" for index in range(len(names))] else names
    # Its fc_norm is nn.LayerNorm's default, eps 1e-5 (the fairseq model's is 1e-6). A folder without
    # the table (it is a parameter there, but never trained) gets the formula's, which it was built from.
    return Parsed(format=FORMAT, config=config, encoder_state=_converted(path, encoder_state, config),
                  preprocessing=PREPROCESSING.for_encoder(config), optional=frozenset({"mask_embed", "pos_embed"}),
                  head_state=head_state or None, head_eps=1e-5, pooling="cls", labels=labels)


# --- shared ----------------------------------------------------------------------------


def _renamed(
    path: Any, state: dict[str, torch.Tensor], source: int, what: str = "encoder"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``state`` in our names, split into the encoder's and the classifier's (``norm.*``,
    ``linear.*``); a key no row of :data:`NAMES` knows is refused, naming it."""
    encoder, head = {}, {}
    for key, value in state.items():
        if "alibi" in key:
            raise CheckpointError(path, FORMAT, f"{key}: ALiBi attention biases, which EAT does not use "
                                                "(a data2vec 2.0 model that is not EAT's)")
        row = next((row for row in NAMES if key.startswith(row[source])), None)
        if row is None:
            kind = "another data2vec 2.0 modality" if key.startswith("modality_encoders.") else "not EAT's"
            raise CheckpointError(path, FORMAT, f"unexpected {what} key {key} ({kind})")
        name = row[OURS] + key[len(row[source]):]
        if name.startswith("head."):
            head[name.removeprefix("head.")] = value
        else:
            encoder[name] = value
    return encoder, head


def _config(path: Any, state: dict[str, torch.Tensor], hints: Hints, num_heads: int | None, eps: float,
            default_frames: int = DEFAULT_FRAMES) -> EncoderConfig:
    """EAT's layout at the shape of ``state`` (our names, before :func:`_converted`) and the
    strides and length asked for (``hints.target``; EAT's own 16, 16 and 1024 frames)."""
    try:
        projection = state["patch_embed.proj.weight"]
        depth = 1 + max(int(match[1]) for key in state if (match := re.match(r"blocks\.(\d+)\.", key)))
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as error:
        raise CheckpointError(path, FORMAT, f"lacks the keys of EAT's encoder ({error})") from None
    embed_dim, channels, *kernel = projection.shape
    if channels != 1:
        raise CheckpointError(path, FORMAT, f"modality_encoders.IMAGE.local_encoder.proj.weight reads {channels} "
                                            "input channels: an image model, not EAT's (one log-mel)")
    if kernel != [PATCH, PATCH]:
        raise CheckpointError(path, FORMAT, f"{kernel[0]}x{kernel[1]} patches; EAT's are {PATCH}x{PATCH}")
    target = hints.target
    try:
        return EncoderConfig(
            embed_dim=embed_dim, depth=depth, num_heads=hints.num_heads or num_heads or max(1, embed_dim // 64),
            mlp_ratio=hidden / embed_dim, fshape=PATCH, tshape=PATCH, fstride=target.get("fstride", PATCH),
            tstride=target.get("tstride", PATCH), input_fdim=MEL_BINS,
            input_tdim=target.get("input_tdim", default_frames), layer_norm_eps=eps,
            qkv_bias="blocks.0.attn.qkv.bias" in state, **LAYOUTS["eat"],
        )
    except ValueError as error:
        raise CheckpointError(path, FORMAT, str(error)) from None


def _converted(path: Any, state: dict[str, torch.Tensor], config: EncoderConfig) -> dict[str, torch.Tensor]:
    """EAT's tensors (our names) as our encoder holds them: the patch kernel over (frequency,
    time), and the table rows of ``config``'s grid in our order behind a zero row for the cls
    token. A state without a table (Hugging Face may not save it) gets the formula's."""
    state = dict(state)
    if "patch_embed.proj.weight" in state:
        state["patch_embed.proj.weight"] = state["patch_embed.proj.weight"].transpose(-1, -2)
    if "pos_embed" in state:
        state["pos_embed"] = _positions(path, state["pos_embed"], config)
    return state


def _positions(path: Any, table: torch.Tensor, config: EncoderConfig) -> torch.Tensor:
    """The first rows of EAT's table ``[1, time_rows * columns, D]`` (time-major) that a grid of
    ``config`` reads, in our frequency-major order, after a zero row for the cls token."""
    columns = MEL_BINS // PATCH
    n_freq, n_time = config.grid
    if table.dim() != 3 or table.shape[1] % columns or table.shape[2] != config.embed_dim:
        raise CheckpointError(path, FORMAT, f"a position table of shape {list(table.shape)} is not EAT's "
                                            f"[1, time * {columns}, {config.embed_dim}]")
    if n_freq != columns:
        raise CheckpointError(path, FORMAT, f"EAT's position table has {columns} frequency columns (16x16 patches at "
                                            f"stride 16); fstride {config.fstride} gives {n_freq}")
    rows = table.shape[1] // columns
    if n_time > rows:
        longest = (rows - 1) * config.tstride + config.tshape
        raise CheckpointError(path, FORMAT, f"its position table covers {rows} patch columns, at most {longest} "
                                            f"frames at tstride {config.tstride}; asked for {config.input_tdim}")
    patches = rearrange(table[0, : n_time * columns].float(), "(t f) d -> (f t) d", f=columns)
    return torch.cat([patches.new_zeros(config.num_lead_tokens, config.embed_dim), patches])[None]
