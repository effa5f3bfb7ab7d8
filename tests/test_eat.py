"""EAT: targets and losses against a clip-by-clip reference, one teacher pass for all clones,
the EMA schedule at the step given, the recipes' published values, and the demo recipe end to
end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import ssast
from pretrain.base import optimization_step
from pretrain.cli import main
from pretrain.eat import EAT
from ssast.demo.runner import recipe_for
from ssast.heads import ConvDecoder
from ssast.losses import layer_averaged_targets, scaled_squared_error
from ssast.schedules import Progress

from helpers import logged, resolved_recipe

REPO = Path(__file__).resolve().parents[1]
START = Progress(step=0, total_steps=1)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_eat(**changes) -> EAT:
    """A mini (4-block, 192-wide) patch model on 64 frames (grid 8 x 4), 3 clones, a 2-layer decoder."""
    torch.manual_seed(0)
    options = dict(size="mini", input_tdim=64, clone_batch=3, num_lead_tokens=1, decoder_layers=2,
                   decoder_groups=4)
    model = EAT(**{**options, **changes})
    return model


def reference_ffn_outputs(encoder, clip: torch.Tensor) -> list[torch.Tensor]:
    """One clip ``[T, F]`` through the blocks written out, each block's MLP output kept."""
    x = encoder.embed(clip[None])[0]
    outputs = []
    for block in encoder.blocks:
        x = x + block.attn(block.norm1(x)[None])[0]
        ffn = block.mlp(block.norm2(x))
        outputs.append(ffn[encoder.num_lead_tokens :])
        x = x + ffn
    return outputs


def reference_targets(encoder, clip: torch.Tensor, top_k: int) -> torch.Tensor:
    """data2vec 2.0's make_targets for one clip, by its definition: each layer normalised per
    channel over the tokens, the layers averaged, then each token normalised over channels."""
    layers = reference_ffn_outputs(encoder, clip)[-top_k:]
    normed = [(y - y.mean(0)) / torch.sqrt(y.var(0, unbiased=False) + 1e-5) for y in layers]
    average = sum(normed) / len(normed)
    return (average - average.mean(-1, keepdim=True)) / torch.sqrt(average.var(-1, unbiased=False, keepdim=True) + 1e-5)


# --- targets and losses ---------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 4])
def test_targets_match_a_clip_by_clip_reference(top_k):
    model = small_eat(average_top_k_layers=top_k)
    for p in model.teacher.parameters():  # a teacher unlike the student, with non-trivial norms
        p.data.add_(0.05 * torch.randn_like(p))
    fbank = torch.randn(3, 64, 128)
    targets = model.teacher_targets(fbank)
    assert targets.shape == (3, 8 * 4, 192) and targets.dtype == torch.float32
    with torch.no_grad():
        for clip, target in zip(fbank, targets):
            assert torch.allclose(target, reference_targets(model.teacher, clip, top_k), atol=1e-4)


def test_layer_averaged_targets_normalise_tokens_then_channels():
    layers = [torch.randn(2, 10, 6) * scale + shift for scale, shift in ((1, 0), (5, 3), (0.1, -2))]
    targets = layer_averaged_targets(layers)
    assert torch.allclose(targets.mean(-1), torch.zeros(2, 10), atol=1e-5)
    assert torch.allclose(targets.var(-1, unbiased=False), torch.ones(2, 10), atol=1e-3)
    # Each layer counts equally whatever its scale: scaling one changes nothing.
    assert torch.allclose(layer_averaged_targets([layers[0], 100 * layers[1], layers[2]]), targets, atol=1e-5)


