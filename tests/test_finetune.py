"""Finetuning: augmentation, metrics, checkpoint kinds, layer-wise rates, prediction files."""

import csv
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
import transformers
from torch import nn
from torch.utils.data import DataLoader

from finetune.callbacks import WritePredictions
from finetune.module import Finetune
from ssast.augment import noise_and_roll
from ssast.heads import ClassificationHead
from ssast.optim import layer_id
from ssast import save_encoder
from ssast.checkpoints import CheckpointError, Preprocessing
from helpers import hf_config, ssast_state, tiny_encoder


def test_noise_and_roll_shift_each_clip_in_time():
    torch.manual_seed(0)
    frames = 20
    fbank = torch.arange(frames, dtype=torch.float).reshape(1, frames, 1).repeat(3, 1, 2)  # value = frame index
    out = noise_and_roll(fbank)
    shifts = set()
    for row in range(3):
        source = out[row, :, 0].floor()
        shift = int(-source[0]) % frames
        assert source.tolist() == ((torch.arange(frames) - shift) % frames).float().tolist()
        noise = out[row] - out[row].floor()
        assert noise.min() >= 0 and noise.max() < 0.1
        shifts.add(shift if shift < 10 else shift - frames)
    assert all(-10 <= shift < 10 for shift in shifts)


def test_map_against_a_hand_computed_case():
    model = Finetune(num_classes=2, task="multilabel", size="tiny", input_tdim=32)
    logits = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.2], [0.1, 0.9]])
    labels = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 1]])
    model.val_metric.update(logits, labels)
    # Class 0 ranks clips 0,1,2,3: positives at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2 = 5/6.
    # Class 1 ranks clips 3,1,2,0: positives at ranks 1 and 2 -> AP = 1.
    assert model.val_metric.compute().item() == pytest.approx((5 / 6 + 1) / 2)


def test_specaugment_fills_with_the_normalized_zero_and_freezing_trains_the_head_only():
    model = Finetune(num_classes=3, size="tiny", input_tdim=48, freqm=127, timem=47, freeze_encoder=True)
    fbank, _ = model.augment(torch.randn(4, 48, 128), torch.eye(3)[[0, 1, 2, 0]])
    assert fbank.eq(0.0).sum() > 0  # no trainer: masks fill with 0
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_layer_ids_give_decaying_rates_and_the_head_its_own():
    assert layer_id("encoder.blocks.0.attn.qkv.weight", 12) == 1 and layer_id("encoder.blocks.11.mlp.fc2.bias", 12) == 12
    assert layer_id("encoder.patch_embed.proj.weight", 12) == layer_id("head.linear.weight", 12) == 13  # as EAT
    model = Finetune(num_classes=3, size="tiny", input_tdim=48, lr=1.0, layer_decay=0.5, head_lr_scale=4.0)
    model.trainer = SimpleNamespace(train_dataloader=[], num_training_batches=10, accumulate_grad_batches=1)
    optimizer = model.configure_optimizers()["optimizer"]
    rates = {group["name"]: group["initial_lr"] for group in optimizer.param_groups}
    assert rates == {"head": 4.0, **{f"layer{layer}": 0.5 ** (13 - layer) for layer in range(1, 14)}}
    head = next(group for group in optimizer.param_groups if group["name"] == "head")["params"]
    assert {id(p) for p in head} == {id(p) for p in model.head.parameters()}  # the encoder's final norm is layer13


def check_loads(path, **changes):
    model = Finetune(num_classes=4, init_from=str(path), input_tdim=128, **changes)
    logits = model(torch.randn(2, 128, 128))
    assert logits.shape == (2, 4)
    return model


def test_every_checkpoint_kind_loads_into_the_finetune_module(tmp_path):
    encoder = tiny_encoder()
    save_encoder(encoder, tmp_path / "ours.safetensors", Preprocessing(-5, 4, 96))
    model = check_loads(tmp_path / "ours.safetensors", fstride=10, tstride=10)
    assert model.encoder.config.grid == (12, 12)

    torch.save(ssast_state(encoder), tmp_path / "ssast.pth")
    assert check_loads(tmp_path / "ssast.pth").encoder.config.grid == (8, 8)  # stride kept: 16

    torch.save(ssast_state(tiny_encoder(fstride=10, tstride=10), finetuned=True), tmp_path / "finetuned.pth")
    assert check_loads(tmp_path / "finetuned.pth").encoder.config.fstride == 10

    transformers.ASTModel(hf_config()).save_pretrained(tmp_path / "hf")
    assert check_loads(tmp_path / "hf", pooling="cls").encoder.config.embed_dim == 64

    teacher = {f"backbone.{k}": v for k, v in tiny_encoder(num_lead_tokens=1).state_dict().items() if k != "mask_embed"}
    torch.save({"teacher": teacher}, tmp_path / "asit.pt")
    assert check_loads(tmp_path / "asit.pt").encoder.num_lead_tokens == 1


