"""An independent transcription of EAT's encoder (cwx-worst-one/EAT: models/mae.py, base.py,
modules.py, images.py, EAT_pretraining.py, EAT_audio_classification.py; the Hugging Face
release's eat_model.py), to check :mod:`ssast.checkpoints.eat` against. Module names are EAT's,
so that loading a state strictly here checks the layout of the files the tests write.

fairseq does not import on Python 3.11, so this is the reference: written from EAT's code,
sharing nothing with ssast but torch. Also the fake files: fairseq checkpoints (pretrained with
``cfg``, ``_ema``, the decoder and numpy values in the training state; finetuned) and a Hugging
Face folder, all in tiny sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PATCH, MEL_BINS, COLUMNS = 16, 128, 8


def sincos_table(embed_dim: int, time_rows: int, columns: int = COLUMNS) -> np.ndarray:
    """mae.py's get_2d_sincos_pos_embed_flexible(embed_dim, (time_rows, columns)): rows t * columns + f."""
    def one_axis(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000**omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(time_rows, dtype=np.float32)
    grid_w = np.arange(columns, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, time_rows, columns])
    return np.concatenate([one_axis(embed_dim // 2, grid[0]), one_axis(embed_dim // 2, grid[1])], axis=1)


class AltAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1, dtype=torch.float32).to(dtype=q.dtype)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Module):  # timm's Mlp
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AltBlock(nn.Module):
    """modules.AltBlock with layer_norm_first=False, no dropout or drop path (evaluation)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = AltAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attn(x)
        r = x = self.norm1(x)
        x = self.mlp(x)
        t = x
        x = self.norm2(r + x)
        return x, t


class PatchEmbed(nn.Module):  # mae.PatchEmbed_new: [B, 1, T, F] -> [B, N, D], time-major
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class FixedPositionalEncoder(nn.Module):
    def __init__(self, positions: torch.Tensor) -> None:
        super().__init__()
        self.positions = nn.Parameter(positions, requires_grad=False)


class Holder(nn.Module):
    """A module that only names its children (context_encoder, holding the norm)."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            setattr(self, name, child)


def decoder2d(dim: int, width: int, layers: int, groups: int) -> nn.Module:
    """modules.Decoder2d's parameters (the convolutions under blocks.i.0, then proj)."""
    blocks = nn.Sequential(*[nn.Sequential(nn.Conv2d(dim if i == 0 else width, width, 3, padding=1, groups=groups))
                             for i in range(layers)])
    return Holder(blocks=blocks, proj=nn.Linear(width, dim))


def embed(local_encoder: nn.Module, positions: torch.Tensor, extra_tokens: torch.Tensor, norm: nn.Module,
          fbank: torch.Tensor) -> torch.Tensor:
    """ImageEncoder.local_features + contextualized_features without a mask: the log-mel [B, T, F]
    as an image [B, 1, T, F], patches time-major, the table's first rows added, the cls token put
    in front, the context encoder's norm (layer_norm_first false: before its zero blocks)."""
    x = local_encoder(fbank.unsqueeze(1))
    x = x + positions[:, : x.size(1), :]
    x = torch.cat([extra_tokens.expand(x.size(0), -1, -1), x], dim=1)
    return norm(x)


class Data2VecMulti(nn.Module):
    """EAT_pretraining.Data2VecMultiModel's student (IMAGE modality, EAT's config), forward with
    features_only: the tokens after the last block, no final norm (layer_norm_first false)."""

    def __init__(self, dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 4.0, eps: float = 1e-6,
                 time_rows: int = 768, decoder: bool = True, decoder_layers: int = 2, decoder_groups: int = 4) -> None:
        super().__init__()
        image = Holder(
            local_encoder=PatchEmbed(dim),
            extra_tokens=nn.Parameter(torch.randn(1, 1, dim)),
            fixed_positional_encoder=FixedPositionalEncoder(torch.from_numpy(sincos_table(dim, time_rows))[None]),
            context_encoder=Holder(norm=nn.LayerNorm(dim, eps=eps)),
        )
        if decoder:
            image.decoder = decoder2d(dim, dim, decoder_layers, decoder_groups)
        self.modality_encoders = nn.ModuleDict({"IMAGE": image})
        self.blocks = nn.ModuleList(AltBlock(dim, num_heads, mlp_ratio, eps) for _ in range(depth))

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.layer_results(fbank)[0]

    def layer_results(self, fbank: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The tokens after the last block, and each block's ``lr`` (its feed-forward output
        before the residual: ffn_targets) at the patch tokens, as the teacher pass collects them."""
        image = self.modality_encoders["IMAGE"]
        x = embed(image.local_encoder, image.fixed_positional_encoder.positions, image.extra_tokens,
                  image.context_encoder.norm, fbank)
        results = []
        for block in self.blocks:
            x, result = block(x)
            results.append(result[:, 1:])
        return x, results

    def student(self, fbank: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The student's pass with masked tokens removed (contextualized_features with mask and
        remove_masked): positions added, the patches at ``keep [B, K]`` (time-major indices) kept,
        the cls token put in front, the norm, the blocks."""
        image = self.modality_encoders["IMAGE"]
        x = image.local_encoder(fbank.unsqueeze(1))
        x = x + image.fixed_positional_encoder.positions[:, : x.size(1), :]
        x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.size(-1)))
        x = torch.cat([image.extra_tokens.expand(x.size(0), -1, -1), x], dim=1)
        x = image.context_encoder.norm(x)
        for block in self.blocks:
            x, _ = block(x)
        return x

    def targets(self, fbank: torch.Tensor) -> torch.Tensor:
        """make_targets with EAT's config: instance_norm_target_layer (each block's output over the
        tokens, per channel), the average of all blocks, layer_norm_targets."""
        _, results = self.layer_results(fbank)
        layers = [F.instance_norm(result.transpose(1, 2).float()).transpose(1, 2) for result in results]
        y = sum(layers) / len(layers)
        return F.layer_norm(y, y.shape[-1:])


