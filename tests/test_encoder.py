"""The AST encoder: geometry, masking, attention, position-embedding adaptation."""

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from ssast.encoder import ASTEncoder, EncoderConfig
from ssast.positions import adapt_pos_embed


def small_config(**changes) -> EncoderConfig:
    defaults = dict(embed_dim=32, depth=2, num_heads=2, input_tdim=64)
    return EncoderConfig(**{**defaults, **changes})


@pytest.mark.parametrize(
    "changes,grid",
    [({}, (8, 64)), ({"fstride": 10, "tstride": 10}, (12, 101)),
     ({"fshape": 128, "tshape": 2, "fstride": 128, "tstride": 2}, (1, 512)),
     ({"fshape": 128, "tshape": 2, "fstride": 128, "tstride": 1}, (1, 1023))],
)
def test_published_grids(changes, grid):
    assert EncoderConfig(**changes).grid == grid  # DESIGN.md §5 at 128 x 1024


@pytest.mark.parametrize("size,millions", [("tiny", 5.5), ("small", 21.6), ("base", 85.7)])
def test_sizes(size, millions):
    encoder = ASTEncoder(EncoderConfig.from_size(size))
    assert sum(p.numel() for p in encoder.parameters()) / 1e6 == pytest.approx(millions, abs=0.1)
    with pytest.raises(ValueError, match="unknown size"):
        EncoderConfig.from_size("huge")


@pytest.mark.parametrize("lead", [1, 2])
def test_forward_shapes_and_pooling(lead):
    encoder = ASTEncoder(small_config(num_lead_tokens=lead, fstride=10, tstride=10)).eval()
    tokens = encoder(torch.randn(3, 64, 128))
    assert tokens.shape == (3, lead + 12 * 5, 32)
    assert torch.allclose(encoder.pool(tokens, "mean"), tokens[:, lead:].mean(1))
    assert torch.allclose(encoder.pool(tokens, "cls"), tokens[:, :lead].mean(1))
    with pytest.raises(ValueError, match="fit_frames"):
        encoder(torch.randn(1, 65, 128))


def test_patches_are_frequency_major():
    encoder = ASTEncoder(small_config())
    fbank = torch.zeros(1, 64, 128)
    fbank[0, 16:32, 32:48] = 1.0  # time patch 1, frequency patch 2
    patches = encoder.patch_embed(fbank)[0]
    bias = encoder.patch_embed.proj.bias
    changed = (patches - bias).abs().sum(1).nonzero().flatten().tolist()
    assert changed == [2 * 4 + 1]  # f_row * n_time + t_col, n_time = 4


def test_masked_patches_get_the_mask_token_before_the_position_embedding():
    encoder = ASTEncoder(small_config()).eval()
    grid = encoder.grid[0] * encoder.grid[1]
    mask = torch.zeros(2, grid, dtype=torch.bool)
    mask[:, ::3] = True
    a, b = torch.randn(2, 64, 128), torch.randn(2, 64, 128)
    embedded = encoder.embed(a, mask)
    lead = encoder.num_lead_tokens
    expected = encoder.mask_embed[0, 0] + encoder.pos_embed[0, lead:][mask[0]]
    assert torch.allclose(embedded[0, lead:][mask[0]], expected)
    # Fully masked clips look the same whatever their content.
    full = torch.ones(2, grid, dtype=torch.bool)
    assert torch.allclose(encoder(a, full), encoder(b, full), atol=1e-6)
    assert not torch.allclose(encoder(a, mask), encoder(b, mask))


def test_attention_matches_the_textbook_formula():
    encoder = ASTEncoder(small_config()).eval()
    attention = encoder.blocks[0].attn
    x = torch.randn(2, 7, 32)
    q, k, v = rearrange(attention.qkv(x), "b n (three h d) -> three b h n d", three=3, h=2)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 16**0.5, dim=-1)
    expected = attention.proj(rearrange(weights @ v, "b h n d -> b n (h d)"))
    assert torch.allclose(attention(x), expected, atol=1e-6)


def test_drop_path_is_stochastic_in_training_only():
    encoder = ASTEncoder(small_config(drop_path=0.5))
    assert [block.drop_path.p for block in encoder.blocks] == [0.0, 0.5]
    x = torch.randn(8, 64, 128)
    encoder.eval()
    assert torch.equal(encoder(x), encoder(x))
    encoder.train()
    torch.manual_seed(0)
    assert not torch.equal(encoder(x), encoder(x))


def grid_embed(values: torch.Tensor, lead: int = 2) -> torch.Tensor:
    """A position embedding of one channel whose patch part is ``values [F, T]``."""
    leading = torch.full((lead,), -1.0)
    return torch.cat([leading, values.flatten()])[None, :, None]


def test_adapt_center_crops_time_and_frequency():
    values = torch.arange(4 * 6, dtype=torch.float).reshape(4, 6)
    adapted = adapt_pos_embed(grid_embed(values), 2, (4, 6), (2, 3))
    assert adapted[0, :2, 0].tolist() == [-1, -1]
    # time: 6 -> 3 keeps columns 6//2 - 3//2 = 2 .. 4; frequency: 4 -> 2 keeps rows 1 .. 2
    assert adapted[0, 2:, 0].reshape(2, 3).tolist() == [[8, 9, 10], [14, 15, 16]]