def test_from_scratch_at_the_finetuning_stride():
    model = Finetune(num_classes=3, size="tiny", fstride=10, tstride=10, input_tdim=128)
    assert model.encoder.config.grid == (12, 12) and model.encoder.embed_dim == 192
    assert model.encoder.config.block_norm == "pre"


def test_layout_from_scratch_and_checked_against_a_checkpoint(tmp_path):
    scratch = Finetune(num_classes=3, size="tiny", input_tdim=128, layout="eat")
    assert (scratch.encoder.config.block_norm, scratch.encoder.config.positions) == ("post", "sincos")
    save_encoder(scratch.encoder, tmp_path / "eat.safetensors", Preprocessing(-5, 4, 128))
    model = Finetune(num_classes=3, init_from=str(tmp_path / "eat.safetensors"), input_tdim=128)
    assert model.encoder.config.block_norm == "post"  # null takes the checkpoint's
    save_encoder(tiny_encoder(), tmp_path / "plain.safetensors", Preprocessing(-5, 4, 96))
    with pytest.raises(CheckpointError, match="block_norm=pre.*but the recipe asks for block_norm=post"):
        Finetune(num_classes=3, init_from=str(tmp_path / "plain.safetensors"), input_tdim=96, layout="eat")


def write_predictions(tmp_path, embeddings: bool):
    trainer = SimpleNamespace(default_root_dir=str(tmp_path), world_size=1, global_rank=0)
    module = SimpleNamespace(hparams=SimpleNamespace(class_names=["dog", "cat", "bird"]))
    batches = [{"key": ["a", "b"], "scores": torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]),
                "embeddings": torch.ones(2, 4)},
               {"key": ["c"], "scores": torch.tensor([[0.2, 0.2, 0.6]]), "embeddings": torch.zeros(1, 4)}]
    WritePredictions("out/predictions.csv", embeddings=embeddings, top_k=2).write_on_epoch_end(
        trainer, module, batches, None)


def test_prediction_files(tmp_path):
    write_predictions(tmp_path, embeddings=False)
    rows = list(csv.reader((tmp_path / "out/predictions.csv").open()))
    assert rows == [["key", "labels", "scores"], ["a", "cat;bird", "0.7000;0.2000"],
                    ["b", "dog;bird", "0.5000;0.3000"], ["c", "bird;dog", "0.6000;0.2000"]]
    write_predictions(tmp_path, embeddings=True)
    vectors = np.load(tmp_path / "out/predictions.npy")
    assert vectors.shape == (3, 4) and vectors[:2].sum() == 8
    assert (tmp_path / "out/predictions.keys.txt").read_text().split() == ["a", "b", "c"]


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_a_padding_batch_is_evaluated_but_counts_for_nothing(task):
    """The placeholder batch a DDP rank without evaluation data gets (ssast.data.loaders.EvalLoader)
    runs through the model, so that its rank joins the metric syncs, but adds nothing to them."""
    from pretrain.mspm import MSPM

    torch.manual_seed(0)
    model = Finetune(num_classes=3, task=task, size="mini", fshape=128, tshape=2, input_tdim=16).eval()
    labels = torch.tensor([0, 2]) if task == "multiclass" else torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    real = {"fbank": torch.randn(2, 16, 128), "labels": labels}
    padding = {"fbank": torch.zeros(1, 16, 128), "labels": labels[:1], "padding": True}
    method = MSPM(size="mini", fshape=128, tshape=2, input_tdim=16, mask_patches=4).eval()
    with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):  # outside a Trainer, logging is a no-op
        model.validation_step(real, 0)
        method.validation_step(real, 0)
        metrics = [model.val_loss, model.val_metric, *method.val_figures.values()]
        expected = [metric.compute() for metric in metrics]
        model.validation_step(padding, 1)
        method.validation_step(padding, 1)
        after = [metric.compute() for metric in metrics]
    assert all(torch.equal(a, b) for a, b in zip(after, expected)), (after, expected)


