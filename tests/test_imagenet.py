"""An ImageNet ViT/DeiT initialises an audio encoder exactly as the official AST code does."""

import math

import pytest
import torch
from safetensors.torch import save_file

from ssast import CheckpointError, load_checkpoint, load_encoder
from ssast.encoder import ASTEncoder, EncoderConfig

WIDTH = 64  # one attention head of 64


def deit_state(side: int = 24, lead: int = 2, depth: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A DeiT-shaped state dict in timm's names: RGB 16x16 patch projection, a ``side x side``
    grid of position embeddings after ``lead`` tokens, ImageNet classifiers (``head``, and
    ``head_dist`` for distilled models)."""
    generator = torch.Generator().manual_seed(seed)
    blocks = ASTEncoder(EncoderConfig(embed_dim=WIDTH, depth=depth, num_heads=1, num_lead_tokens=lead)).state_dict()
    state = {key: torch.randn(value.shape, generator=generator) for key, value in blocks.items()
             if key.startswith(("blocks.", "norm.", "cls_token", "dist_token"))}
    state["patch_embed.proj.weight"] = torch.randn(WIDTH, 3, 16, 16, generator=generator)
    state["patch_embed.proj.bias"] = torch.randn(WIDTH, generator=generator)
    state["pos_embed"] = torch.randn(1, lead + side * side, WIDTH, generator=generator)
    state["head.weight"], state["head.bias"] = torch.randn(1000, WIDTH), torch.randn(1000)
    if lead == 2:
        state["head_dist.weight"], state["head_dist.bias"] = torch.randn(1000, WIDTH), torch.randn(1000)
    return state


def stretch(values: torch.Tensor, size: int) -> torch.Tensor:
    """Linear interpolation along the first axis as ``F.interpolate(mode="bilinear",
    align_corners=False)`` does it (half-pixel centres, clamped at the edges), one output
    position at a time."""
    old = values.shape[0]
    out = []
    for index in range(size):
        source = max((index + 0.5) * old / size - 0.5, 0.0)
        low = min(math.floor(source), old - 1)
        high = min(low + 1, old - 1)
        weight = source - low
        out.append((1 - weight) * values[low] + weight * values[high])
    return torch.stack(out)


def pos_grid(encoder: ASTEncoder) -> torch.Tensor:
    """The encoder's patch position embeddings as ``[F, T, D]``."""
    n_freq, n_time = encoder.grid
    return encoder.pos_embed[0, encoder.num_lead_tokens :].detach().reshape(n_freq, n_time, -1)


@pytest.fixture
def deit_file(tmp_path):
    state = deit_state()
    path = tmp_path / "deit_base_distilled_patch16_384.pth"
    torch.save({"model": state}, path)  # as the DeiT release wraps it
    return path, state


def test_the_projection_sums_the_rgb_channels_and_keeps_its_bias(deit_file):
    path, state = deit_file
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "imagenet-vit"
    weight = checkpoint.encoder.patch_embed.proj.weight.detach()
    rgb = state["patch_embed.proj.weight"]
    assert weight.shape == (WIDTH, 1, 16, 16)
    assert torch.allclose(weight[:, 0], rgb[:, 0] + rgb[:, 1] + rgb[:, 2])
    assert torch.equal(checkpoint.encoder.patch_embed.proj.bias.detach(), state["patch_embed.proj.bias"])
    # The rest of the ViT is taken as it is; ImageNet's classifiers are left behind.
    encoder_state = checkpoint.encoder.state_dict()
    for key in ("cls_token", "dist_token", "blocks.1.attn.qkv.weight", "blocks.0.mlp.fc2.bias", "norm.weight"):
        assert torch.equal(encoder_state[key], state[key])
    assert checkpoint.head is None


def test_ast_geometry_stretches_time_and_cuts_frequency_from_the_middle(deit_file):
    """AST's default: stride 10 over 1024 frames is a 12 x 101 grid. Time: 101 > 24, so the
    24 columns are interpolated to 101; frequency: 12 < 24, so rows 6..17 are kept."""
    path, state = deit_file
    encoder = load_encoder(path)
    assert (encoder.config.fstride, encoder.config.tstride, encoder.config.input_tdim) == (10, 10, 1024)
    assert encoder.grid == (12, 101)
    image = state["pos_embed"][0, 2:].reshape(24, 24, WIDTH)  # rows, columns -> frequency, time
    rows = image[6:18]
    expected = torch.stack([stretch(row, 101) for row in rows])
    assert torch.allclose(pos_grid(encoder), expected, atol=1e-5)  # float32 scale factors
    assert torch.equal(encoder.pos_embed[0, :2].detach(), state["pos_embed"][0, :2])


def test_a_short_input_cuts_both_axes_from_the_middle(deit_file):
    path, state = deit_file
    encoder = load_encoder(path, fstride=16, tstride=16, input_tdim=128)  # an 8 x 8 grid
    image = state["pos_embed"][0, 2:].reshape(24, 24, WIDTH)
    assert torch.equal(pos_grid(encoder), image[8:16, 8:16])


def test_a_small_image_grid_is_stretched_along_frequency_too(tmp_path):
    """A 6 x 6 grid under a 12 x 20 audio grid: time interpolated first (6 -> 20 columns),
    then frequency (6 -> 12 rows), as AST orders them."""
    state = deit_state(side=6, lead=1)
    save_file(state, tmp_path / "vit.safetensors")  # timm's Hub files are bare safetensors
    encoder = load_encoder(tmp_path / "vit.safetensors", fstride=10, tstride=10, input_tdim=206)
    assert encoder.grid == (12, 20) and encoder.num_lead_tokens == 1
    image = state["pos_embed"][0, 1:].reshape(6, 6, WIDTH)
    in_time = torch.stack([stretch(row, 20) for row in image])  # [6, 20, D]
    expected = stretch(in_time, 12)  # along frequency
    assert torch.allclose(pos_grid(encoder), expected, atol=1e-5)  # float32 scale factors


def test_finetuning_starts_from_the_same_adaptation(deit_file):
    """``--model.init_from`` adapts the DeiT once, to the recipe's geometry, not through an
    intermediate grid."""
    from finetune.module import Finetune

    path, _ = deit_file
    module = Finetune(num_classes=3, init_from=str(path), fstride=10, tstride=10, input_tdim=512, pooling="cls")
    direct = load_encoder(path, fstride=10, tstride=10, input_tdim=512)
    assert module.encoder.grid == (12, 50)
    assert torch.equal(module.encoder.pos_embed, direct.pos_embed)
    logits = module(torch.randn(2, 512, 128))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_image_grids_that_are_not_square_are_refused(tmp_path):
    state = deit_state(side=6)
    state["pos_embed"] = state["pos_embed"][:, :-1]
    torch.save(state, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=r"imagenet-vit.*35 position embeddings do not form a square"):
        load_encoder(tmp_path / "odd.pth")