def test_layer_norm_per_layer_keeps_what_a_clip_shares():
    layers = [torch.randn(2, 10, 6) for _ in range(3)]
    # A clip-wide offset per channel (the same at every token), different for the two clips.
    shared = torch.randn(2, 1, 6) * 3
    shifted = [y + shared for y in layers]
    # Instance norm over the tokens removes it; layer norm over the channels keeps it.
    assert torch.allclose(layer_averaged_targets(shifted, "instance"), layer_averaged_targets(layers, "instance"),
                          atol=1e-4)
    assert not torch.allclose(layer_averaged_targets(shifted, "layer"), layer_averaged_targets(layers, "layer"),
                              atol=1e-2)
    # data2vec 2.0's layer_norm_target_layer, computed here: layer norm per layer, mean, layer norm.
    per_layer = torch.stack([(y - y.mean(-1, keepdim=True)) / (y.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
                             for y in shifted]).mean(0)
    reference = (per_layer - per_layer.mean(-1, keepdim=True)) / (
        per_layer.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    assert torch.allclose(layer_averaged_targets(shifted, "layer"), reference, atol=1e-5)
    with pytest.raises(ValueError, match="per_layer"):
        layer_averaged_targets(layers, "batch")


def test_scaled_squared_error_is_d2v_loss_summed_over_channels():
    prediction, target = torch.randn(5, 16), torch.randn(5, 16)
    d2v = F.mse_loss(prediction, target, reduction="none") / math.sqrt(16)  # data2vec 2.0's d2v_loss
    assert torch.allclose(scaled_squared_error(prediction, target), d2v.sum(-1))


@pytest.mark.parametrize("changes", [{}, {"fshape": 128, "tshape": 2}], ids=["patch", "frame"])
def test_losses_match_a_clip_by_clip_reference(changes):
    model = small_eat(mask_noise_std=0.0, **changes)  # noiseless mask tokens, so the reference needs no draws
    for p in model.teacher.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    fbank, clones, encoder = torch.randn(2, 64, 128), model.clone_batch, model.encoder
    out = model.step(fbank, START, seeded(3))
    mask = model.sample_mask(len(fbank) * clones, seeded(3))  # the step's first draw, again
    num_patches, dim = mask.shape[1], encoder.embed_dim
    assert (mask.sum(1) == num_patches - model.kept).all()

    frame_errors, utterance = [], torch.zeros(())
    with torch.no_grad():
        for i, clip in enumerate(fbank):
            targets = reference_targets(model.teacher, clip, model.top_k)
            for j in range(clones):
                row = mask[i * clones + j]
                visible = [p for p in range(num_patches) if not row[p]]
                tokens = encoder.embed(clip[None])[0]
                x = torch.cat([tokens[:1], tokens[1:][visible]])[None]  # cls + visible patches only
                for block in encoder.blocks:
                    x = block(x)
                x = encoder.norm(x)[0]
                grid = torch.zeros(num_patches, dim)
                grid[visible] = x[1:]
                prediction = model.decoder(grid[None])[0]
                for p in range(num_patches):
                    if row[p]:
                        frame_errors.append(((prediction[p] - targets[p]) ** 2).sum() / math.sqrt(dim))
                utterance += ((x[0] - targets.mean(0)) ** 2).sum() / math.sqrt(dim)
    frame = torch.stack(frame_errors).mean()
    assert torch.allclose(out["frame"], frame, rtol=1e-4)
    assert torch.allclose(out["utterance"], utterance, rtol=1e-4)
    assert torch.allclose(out["loss"], frame + utterance, rtol=1e-4)


def test_mask_tokens_are_small_noise_and_the_utterance_weight_applies():
    model = small_eat(utterance_weight=0.5)
    fbank = torch.randn(2, 64, 128)
    seen = {}
    model.decoder.register_forward_hook(lambda module, args, output: seen.update(input=args[0]))
    out = model.step(fbank, START, seeded(1))
    mask = model.sample_mask(2 * model.clone_batch, seeded(1))
    noise = seen["input"][mask]
    assert 0.005 < noise.std() < 0.02 and noise.mean().abs() < 0.002  # N(0, 0.01) at masked positions
    assert torch.allclose(out["loss"], out["frame"] + 0.5 * out["utterance"])


# --- clones, teacher, EMA ----------------------------------------------------------------


def test_clones_share_one_teacher_pass():
    model = small_eat(clone_batch=5)
    batches = {"teacher": [], "teacher_blocks": [], "student": []}
    model.teacher.patch_embed.register_forward_hook(lambda m, args, out: batches["teacher"].append(len(args[0])))
    for block in model.teacher.blocks:
        def counted(x, original=block.forward_with_ffn):
            batches["teacher_blocks"].append(len(x))
            return original(x)
        block.forward_with_ffn = counted
    model.encoder.blocks[0].register_forward_hook(lambda m, args, out: batches["student"].append(args[0].shape[:2]))
    model.step(torch.randn(3, 64, 128), START)
    assert batches["teacher"] == [3] and batches["teacher_blocks"] == [3] * 4  # one pass, one row per clip
    assert batches["student"] == [(3 * 5, 1 + model.kept)]  # every clone, visible tokens only
    assert model.kept == 6  # int(32 * (1 - 0.8)), rounded down as data2vec 2.0


def test_clones_get_their_own_masks():
    model = small_eat(clone_batch=4)
    mask = model.sample_mask(2 * 4, seeded(0))
    assert len({tuple(row.tolist()) for row in mask}) == 8


def test_teacher_follows_the_student_on_the_linear_decay_schedule():
    model = small_eat(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10)
    assert all(not p.requires_grad for p in model.teacher.parameters())
    assert not model.encoder.mask_embed.requires_grad  # dropped tokens need no mask token
    for name, value in model.teacher.state_dict().items():  # the teacher starts as the student
        assert torch.equal(value, model.encoder.state_dict()[name]), name
    assert model.ema.decay(START) == pytest.approx(0.9 + 0.09 * 1 / 10)  # fairseq's num_updates = 1
    model.encoder.cls_token.data.fill_(1.0)
    model.teacher.cls_token.data.fill_(0.0)
    model.apply_updates([], START)
    assert torch.allclose(model.teacher.cls_token, torch.full_like(model.teacher.cls_token, 1 - 0.909))
    # 0.9998 -> 0.99999 over 100k updates, as EAT: halfway after 50k, the end value from 100k.
    paper = small_eat()
    for step, decay in ((49_999, 0.9998 + 0.5 * (0.99999 - 0.9998)), (99_999, 0.99999), (300_000, 0.99999)):
        assert paper.ema.decay(Progress(step, total_steps=400_000)) == pytest.approx(decay, abs=1e-12)


def test_the_ema_decay_moves_with_the_step_given_to_optimization_step():
    model = small_eat(ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10, clone_batch=2)
    optimizer = model.build_optimizer()
    fbank = torch.randn(2, 64, 128)
    assert optimization_step(model, optimizer, fbank, step=0, total_steps=20)["ema_decay"] == pytest.approx(0.909)
    teacher = model.teacher.cls_token.detach().clone()
    later = optimization_step(model, optimizer, fbank, step=4, total_steps=20)
    assert later["ema_decay"] == pytest.approx(0.945)  # update 5 of 10
    expected = 0.945 * teacher + 0.055 * model.encoder.cls_token.detach()  # the teacher moved with it
    torch.testing.assert_close(model.teacher.cls_token, expected)


def test_exports_the_student_and_trains_only_student_and_decoder():
    model = small_eat()
    assert model.exported_encoder is model.encoder
    trained = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trained == {"encoder", "decoder"}


def test_bad_arguments():
    with pytest.raises(ValueError, match="average_top_k_layers"):
        small_eat(average_top_k_layers=5)
    with pytest.raises(ValueError, match="clone_batch"):
        small_eat(clone_batch=0)
    with pytest.raises(ValueError, match="target_layer_norm"):
        small_eat(target_layer_norm="batch")
    with pytest.raises(ValueError, match="groups"):
        ConvDecoder(30, (2, 2), groups=16)
    with pytest.raises(ValueError, match="odd"):
        ConvDecoder(32, (2, 2), kernel=4, groups=4)


# --- the decoder -------------------------------------------------------------------------


def test_decoder_is_data2vec2_decoder2d():
    decoder = ConvDecoder(32, (3, 5), width=32, layers=2, kernel=3, groups=4)
    tokens = torch.randn(2, 15, 32)
    x = tokens.transpose(1, 2).reshape(2, 32, 3, 5)
    for conv in decoder.convs:  # conv -> LayerNorm over channels (no affine) -> GELU, plus the residual
        y = conv(x)
        y = F.gelu(F.layer_norm(y.permute(0, 2, 3, 1), (32,)).permute(0, 3, 1, 2))
        x = x + y
    expected = decoder.proj(x.reshape(2, 32, 15).transpose(1, 2))
    assert torch.allclose(decoder(tokens), expected, atol=1e-5)
    assert [conv.kernel_size for conv in decoder.convs] == [(3, 3), (3, 3)]
    assert all(conv.groups == 4 for conv in decoder.convs)


def test_decoder_on_a_one_row_grid_convolves_along_time_only():
    decoder = ConvDecoder(32, (1, 20), layers=3, groups=4)
    assert all(conv.kernel_size == (1, 3) for conv in decoder.convs)
    tokens = torch.randn(1, 20, 32)
    changed = tokens.clone()
    changed[0, 10] += 1.0
    moved = (decoder(changed) - decoder(tokens)).abs().sum(-1)[0]
    assert (moved[7:14] > 0).all() and (moved[:7] == 0).all() and (moved[14:] == 0).all()  # 3 layers of +-1


def test_a_wider_decoder_skips_the_first_residual():
    decoder = ConvDecoder(32, (2, 4), width=64, layers=2, groups=4)
    assert decoder.convs[0].in_channels == 32 and decoder.convs[1].in_channels == 64
    assert decoder(torch.randn(3, 8, 32)).shape == (3, 8, 32)


# --- recipes ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["base", "tiny"])
def test_recipes_hold_the_published_settings(size):
    """DESIGN.md section 7b, from config/pretraining_AS2M.yaml of cwx-worst-one/EAT."""
    config = resolved_recipe("pretrain", "eat", *(["--model.init_args.size", size] if size != "base" else []))
    trainer, model, data = config["trainer"], config["model"]["init_args"], config["data"]
    optimization = model["optimization"]
    assert config["model"]["class_path"] == "pretrain.eat.EAT" and model["size"] == size
    assert (model["fshape"], model["tshape"], model["num_lead_tokens"], data["target_length"]) == (16, 16, 1, 1024)
    assert (model["mask_prob"], model["mask_length"], model["mask_prob_adjust"]) == (0.8, 5, 0.07)
    assert (model["clone_batch"], model["average_top_k_layers"]) == (16, None)  # None: all 12
    assert model["utterance_weight"] == 1.0
    assert (model["decoder_layers"], model["decoder_kernel"], model["decoder_groups"]) == (6, 3, 16)
    assert model["decoder_dim"] is None and model["mask_noise_std"] == 0.01  # as wide as the encoder
    assert (model["ema_decay"], model["ema_end_decay"], model["ema_anneal_end_step"]) == (0.9998, 0.99999, 100_000)
    assert (optimization["optimizer"], optimization["lr"], optimization["betas"], optimization["weight_decay"]) == (
        "adamw", 5e-4, [0.9, 0.95], 0.05)
    assert optimization["decay_norms_and_biases"] is False and optimization["weight_decay_end"] is None
    assert (optimization["schedule"], optimization["warmup_steps"], optimization["min_lr"], trainer["max_steps"]) == (
        "warmup_cosine", 53_333, 0.0, 400_000)
    assert (config["global_batch_size"], config["max_device_batch_size"], trainer["gradient_clip_val"]) == (48, 12, 4.0)
    assert trainer["precision"] == "bf16-mixed" and model["drop_path"] == 0.0 and data["stats"] == "audioset"


def test_demo_recipe_uses_frame_tokens_on_a_mini_model():
    config = resolved_recipe("pretrain", "eat_demo")
    model, data = config["model"]["init_args"], config["data"]
    assert (model["size"], model["fshape"], model["tshape"]) == ("mini", 128, 2)
    assert data["train"] == "demo_data/unlabeled"
    assert model["utterance_weight"] == 0.0078 and model["num_lead_tokens"] == 1


@pytest.mark.slow
def test_demo_recipe_trains_and_exports_the_student(small_demo_corpus, tmp_path):
    corpus, run = small_demo_corpus, tmp_path / "run"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run), "name": "csv"}}
    # The recipe as ssast-demo runs it: its demo_data/ paths (data and probes) moved to the corpus.
    recipes = [recipe_for(REPO / f"configs/pretrain/{name}.yaml", corpus, tmp_path) for name in ("demo", "eat_demo")]
    main([
        "fit", *[arg for recipe in recipes for arg in ("--config", str(recipe))], "--data.batch_size", "8",
        "--data.batches_per_epoch", "10", "--data.num_workers", "1", "--model.init_args.optimization.warmup_steps", "5",
        "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run),
        "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false",
    ])
    for name in ("train/loss", "train/frame", "train/utterance", "train/pred_var", "val/loss", "val/frame"):
        values = logged(run, name)
        assert values and all(math.isfinite(v) for v in values), name
    frame = logged(run, "train/frame")
    assert frame[-1] < frame[0], frame  # the decoder learns the targets within 20 steps
    decays = logged(run, "train/ema_decay")
    assert decays == sorted(decays) and decays[-1] > decays[0]
    probes = json.loads((run / "probes.json").read_text())["tasks"]
    assert [point["step"] for point in probes["keywords"]["probes"]] == [0, 20]  # the untrained encoder, the end

    exported = ssast.load_checkpoint(run / "encoder.safetensors")
    assert exported.encoder.config.input_tdim == 298 and exported.encoder.grid == (1, 149)
    state = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    student = ssast.load_encoder(run / "checkpoints/last.ckpt")
    for name, tensor in exported.encoder.state_dict().items():
        assert torch.equal(tensor, student.state_dict()[name]), name  # the export is the student...
        assert torch.equal(tensor, state["state_dict"][f"encoder.{name}"]), name
    assert not torch.equal(state["state_dict"]["teacher.patch_embed.proj.weight"],
                           student.state_dict()["patch_embed.proj.weight"])  # ...not the teacher


def test_step_benchmark_times_eat_beside_asit_and_mspm_in_both_precisions():
    import subprocess
    import sys

    command = [sys.executable, "benchmarks/pretrain_step.py", "--method", "eat", "--size", "mini", "--batch", "2",
               "--frames", "64", "--view-frames", "48", "--mask-patches", "10", "--passes", "1", "--align", "16",
               "--clone-batch", "2", "--precision", "fp32,bf16", "--warmup", "0", "--steps", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["method"] == "eat" and (report["precision"], report["compile"]) == ("fp32", "eager")
    assert set(report["variants"]) == {"fp32/eager", "bf16/eager"}
    for variant in report["variants"].values():
        assert set(variant) == {"passes1", "asit", "eat"} and all(v["step_s"] > 0 for v in variant.values())
    assert report["eat"] == report["variants"]["fp32/eager"]["eat"]
    assert report["ratio_eat_vs_asit"] == round(report["eat"]["step_s"] / report["asit"]["step_s"], 3)
    # The same model computes the same FLOPs in either precision.
    assert report["variants"]["bf16/eager"]["eat"]["tflop_per_step"] == report["eat"]["tflop_per_step"]