class Snapshots(L.Callback):
    """The encoder's and the head's weights at the end of every training epoch."""

    def __init__(self) -> None:
        self.encoder: list[torch.Tensor] = []
        self.head: list[torch.Tensor] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.encoder.append(torch.nn.utils.parameters_to_vector(pl_module.encoder.blocks.parameters()).detach().clone())
        self.head.append(torch.nn.utils.parameters_to_vector(pl_module.head.parameters()).detach().clone())


@pytest.mark.parametrize("pooling", ["mean", "layers"])
def test_a_head_warmup_trains_the_head_alone_then_the_whole_model(tmp_path, pooling):
    frames = 16
    generator = torch.Generator().manual_seed(0)
    batches = [{"fbank": torch.randn(4, frames, 128, generator=generator), "labels": torch.tensor([0, 1, 2, 0])}
               for _ in range(3)]
    model = Finetune(num_classes=3, size="mini", fshape=128, tshape=2, input_tdim=frames, pooling=pooling,
                     normalize_layers=pooling == "layers", drop_path=0.1, head_warmup_epochs=2, lr=1e-3,
                     schedule="constant")
    start = torch.nn.utils.parameters_to_vector(model.encoder.blocks.parameters()).detach().clone()
    snapshots = Snapshots()
    trainer = L.Trainer(accelerator="cpu", max_epochs=4, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
                        callbacks=[snapshots], limit_val_batches=0)
    trainer.fit(model, DataLoader(batches, batch_size=None))
    encoder, head = snapshots.encoder, snapshots.head
    assert torch.equal(encoder[0], start) and torch.equal(encoder[1], start)  # the warm-up: a probe's encoder
    assert not torch.equal(head[0], head[1])
    assert not torch.equal(encoder[2], start) and not torch.equal(encoder[3], encoder[2])
    assert model.encoder.mask_embed.requires_grad is False  # the unused parts stay out of the gradients


def test_finetuning_options_that_cannot_work_are_one_line():
    with pytest.raises(ValueError, match="head_warmup_epochs \\(-1\\) cannot be negative"):
        Finetune(num_classes=3, size="tiny", input_tdim=48, head_warmup_epochs=-1)
    with pytest.raises(ValueError, match="normalize_layers normalizes the blocks that pooling 'layers' weighs"):
        Finetune(num_classes=3, size="tiny", input_tdim=48, normalize_layers=True)


@pytest.mark.parametrize("pooling", ["mean", "layers"])
def test_a_standardized_embedding_ignores_what_every_clip_shares(pooling):
    def classifier_input(model: Finetune, embeddings: torch.Tensor) -> torch.Tensor:
        seen = []
        hook = model.head.linear.register_forward_hook(lambda module, args, output: seen.append(args[0]))
        model.classify(embeddings)
        hook.remove()
        return seen[0]

    torch.manual_seed(0)
    model = Finetune(num_classes=3, size="mini", fshape=128, tshape=2, input_tdim=16, pooling=pooling,
                     standardize_embedding=True)
    width = 256 if pooling == "layers" else model.encoder.embed_dim
    embeddings = torch.randn(8, width) + 10 * torch.randn(width)  # the component a pretrained encoder gives every clip
    read = classifier_input(model, embeddings)
    torch.testing.assert_close(read.mean(dim=0), torch.zeros(width), atol=1e-4, rtol=0)
    torch.testing.assert_close(read.var(dim=0, unbiased=False), torch.ones(width), atol=1e-3, rtol=0)
    plain = classifier_input(Finetune(num_classes=3, size="mini", fshape=128, tshape=2, input_tdim=16, pooling=pooling),
                             embeddings)
    assert plain.mean(dim=0).norm() > 10 * plain.std(dim=0).mean()  # read as it is, the shared part dominates


def test_a_standardized_head_folds_into_the_plain_one():
    torch.manual_seed(0)
    head = ClassificationHead(64, 5, 1e-6, standardize=True)
    nn.init.normal_(head.linear.weight)
    nn.init.normal_(head.linear.bias)
    for _ in range(20):  # running statistics far from their start
        head(3 * torch.randn(16, 64) + torch.randn(64))
    head.eval()
    folded = head.folded()
    assert folded.standardize is None and set(folded.state_dict()) == set(ClassificationHead(64, 5).state_dict())
    embeddings = 3 * torch.randn(16, 64)
    with torch.no_grad():
        torch.testing.assert_close(folded(embeddings), head(embeddings), atol=1e-5, rtol=1e-5)
