"""The SUPERB protocol (a weighted sum of every block's output, s3prl's utterance-level head)
and EAT's finetuning (batch mixup, fairseq's cosine, AdamW groups) in the finetuning module."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import lightning as L
import pytest
import torch

from finetune.cli import build_cli
from finetune.module import Finetune
from ssast.augment import batch_mixup
from ssast.encoder import ASTEncoder, EncoderConfig
from ssast.heads import LayerWeights, UtteranceHead
from ssast.train.datamodule import AudioDataModule
from ssast.schedules import FairseqCosine

REPO = Path(__file__).resolve().parents[1]


def mini_encoder() -> ASTEncoder:
    torch.manual_seed(0)
    return ASTEncoder(EncoderConfig.from_size("mini", fshape=128, tshape=2, fstride=128, tstride=2, input_tdim=32))


def test_one_hot_layer_weights_give_that_hidden_state():
    encoder = mini_encoder()
    hidden = encoder.hidden_states(torch.randn(2, 32, 128))
    weights = LayerWeights(len(hidden))
    for layer in range(len(hidden)):
        with torch.no_grad():
            weights.weights.fill_(-math.inf)
            weights.weights[layer] = 0.0
        assert torch.equal(weights(hidden), hidden[layer])
    with torch.no_grad():
        weights.weights.zero_()
    assert torch.allclose(weights(hidden), torch.stack(hidden).mean(dim=0), atol=1e-6)  # the start: the mean
    assert torch.allclose(encoder.layer_tokens(torch.zeros(1, 32, 128), 3),
                          encoder.hidden_states(torch.zeros(1, 32, 128))[2])


def test_the_utterance_head_averages_the_first_valid_tokens():
    torch.manual_seed(0)
    head = UtteranceHead(8, 3, projector_dim=4)
    tokens = torch.randn(2, 10, 8)
    pooled = head.pool(tokens, torch.tensor([4, 10]))
    assert torch.allclose(pooled[0], head.projector(tokens[0, :4]).mean(dim=0), atol=1e-6)
    assert torch.allclose(pooled[1], head.projector(tokens[1]).mean(dim=0), atol=1e-6)
    assert torch.allclose(head(tokens), head.linear(head.projector(tokens).mean(dim=1)), atol=1e-6)


def test_layers_pooling_reads_round_samples_over_160_tokens_as_s3prl():
    model = Finetune(num_classes=3, size="mini", fshape=128, tshape=2, input_tdim=32, pooling="layers").eval()
    fbank = torch.randn(1, 32, 128)
    hidden = model.encoder.hidden_states(fbank)
    tokens = model.layer_weights(hidden)
    lengths = torch.tensor([1999])  # round(12.49) = 12 of the 17 tokens (1 lead + 16 frame patches)
    expected = model.head.linear(model.head.projector(tokens[0, :12]).mean(dim=0))
    assert torch.allclose(model(fbank, lengths)[0], expected, atol=1e-5)
    assert not model.encoder.norm.weight.requires_grad and not model.encoder.mask_embed.requires_grad
    assert model.exported_classifier() == {}  # a SUPERB head is not a format load_checkpoint reads


def tiny_data(corpus: Path) -> AudioDataModule:
    return AudioDataModule(train=str(corpus / "events/train"), val=str(corpus / "events/val"), target_length=32,
                           batch_size=4, num_workers=0, classes="auto", stats="audioset")


def test_layer_weights_are_learned_in_a_short_fit(tiny_corpus, tmp_path):
    torch.manual_seed(0)
    model = Finetune(num_classes=2, size="mini", fshape=128, tshape=2, input_tdim=32, pooling="layers",
                     optimizer="adam", betas=(0.9, 0.999), weight_decay=0.0, schedule="constant", lr=1e-2)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=tmp_path, gradient_clip_val=1.0)
    trainer.fit(model, datamodule=tiny_data(tiny_corpus))
    probabilities = model.layer_weights.probabilities
    assert probabilities.sum().item() == pytest.approx(1.0)
    assert not torch.allclose(probabilities, torch.full_like(probabilities, 1 / len(probabilities)), atol=1e-4)
    rates = {group["name"]: group["lr"] for group in trainer.optimizers[0].param_groups}
    assert set(rates.values()) == {1e-2}  # constant: every group at lr, every step


def test_fit_reports_the_learned_layer_weights(tiny_corpus, tmp_path):
    run = tmp_path / "run"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    build_cli(["fit", "--config", str(REPO / "configs/finetune/demo.yaml"), "--config",
               str(REPO / "configs/finetune/demo_speakers.yaml"), "--model.init_from", "null",
               "--model.pooling", "layers", "--data.train", str(tiny_corpus / "events/train"),
               "--data.val", str(tiny_corpus / "events/val"), "--data.test", str(tiny_corpus / "events/test"),
               "--data.num_workers", "0", "--data.batch_size", "4", "--data.target_length", "32",
               "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(run),
               "--trainer.logger", json.dumps(logger), "--trainer.enable_progress_bar", "false"])
    result = json.loads((run / "result.json").read_text())
    assert len(result["layer_weights"]) == 4 and sum(result["layer_weights"]) == pytest.approx(1.0)
    (metrics,) = run.glob("**/metrics.csv")
    assert "layer_weights/block 1" in metrics.read_text()  # the chart's values, for loggers without charts


# --- EAT ----------------------------------------------------------------------------------


def test_batch_mixup_mixes_every_clip_with_the_reversed_batch_by_one_lambda():
    torch.manual_seed(0)
    fbank, targets = torch.randn(4, 6, 5), torch.eye(4)
    mixed, mixed_targets = batch_mixup(fbank, targets, alpha=0.8, probability=1.0)
    lam = mixed_targets[0, 0].item()
    assert 0 < lam < 1 and torch.allclose(mixed, lam * fbank + (1 - lam) * fbank.flip(0), atol=1e-6)
    assert torch.allclose(mixed_targets, lam * targets + (1 - lam) * targets.flip(0))
    unchanged = batch_mixup(fbank, targets, alpha=0.8, probability=0.0)
    assert unchanged[0] is fbank and unchanged[1] is targets


def fairseq_cosine_rates(peak: float, min_lr: float, warmup: int, total: int, scale: float) -> list[float]:
    """fairseq's cosine ``step_update`` (one period, t_mult 1, lr_shrink unused), ``warmup_init_lr``
    left at -1 so the warmup starts at ``min_lr``; the optimizer scales it by the group's
    ``lr_scale``."""
    warmup_init, lr_step, period = min_lr, (peak - min_lr) / warmup, total - warmup
    rates = []
    for update in range(total):
        if update < warmup:
            lr = warmup_init + update * lr_step
        else:
            t_curr = update - warmup
            lr = min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * t_curr / period))
        rates.append(lr * scale)
    return rates


def test_the_cosine_schedule_is_fairseqs_with_layer_scales():
    parameters = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    scales = [1.0, 0.65**3]
    optimizer = torch.optim.AdamW([{"params": [p], "lr": 5e-5 * s} for p, s in zip(parameters, scales)])
    scheduler = FairseqCosine(optimizer, warmup_steps=40, total_steps=400, min_lr=1e-6, peak_lr=5e-5)
    ours = []
    for _ in range(400):
        ours.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for index, scale in enumerate(scales):
        expected = fairseq_cosine_rates(5e-5, 1e-6, 40, 400, scale)
        assert [rates[index] for rates in ours] == pytest.approx(expected, rel=1e-9)


def eat_optimizer_overrides(name: str, ndim: int, depth: int, layer_decay: float) -> tuple[float, float]:
    """``(lr_scale, weight_decay_scale)`` that EAT's MaeImageClassificationModel.__init__ gives a
    parameter of its data2vec 2.0 model (the d2v_multi branch) or of its fc_norm and head: no weight
    decay on 1-D tensors and biases; ``layer_scales[i + 1]`` for block ``i`` of ``blocks`` (the
    prenet's, none, then the model's); no lr_scale, so the full rate, for everything else."""
    num_layers = depth + 1
    layer_scales = [layer_decay ** (num_layers - i) for i in range(num_layers + 1)]
    decay_scale = 0.0 if ndim == 1 or name.endswith(".bias") else 1.0
    match = re.match(r"encoder\.blocks\.(\d+)\.", name)
    return (layer_scales[int(match[1]) + 1] if match else 1.0), decay_scale


def test_adamw_and_layer_decay_give_every_parameter_eats_rate_and_weight_decay():
    from types import SimpleNamespace

    model = Finetune(num_classes=3, size="mini", input_tdim=32, pooling="cls", optimizer="adamw", layout="eat",
                     weight_decay=0.05, betas=(0.9, 0.95), layer_decay=0.65, lr=1.0, schedule="fairseq_cosine",
                     warmup_steps=1, decay_norms_and_biases=False)  # as eat.yaml
    model.trainer = SimpleNamespace(estimated_stepping_batches=10)
    optimizer = model.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["betas"] == (0.9, 0.95)
    group_of = {id(parameter): group for group in optimizer.param_groups for parameter in group["params"]}
    depth, checked = model.encoder.config.depth, set()
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        lr_scale, decay_scale = eat_optimizer_overrides(name, parameter.ndim, depth, 0.65)
        group = group_of[id(parameter)]
        assert (group["initial_lr"], group["weight_decay"]) == pytest.approx((lr_scale, 0.05 * decay_scale)), name
        checked.add(name.split(".")[1])
    # The patch embedding, cls token and the norm over the embeddings (EAT's pre_norm) at the full rate.
    assert {"patch_embed", "cls_token", "embed_norm", "blocks"} <= checked


# --- the recipes end to end, on small fakes of the downloads ----------------------------------

TINY = ["--model.init_from", "null", "--model.size", "mini", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.precision", "32-true", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"]


def run_args(recipe: str, run: Path, *extra: str) -> list[str]:
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    from helpers import recipe_args

    return [*recipe_args("finetune", recipe), *TINY, "--trainer.default_root_dir", str(run),
            "--trainer.logger", json.dumps(logger), *extra]


@pytest.mark.slow
def test_iemocap_leave_one_session_out_chooses_on_dev_and_tests_each_session(tmp_path):
    from ssast.data.cli import main as data_main
    from finetune.cli import main
    from helpers import make_iemocap

    data = tmp_path / "iemocap"
    assert data_main(["iemocap", str(make_iemocap(tmp_path)), str(data), "--workers", "1"]) == 0
    run = tmp_path / "er"
    main(["cv", *run_args("iemocap_er", run, "--data.train", str(data), "--data.target_length", "40",
                          "--data.batch_size", "2", "--data.batches_per_epoch", "3", "--data.val_split", "0.4",
                          "--trainer.max_steps", "6", "--trainer.accumulate_grad_batches", "1")])
    summary = json.loads((run / "cv.json").read_text())
    assert set(summary["folds"]) == {f"fold{n}" for n in range(1, 6)} and summary["metric"] == "test/acc"
    tests = []
    for name, fold in summary["folds"].items():
        result = json.loads((run / name / "result.json").read_text())
        assert result["selected"].startswith(f"epoch {fold['epoch']} (step {fold['step']}), the best val/acc")
        assert len(result["layer_weights"]) == 4
        tests.append(result["test"]["test/acc"])
    assert summary["mean"] == pytest.approx(sum(tests) / 5)


@pytest.mark.slow
def test_ks1_with_the_released_test_set_and_eat_speech_commands(tmp_path):
    from ssast.data.cli import main as data_main
    from finetune.cli import main
    from helpers import make_speechcommands, write_clip

    source = make_speechcommands(tmp_path)
    released = tmp_path / "test_set"
    for name in ("yes", "_unknown_", "_silence_"):
        write_clip(released / name / "00000000_nohash_0.wav", 0.5, rate=16000)
    data = tmp_path / "ks1"
    assert data_main(["speechcommands", str(source), str(data), "--variant", "12", "--test-set", str(released),
                      "--workers", "1"]) == 0
    ks1 = tmp_path / "run-ks1"
    main(["fit", *run_args("speechcommands_v1_12", ks1, "--data.train", str(data / "train"),
                           "--data.val", str(data / "val"), "--data.test", str(data / "test"),
                           "--data.batch_size", "4", "--data.batches_per_epoch", "2", "--trainer.max_steps", "4")])
    result = json.loads((ks1 / "result.json").read_text())
    assert "the best val/acc" in result["selected"] and 0 <= result["test"]["test/acc"] <= 1

    eat = tmp_path / "run-eat"
    main(["fit", *run_args("eat_spcv2", eat, "--data.train", str(data / "train"), "--data.val", str(data / "val"),
                           "--data.test", str(data / "test"), "--data.batch_size", "4", "--model.warmup_steps", "2",
                           "--trainer.max_steps", "6", "--model.timem", "4")])
    result = json.loads((eat / "result.json").read_text())
    assert 0 <= result["test"]["test/acc"] <= 1 and (eat / "history.csv").exists()