def test_adapt_interpolates_linearly_when_larger():
    values = torch.tensor([[0.0, 4.0], [8.0, 12.0]])
    adapted = adapt_pos_embed(grid_embed(values, lead=1), 1, (2, 2), (2, 4))[0, 1:, 0].reshape(2, 4)
    # Half-pixel centres (align_corners=False): new column j samples old x = (j + 0.5) / 2 - 0.5.
    assert adapted.tolist() == [[0.0, 1.0, 3.0, 4.0], [8.0, 9.0, 11.0, 12.0]]
    taller = adapt_pos_embed(grid_embed(values, lead=1), 1, (2, 2), (4, 2))[0, 1:, 0].reshape(4, 2)
    assert taller.tolist() == [[0.0, 4.0], [2.0, 6.0], [6.0, 10.0], [8.0, 12.0]]


def test_adapt_mixes_crop_and_stretch_per_axis():
    values = torch.arange(3 * 2, dtype=torch.float).reshape(3, 2)  # rows 0-1, 2-3, 4-5
    adapted = adapt_pos_embed(grid_embed(values), 2, (3, 2), (1, 4))[0, 2:, 0]
    # time 2 -> 4 on every row, then frequency 3 -> 1 keeps row 3 // 2 - 0 = 1
    assert adapted.tolist() == [2.0, 2.25, 2.75, 3.0]
    with pytest.raises(ValueError, match="grid"):
        adapt_pos_embed(grid_embed(values), 2, (2, 2), (1, 1))


def test_adapted_embedding_is_what_a_wider_encoder_uses():
    narrow = ASTEncoder(small_config())
    wide_config = small_config(fstride=10, tstride=10, input_tdim=100)
    adapted = adapt_pos_embed(narrow.pos_embed.data, 2, narrow.grid, wide_config.grid)
    assert adapted.shape == (1, 2 + 12 * 9, 32)
    manual = F.interpolate(rearrange(narrow.pos_embed.data[:, 2:], "1 (f t) d -> 1 d f t", f=8), size=(8, 9),
                           mode="bilinear")
    manual = F.interpolate(manual, size=(12, 9), mode="bilinear")
    assert torch.allclose(adapted[:, 2:], rearrange(manual, "1 d f t -> 1 (f t) d"))


# --- token dropping (MAE / EAT) and feed-forward outputs -----------------------------------


@pytest.mark.parametrize("lead", [1, 2])
def test_every_token_visible_is_the_full_forward(lead):
    encoder = ASTEncoder(small_config(num_lead_tokens=lead)).eval()
    fbank = torch.randn(2, 64, 128)
    everything = torch.arange(encoder.config.num_patches).expand(2, -1)
    assert torch.allclose(encoder(fbank, visible=everything), encoder(fbank), atol=1e-5)
    clones = torch.arange(encoder.config.num_patches).expand(6, -1)  # three clones of each clip
    assert torch.allclose(encoder(fbank, visible=clones), encoder(fbank).repeat_interleave(3, dim=0), atol=1e-5)


def test_dropped_tokens_do_not_reach_the_visible_ones():
    encoder = ASTEncoder(small_config()).eval()  # 8 x 4 grid of 16 x 16 patches
    fbank = torch.randn(1, 64, 128)
    visible = torch.tensor([[0, 5, 6, 17, 31]])  # (f, t) = (0,0), (1,1), (1,2), (4,1), (7,3)
    changed = fbank.clone()
    changed[:, 16:32, 0:16] = 100.0  # patch (0, 1) = index 1, dropped
    changed[:, 48:64, 112:128] += torch.randn(16, 16)  # patch (7, 3) = index 31, kept
    kept_before, kept_after = encoder(fbank, visible=visible), encoder(changed, visible=visible)
    assert kept_before.shape == (1, 2 + 5, 32)
    changed[:, 48:64, 112:128] = fbank[:, 48:64, 112:128]  # undo the kept patch's change only
    assert torch.equal(encoder(changed, visible=visible), kept_before)  # the dropped patch changes nothing
    assert not torch.allclose(kept_after, kept_before)
    # ... and they are the encoder run on that sub-sequence, position embedding added first.
    x = encoder.embed(fbank)[:, [0, 1] + [2 + i for i in visible[0].tolist()]]
    for block in encoder.blocks:
        x = block(x)
    assert torch.allclose(kept_before, encoder.norm(x), atol=1e-6)


def test_clone_rows_read_their_own_clip():
    encoder = ASTEncoder(small_config(num_lead_tokens=1)).eval()
    fbank = torch.randn(2, 64, 128)
    visible = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])  # clip 0: rows 0-1, clip 1: rows 2-3
    out = encoder(fbank, visible=visible)
    for row, clip in enumerate([0, 0, 1, 1]):
        alone = encoder(fbank[clip : clip + 1], visible=visible[row : row + 1])
        assert torch.allclose(out[row], alone[0], atol=1e-6)
    with pytest.raises(ValueError, match="visible"):
        encoder(fbank, visible=torch.zeros(3, 2, dtype=torch.long))


def test_block_ffn_outputs_are_the_mlp_outputs_before_the_residual():
    encoder = ASTEncoder(small_config()).eval()
    fbank = torch.randn(2, 64, 128)
    outputs = encoder.block_ffn_outputs(fbank)
    assert len(outputs) == 2 and outputs[0].shape == (2, 2 + 32, 32)
    x = encoder.embed(fbank)
    for block, ffn in zip(encoder.blocks, outputs):
        x = x + block.attn(block.norm1(x))
        assert torch.allclose(ffn, block.mlp(block.norm2(x)), atol=1e-6)
        x = x + ffn
    assert torch.allclose(encoder.norm(x), encoder(fbank), atol=1e-5)  # the normal forward is the same path
