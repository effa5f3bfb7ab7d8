"""Finetuning an AST encoder for event, keyword and speaker tasks (DESIGN.md §8).

One LightningModule: an encoder from any checkpoint ``ssast.load_encoder`` reads (or a
random one, for the from-scratch baseline) and a ``LayerNorm -> Linear`` head on the mean
of the patch tokens or on the leading tokens. ``multiclass`` tasks report accuracy,
``multilabel`` tasks mAP; the loss is cross-entropy or binary cross-entropy, by task or as
the recipe says (SSAST trains Speech Commands, a multi-class task, with BCE).

The pipeline is the official SSAST/AST one: mixup mixes waveforms before the fbank, in the
data (``data.mixup``; each batch says with which partner and λ, and the targets are mixed
here alike); SpecAugment masks the log-mel (filled with what a raw 0, AST's mask value,
normalizes to); AST's noise and time roll come last. The learning rate follows the official
loop (:class:`~ssast.train.schedules.WarmupStepDecay`) or a warmup + cosine schedule.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from einops import rearrange
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MultilabelAveragePrecision

from ssast.augment import roll_frames
from ssast.checkpoints import Checkpoint, CheckpointError, load_checkpoint
from ssast.encoder import ASTEncoder, EncoderConfig, Pooling
from ssast.heads import ClassificationHead
from ssast.train.module import EncoderModule
from ssast.train.schedules import WarmupCosine, WarmupStepDecay
from ssast.visualize import colorize

Task = Literal["multiclass", "multilabel"]
Loss = Literal["ce", "bce"]
Schedule = Literal["step", "cosine"]


def mix_targets(targets: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``λ t + (1 - λ) t[partner]``: the targets of clips whose waveforms the data mixed
    (``batch["mix_partner"]``, ``batch["mix_lambda"]``), as the official data loader mixes
    labels."""
    lam = lam.to(targets.dtype)[:, None]
    return lam * targets + (1 - lam) * targets[partner]