class Classification(nn.Module):
    """EAT_audio_classification.MaeImageClassificationModel: the cls token, fc_norm, head."""

    def __init__(self, classes: int, eps: float = 1e-6, **model: object) -> None:
        super().__init__()
        self.model = Data2VecMulti(decoder=False, **model)
        dim = self.model.blocks[0].norm1.normalized_shape[0]
        self.fc_norm = nn.LayerNorm(dim, eps=eps)
        self.head = nn.Linear(dim, classes)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.model(fbank)[:, 0]))


class HuggingFaceEAT(nn.Module):
    """The Hugging Face release's EAT (eat_model.py), held as EATModel.model."""

    def __init__(self, classes: int | None, dim: int = 64, depth: int = 2, num_heads: int = 4, time_rows: int = 768,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.local_encoder = PatchEmbed(dim)
        self.extra_tokens = nn.Parameter(torch.randn(1, 1, dim))
        self.fixed_positional_encoder = FixedPositionalEncoder(torch.from_numpy(sincos_table(dim, time_rows))[None])
        self.blocks = nn.ModuleList(AltBlock(dim, num_heads, 4.0, eps) for _ in range(depth))
        self.pre_norm = nn.LayerNorm(dim, eps=eps)
        if classes:
            self.fc_norm = nn.LayerNorm(dim)  # nn.LayerNorm's default eps, 1e-5
            self.head = nn.Linear(dim, classes)

    def extract_features(self, fbank: torch.Tensor) -> torch.Tensor:
        x = embed(self.local_encoder, self.fixed_positional_encoder.positions, self.extra_tokens, self.pre_norm,
                  fbank)
        for block in self.blocks:
            x, _ = block(x)
        return x

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.extract_features(fbank)[:, 0]))


# --- the files ---------------------------------------------------------------------------


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (norms and biases too), rounded to fp16 as EAT's files store them,
    so the reference computes with exactly what the files hold."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name.endswith("positions"):
                parameter.copy_(parameter.half().float())
                continue
            # Of the size trained weights have (ViT's init is 0.02), so that float32 rounding stays small.
            value = torch.randn(parameter.shape, generator=generator) * 0.05
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "norm.weight" in name:
                value = value + 1.0
            parameter.copy_(value.half().float())
    return module.eval()


def model_cfg(dim: int = 64, depth: int = 2, num_heads: int = 4, **image: object) -> dict:
    return {"_name": "data2vec_multi", "embed_dim": dim, "depth": depth, "num_heads": num_heads, "norm_eps": 1e-6,
            "layer_norm_first": False, "modalities": {"image": {
                "in_chans": 1, "patch_size": 16, "num_extra_tokens": 1, "prenet_depth": 0, "use_alibi_encoder": False,
                "fixed_positions": True, "max_length": 768, "target_length": 1024, **image}}}


def training_state() -> dict:
    """What fairseq keeps beside the weights, with the numpy values that weights_only refuses by default."""
    return {
        "args": None,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "CompositeOptimizer",
                               "lr_scheduler_state": {"best": np.float64(0.25)}, "num_updates": 400000}],
        "task_state": {},
        "extra_state": {"epoch": 10, "previous_best": np.float64(0.5), "val_loss": np.float32(1.5),
                        "train_iterator": {"epoch": 10, "iterations_in_epoch": 0, "shuffle": True},
                        "metrics": {"train": [["loss", 0, "AverageMeter", {"val": np.float64(1.0), "count": np.int64(3),
                                                                             "sum": np.array([3.0])}]]}},
        "last_optimizer_state": None,
    }


def fairseq_pretrained(path: Path, student: Data2VecMulti, teacher: Data2VecMulti, **cfg: object) -> Path:
    """A pretraining checkpoint: the student's weights in fp16, the teacher as fp32 ``_ema`` (the
    EMA of everything but the decoder, as ema_encoder_only: false keeps it)."""
    model = {name: value.half() for name, value in student.state_dict().items()}
    model["_ema"] = {name: value.float() for name, value in teacher.state_dict().items() if ".decoder." not in name}
    torch.save({"cfg": {"model": model_cfg(**cfg), "task": {"_name": "mae_image_pretraining"}}, "model": model,
                **training_state()}, path)
    return path


def fairseq_finetuned(path: Path, classifier: Classification) -> Path:
    state = {name: value.half() for name, value in classifier.state_dict().items()}
    cfg = {"model": {"_name": "mae_image_classification", "num_classes": classifier.head.out_features,
                     "pretrained_model_args": {"model": model_cfg()}}}
    torch.save({"cfg": cfg, "model": state, **training_state()}, path)
    return path


def huggingface_folder(folder: Path, model: HuggingFaceEAT, classes: int | None, **changes: object) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "eat", "architectures": ["EATModel"], "embed_dim": 64, "depth": 2, "num_heads": 4,
              "patch_size": 16, "stride": 16, "in_chans": 1, "mel_bins": 128, "max_length": 768,
              "num_classes": classes or 527, "model_variant": "finetune" if classes else "pretrain", "mlp_ratio": 4.0,
              "qkv_bias": True, "layer_norm_first": False, "norm_eps": 1e-6, "norm_affine": True,
              "fixed_positions": True, "img_size": [1024, 128], **changes}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({f"model.{name}": value.contiguous() for name, value in model.state_dict().items()},
              str(folder / "model.safetensors"))
    return folder