def noise_and_roll(fbank: torch.Tensor, max_shift: int = 10) -> torch.Tensor:
    """AST's ESC-50 augmentation: uniform noise of a random level up to 0.1, then each clip
    rolled in time by up to ``max_shift`` frames."""
    batch = len(fbank)
    level = torch.rand(batch, 1, 1, device=fbank.device) / 10
    noisy = fbank + torch.rand_like(fbank) * level
    return roll_frames(noisy, torch.randint(-max_shift, max_shift, (batch,), device=fbank.device))


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for block i, depth + 1 for the final norm and the head
    (the head also gets ``head_lr``)."""
    if match := re.match(r"encoder\.blocks\.(\d+)\.", name):
        return int(match.group(1)) + 1
    if name.startswith(("encoder.patch_embed", "encoder.cls_token", "encoder.dist_token", "encoder.pos_embed",
                        "encoder.mask_embed")):
        return 0
    return depth + 1


def build_encoder(hp: Any) -> ASTEncoder:
    """The encoder a :class:`Finetune` recipe asks for: from ``init_from`` (checked against the
    recipe's size and token shape, adapted to its strides and length) or from scratch."""
    strides = {"fstride": hp.fstride, "tstride": hp.tstride}
    strides = {name: value for name, value in strides.items() if value is not None}
    if hp.init_from is None:
        fshape, tshape = hp.fshape or 16, hp.tshape or 16
        config = EncoderConfig.from_size(
            hp.size or "base", fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape,
            input_tdim=hp.input_tdim, drop_path=hp.drop_path,
        )
        return ASTEncoder(config.replace(**strides))
    # Adapted while loading: an ImageNet ViT has no audio grid to adapt from afterwards.
    checkpoint = load_checkpoint(hp.init_from, input_tdim=hp.input_tdim, drop_path=hp.drop_path, **strides)
    check_recipe_fits(checkpoint, hp)
    return checkpoint.encoder


def check_recipe_fits(checkpoint: Checkpoint, hp: Any) -> None:
    """A recipe that names a size or token shape must get it: finetuning frame tokens
    from a patch checkpoint would otherwise go unnoticed."""
    config = checkpoint.encoder.config
    wanted = {"fshape": hp.fshape, "tshape": hp.tshape}
    if hp.size is not None:
        sized = EncoderConfig.from_size(hp.size)
        wanted.update(embed_dim=sized.embed_dim, depth=sized.depth)
    differ = {name: value for name, value in wanted.items() if value is not None and getattr(config, name) != value}
    if differ:
        asked = ", ".join(f"{name}={value}" for name, value in differ.items())
        has = ", ".join(f"{name}={getattr(config, name)}" for name in differ)
        raise CheckpointError(
            checkpoint.path, checkpoint.format, f"holds an encoder with {has} but the recipe asks for {asked}; "
            "set model.size, model.fshape and model.tshape to null to take the checkpoint's, or start from a "
            "checkpoint that matches")


class Finetune(EncoderModule):
    """An encoder and a classification head, trained on labeled shards. A batch whose loss is
    NaN or infinite skips its optimizer step (:class:`~ssast.train.module.EncoderModule`).

    Args:
        num_classes: number of classes (linked from the data by the CLI).
        task: ``multiclass`` (cross-entropy, accuracy) or ``multilabel`` (BCE, mAP).
        init_from: checkpoint to start from (ours, official SSAST, Hugging Face AST, ASiT, or
            an ImageNet ViT/DeiT, adapted as AST does);
            ``None`` trains from scratch (the baseline).
        size: encoder size from scratch (``None``: ``base``); with ``init_from``, ``None``
            or the checkpoint's size, which is checked.
        fshape: patch height from scratch (``None``: 16); with ``init_from``, ``None`` or
            the checkpoint's, which is checked.
        tshape: patch width, like ``fshape``.
        fstride: frequency stride (SSAST finetunes patch models at 10, frame models at
            128); ``None`` keeps the checkpoint's (the patch height from scratch).
        tstride: time stride (SSAST: 10 for patch models, 1 for frame models); ``None``
            keeps the checkpoint's (the patch width from scratch).
        input_tdim: frames per clip (linked to the data's ``target_length``).
        pooling: ``mean`` of patch tokens (SSAST) or ``cls`` (the leading tokens).
        drop_path: stochastic depth of the deepest block.
        freeze_encoder: train the head only (a linear probe).
        loss: ``ce`` (cross-entropy) or ``bce`` (binary cross-entropy on each class);
            ``None``: by ``task`` (``ce`` for multiclass).
        lr: learning rate of the encoder's top block (of every block without
            ``layer_decay``).
        head_lr: the head learns ``head_lr`` times faster than ``lr`` (SSAST's ``--head_lr``).
        layer_decay: each block down from the top learns ``layer_decay`` times slower.
        weight_decay: Adam's weight decay.
        betas: Adam's betas.
        schedule: ``step`` (the official SSAST/AST loop: warmup, then the rate multiplied by
            ``decay_factor`` every ``decay_every`` epochs from epoch ``decay_start + 1``;
            :class:`~ssast.train.schedules.WarmupStepDecay`) or ``cosine`` (linear warmup,
            then cosine to ``min_lr``).
        warmup_steps: warmup optimizer steps (0: none).
        warmup_every: ``step`` only: the warmup sets the rate every this many steps (SSAST: 50).
        decay_start: ``step`` only: epochs at the full rate before the first decay
            (``--lrscheduler_start``).
        decay_every: ``step`` only: epochs between decays (``--lrscheduler_step``).
        decay_factor: ``step`` only: the factor of each decay (``--lrscheduler_decay``).
        min_lr: ``cosine`` only: the final learning rate.
        freqm: SpecAugment: widest frequency mask in bins (0: off).
        timem: SpecAugment: widest time mask in frames (0: off).
        noise: add AST's noise and random time roll.
        class_names: class names for predictions and the confusion matrix (linked).
        max_nonfinite_steps: consecutive optimizer steps skipped for a NaN or infinite loss
            that stop the run (1: the first one does).
    """

    def __init__(
        self,
        num_classes: int = 2,
        task: Task = "multiclass",
        init_from: str | None = None,
        size: str | None = None,
        fshape: int | None = None,
        tshape: int | None = None,
        fstride: int | None = None,
        tstride: int | None = None,
        input_tdim: int = 1024,
        pooling: Pooling = "mean",
        drop_path: float = 0.0,
        freeze_encoder: bool = False,
        loss: Loss | None = None,
        lr: float = 1e-4,
        head_lr: float = 1.0,
        layer_decay: float = 1.0,
        weight_decay: float = 5e-7,
        betas: tuple[float, float] = (0.95, 0.999),
        schedule: Schedule = "step",
        warmup_steps: int = 0,
        warmup_every: int = 1,
        decay_start: int = 10,
        decay_every: int = 5,
        decay_factor: float = 0.5,
        min_lr: float = 1e-6,
        freqm: int = 0,
        timem: int = 0,
        noise: bool = False,
        class_names: list[str] | None = None,
        max_nonfinite_steps: int = 20,
    ) -> None:
        super().__init__(max_nonfinite_steps)
        self.save_hyperparameters()
        self.encoder = build_encoder(self.hparams)
        self.head = ClassificationHead(self.encoder.embed_dim, num_classes)
        if freeze_encoder:
            self.encoder.requires_grad_(False)
        self.freq_masking = T.FrequencyMasking(freqm, iid_masks=True) if freqm else None
        self.time_masking = T.TimeMasking(timem, iid_masks=True) if timem else None
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        if task == "multiclass":
            self.val_metric = MulticlassAccuracy(num_classes, average="micro")
            self.test_metric = MulticlassAccuracy(num_classes, average="micro")
            self.confusion = MulticlassConfusionMatrix(num_classes)
        else:
            self.val_metric = MultilabelAveragePrecision(num_classes, average="macro")
            self.test_metric = MultilabelAveragePrecision(num_classes, average="macro")
            self.confusion = None
        self.metric_name = "acc" if task == "multiclass" else "mAP"
        self.loss_name: Loss = loss or ("ce" if task == "multiclass" else "bce")
        if task == "multilabel" and self.loss_name == "ce":
            raise ValueError("a multilabel task trains with loss bce, not ce")

    def exported_classifier(self) -> dict[str, Any]:
        # Checkpoints carry the head, its pooling and class names: load_checkpoint reads the
        # finetuned model back whole, and ssast-export publishes it.
        return {"head": self.head, "head_attribute": "head", "pooling": self.hparams.pooling,
                "labels": self.hparams.class_names}

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of normalized log-mels ``[B, T, F]``."""
        return self.head(self.embed(fbank))

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """Clip embeddings ``[B, D]``: the encoder's pooled tokens."""
        return self.encoder.pool(self.encoder(fbank), self.hparams.pooling)

    # --- training -------------------------------------------------------------------

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        if self.hparams.task == "multiclass":
            return F.one_hot(labels, self.hparams.num_classes).float()
        return labels.float()

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Cross-entropy on target probabilities: the official loop's CE on the argmax of
        # one-hot labels where nothing is mixed.
        if self.loss_name == "ce":
            return F.cross_entropy(logits.float(), targets)
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    def _mask_fill(self) -> float:
        """What a raw log-mel of 0 (AST's mask value) becomes after normalization."""
        datamodule = self.attached_datamodule()
        normalize = datamodule.normalize if datamodule is not None else None
        return float(normalize(torch.zeros(()))) if normalize is not None else 0.0

    def augment(self, fbank: torch.Tensor) -> torch.Tensor:
        """SpecAugment masks, then AST's noise and time roll (mixup happened in the data)."""
        if self.freq_masking is not None or self.time_masking is not None:
            image = rearrange(fbank, "b t f -> b 1 f t")
            fill = self._mask_fill()
            for masking in (self.freq_masking, self.time_masking):
                if masking is not None:
                    image = masking(image, mask_value=fill)
            fbank = rearrange(image, "b 1 f t -> b t f")
        if self.hparams.noise:
            fbank = noise_and_roll(fbank)
        return fbank

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.freeze_encoder:
            self.encoder.eval()
        targets = self._targets(batch["labels"])
        if "mix_lambda" in batch:
            targets = mix_targets(targets, batch["mix_partner"], batch["mix_lambda"])
        fbank = self.augment(batch["fbank"])
        loss = self._loss(self(fbank), targets)
        self.train_loss.update(loss.detach(), len(fbank))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(fbank))
        # The epoch's mean, the official result.csv's train_loss (history.csv reads it).
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=len(fbank))
        return loss

    def _evaluate(self, batch: dict, loss_metric: MeanMetric, metric, stage: str) -> None:
        logits = self(batch["fbank"])
        labels = batch["labels"]
        size = len(labels)
        # A DDP rank's placeholder batch (it has no data, see EvalLoader) counts for nothing.
        padding = bool(batch.get("padding"))
        loss_metric.update(self._loss(logits, self._targets(labels)), 0 if padding else size)
        if not padding:
            metric.update(logits.float(), labels if self.hparams.task == "multiclass" else labels.int())
            if stage == "val" and self.confusion is not None:
                self.confusion.update(logits.argmax(dim=1), labels)
        elif self.hparams.task == "multilabel":  # mAP gathers rows from every rank: this one gives none
            metric.update(logits[:0].float(), labels[:0].int())
        self.log(f"{stage}/loss", loss_metric, batch_size=size)
        self.log(f"{stage}/{self.metric_name}", metric, prog_bar=True, batch_size=size)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_metric, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_metric, "test")

    def on_validation_epoch_end(self) -> None:
        if self.confusion is None:
            return
        matrix = self.confusion.compute()
        self.confusion.reset()
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            self.log_picture("val/confusion", confusion_picture(matrix), caption="rows: true class, columns: predicted")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        embeddings = self.embed(batch["fbank"])
        logits = self.head(embeddings)
        scores = logits.sigmoid() if self.hparams.task == "multilabel" else logits.softmax(dim=-1)
        return {"key": batch["key"], "scores": scores.float().cpu(), "embeddings": embeddings.float().cpu()}

    # --- optimization ---------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        depth = self.encoder.config.depth
        groups: dict[str, list[torch.nn.Parameter]] = {}
        rates: dict[str, float] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            layer = layer_id(name, depth)
            group = "head" if name.startswith("head.") else f"layer{layer}"
            groups.setdefault(group, []).append(parameter)
            rates[group] = hp.lr * hp.layer_decay ** (depth + 1 - layer) * (hp.head_lr if group == "head" else 1.0)
        # Named groups: LearningRateMonitor logs each by name and history.csv reads "head".
        param_groups = [{"params": params, "lr": rates[group], "name": group} for group, params in groups.items()]
        optimizer = torch.optim.Adam(param_groups, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)
        if hp.schedule == "cosine":
            scheduler = WarmupCosine(optimizer, hp.warmup_steps, int(self.trainer.estimated_stepping_batches), hp.min_lr)
        else:
            scheduler = WarmupStepDecay(optimizer, self.steps_per_epoch(), hp.decay_start, hp.decay_every,
                                        hp.decay_factor, hp.warmup_steps, hp.warmup_every)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one training epoch (Lightning steps at an epoch's end even when
        its batches do not fill the last accumulation)."""
        if self.trainer.train_dataloader is None:  # what estimated_stepping_batches does, also for max_steps runs
            self.trainer.fit_loop.setup_data()
        batches = self.trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError("schedule 'step' counts epochs, but the training data has no length; use a loader with "
                             "a length (AudioDataModule's have one) or schedule 'cosine'")
        return math.ceil(batches / self.trainer.accumulate_grad_batches)


def confusion_picture(matrix: torch.Tensor, cell: int = 12) -> np.ndarray:
    """A confusion matrix (rows: true class) as an ``[H, W, 3]`` picture, each row
    normalized by its count."""
    rows = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    picture = colorize(rows.cpu().numpy(), 0.0, 1.0)
    return np.repeat(np.repeat(picture, cell, axis=0), cell, axis=1)
