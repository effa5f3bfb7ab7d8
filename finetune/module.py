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
loop (:class:`~ssast.schedules.WarmupStepDecay`) or a warmup + cosine schedule.

Two other protocols are options of the same module. SUPERB, with which SSAST reports keywords
(KS1), speakers (SID) and emotion (ER): ``pooling: layers``, a learnable weighted sum of every
block's output (s3prl's ``-s hidden_states``), a 256-wide projector on each token, their mean,
a linear classifier, Adam at a constant rate. EAT's finetuning (``augment_order: eat``): the
batch mixed with its reverse on the log-mel (``batch_mixup``), SpecAugment filled with 0, label
smoothing, AdamW without weight decay on norms and biases, layer-wise rates, fairseq's cosine.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.transforms as T
from torch.nn.parallel import DistributedDataParallel
from einops import rearrange
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix, MultilabelAveragePrecision

from ssast.augment import batch_mixup, mix_targets, noise_and_roll
from ssast.checkpoints import check_fits, load_checkpoint
from ssast.encoder import LAYOUTS, ASTEncoder, EncoderConfig
from ssast.heads import ClassificationHead, LayerWeights, UtteranceHead
from ssast.train.module import EncoderModule, log_bar_chart
from ssast.optim import build_optimizer, layer_decay_groups, parameter_groups
from ssast.schedules import FairseqCosine, WarmupStepDecay
from ssast.visualize import confusion_matrix_figure, render

Task = Literal["multiclass", "multilabel"]
Loss = Literal["ce", "bce"]
Schedule = Literal["step", "fairseq_cosine", "constant"]
Optimizer = Literal["adam", "adamw"]
AugmentOrder = Literal["ast", "eat"]
FinetunePooling = Literal["mean", "cls", "layers"]
FRAME_SHIFT = 160  # samples per fbank frame: s3prl's downsample rate for SSAST's upstream


def build_encoder(hp: Any) -> ASTEncoder:
    """The encoder a :class:`Finetune` recipe asks for: from ``init_from`` (checked against the
    recipe's size, layout and token shape, adapted to its strides and length) or from scratch."""
    strides = {"fstride": hp.fstride, "tstride": hp.tstride}
    strides = {name: value for name, value in strides.items() if value is not None}
    if hp.init_from is None:
        fshape, tshape = hp.fshape or 16, hp.tshape or 16
        config = EncoderConfig.from_size(
            hp.size or "base", hp.layout or "ast", fshape=fshape, tshape=tshape, fstride=fshape, tstride=tshape,
            input_tdim=hp.input_tdim, drop_path=hp.drop_path,
        )
        return ASTEncoder(config.replace(**strides))
    # Adapted while loading: an ImageNet ViT has no audio grid to adapt from afterwards.
    checkpoint = load_checkpoint(hp.init_from, input_tdim=hp.input_tdim, drop_path=hp.drop_path, **strides)
    wanted = {"fshape": hp.fshape, "tshape": hp.tshape}
    if hp.layout is not None:
        wanted |= {name: value for name, value in LAYOUTS[hp.layout].items() if name != "num_lead_tokens"}
    if hp.size is not None:
        sized = EncoderConfig.from_size(hp.size)
        wanted |= {"embed_dim": sized.embed_dim, "depth": sized.depth}
    check_fits(checkpoint, wanted, "set model.size, model.layout, model.fshape and model.tshape to null to take the "
                                   "checkpoint's, or start from a checkpoint that matches")
    return checkpoint.encoder


class Finetune(EncoderModule):
    """An encoder and a classification head, trained on labeled shards. A batch whose loss is
    NaN or infinite skips its optimizer step (:class:`~ssast.train.module.EncoderModule`).

    Args:
        num_classes: number of classes (linked from the data by the CLI).
        task: ``multiclass`` (accuracy) or ``multilabel`` (mAP).
        init_from: checkpoint to start from (ours, official SSAST, Hugging Face AST, ASiT, or
            an ImageNet ViT/DeiT, adapted as AST does);
            ``None`` trains from scratch (the baseline).
        size: encoder size from scratch (``None``: ``base``); with ``init_from``, ``None``
            or the checkpoint's size, which is checked.
        layout: the encoder's layout from scratch (``None``: ``ast``; ``eat``: EAT's post-norm
            blocks and fixed positions, :data:`~ssast.encoder.LAYOUTS`); with ``init_from``,
            ``None`` or the checkpoint's, which is checked.
        fshape: patch height from scratch (``None``: 16); with ``init_from``, ``None`` or
            the checkpoint's, which is checked.
        tshape: patch width, like ``fshape``.
        fstride: frequency stride (SSAST finetunes patch models at 10, frame models at
            128); ``None`` keeps the checkpoint's (the patch height from scratch).
        tstride: time stride (SSAST: 10 for patch models, 1 for frame models); ``None``
            keeps the checkpoint's (the patch width from scratch).
        input_tdim: frames per clip (linked to the data's ``target_length``).
        pooling: ``mean`` of the final patch tokens (SSAST), ``cls`` (the leading tokens;
            AST, EAT), each read by ``LayerNorm -> Linear``; or ``layers``, SUPERB's: a
            learnable softmax-weighted sum of every block's output, ``Linear(D,
            projector_dim)`` on each token, the mean over the clip's tokens (as s3prl, the
            first ``round(samples / 160)`` of them), a linear classifier.
        projector_dim: ``layers`` only: the projector's width (SUPERB: 256).
        normalize_layers: ``layers`` only: layer-norm each block's output before the weighted
            sum (s3prl's ``Featurizer`` ``normalize``; off in SSAST's SUPERB runs). A pretrained
            pre-norm encoder's block outputs grow with depth, so without it the deep blocks
            dominate the sum and the projector sees another scale than a random encoder's.
        standardize_embedding: standardize each feature the classifier reads over the
            batch, as a linear probe standardizes its features: MAE's linear-probing head,
            ``BatchNorm1d(affine=False, eps=1e-6)`` (running statistics in evaluation), after
            the head's LayerNorm (before the linear layer with ``layers`` pooling). A pretrained
            encoder's embeddings share a large component that every clip has (1.6 to 12.8
            times the spread between clips on the demo corpora, a random encoder's 0.5 to 1.6:
            docs/finetuning.md), which a head trained from random spends its first epochs
            cancelling while the encoder learns from its errors. Checkpoints hold the head
            folded back into ``LayerNorm -> Linear`` (:meth:`ClassificationHead.folded`), so
            it loads and exports as any other.
        drop_path: stochastic depth of the deepest block.
        freeze_encoder: train the head only (a linear probe).
        head_warmup_epochs: LP-FT (Kumar et al., ICLR 2022): for this many epochs first the
            encoder is frozen, as a probe's (eval mode, no gradients), and only the head learns;
            then the whole model trains on, the encoder joining at the schedule's rate of
            that step. The head then starts the finetune reading what the encoder already
            holds instead of pulling the encoder toward a random head (0: off; on the demo
            corpora it cost more than it kept: docs/finetuning.md, "Few labels").
        loss: ``ce`` (cross-entropy) or ``bce`` (binary cross-entropy on each class);
            ``None``: by ``task`` (``ce`` for multiclass).
        label_smoothing: training targets ``(1 - s) y + s / classes`` (EAT's ESC-50: 0.1).
        optimizer: ``adam`` (weight decay added to the gradient, as SSAST's and s3prl's
            ``torch.optim.Adam``) or ``adamw`` (decoupled, as EAT's fairseq Adam).
        lr: learning rate of the encoder's top block (of every block without
            ``layer_decay``).
        head_lr_scale: the head learns ``head_lr_scale`` times faster than ``lr`` (SSAST's
            ``--head_lr``).
        layer_decay: each block down from the top learns ``layer_decay`` times slower; the
            rest of the encoder and the head at ``lr``, as EAT (:func:`ssast.optim.layer_id`).
        weight_decay: the optimizer's weight decay.
        decay_norms_and_biases: whether norms, biases and other 1-D parameters take weight
            decay (SSAST: yes; EAT: no; :func:`ssast.optim.takes_weight_decay`).
        betas: the optimizer's betas.
        schedule: ``step`` (the official SSAST/AST loop: warmup, then the rate multiplied by
            ``lr_decay_factor`` every ``lr_decay_every`` epochs from epoch ``lr_decay_start +
            1``; :class:`~ssast.schedules.WarmupStepDecay`), ``fairseq_cosine`` (fairseq's, as EAT:
            linear warmup from ``min_lr``, then cosine to ``min_lr`` at the run's last step;
            :class:`~ssast.schedules.FairseqCosine`) or ``constant`` (s3prl's SUPERB runs).
        warmup_steps: warmup optimizer steps (0: none).
        warmup_every: ``step`` only: the warmup sets the rate every this many steps (SSAST: 50).
        lr_decay_start: ``step`` only: epochs at the full rate before the first decay
            (``--lrscheduler_start``).
        lr_decay_every: ``step`` only: epochs between decays (``--lrscheduler_step``).
        lr_decay_factor: ``step`` only: the factor of each decay (``--lrscheduler_decay``).
        min_lr: ``fairseq_cosine`` only: the first and the last rate.
        batch_mixup: EAT's mixup of the log-mels: ``α`` of ``λ ~ Beta(α, α)``, one per batch, the
            batch mixed with its reverse (0: off); see :func:`batch_mixup`. Waveform mixup, as
            SSAST/AST, is the data's ``mixup``.
        batch_mixup_prob: the chance a batch is mixed (EAT: 0.9).
        freqm: SpecAugment: widest frequency mask in bins (0: off; EAT: 128 x its ``mask_ratio``).
        timem: SpecAugment: widest time mask in frames (0: off; EAT: frames x ``mask_ratio``).
        mask_value: what the masks fill the normalized log-mel with; ``None``: what a raw 0
            normalizes to, as AST masks before normalizing (EAT masks the normalized log-mel
            with 0).
        noise: add AST's noise and random time roll.
        augment_order: ``ast`` (SpecAugment, then noise: AST's data loader) or ``eat`` (noise in
            the data, then ``batch_mixup`` and SpecAugment in the model, as EAT).
        head_norm_eps: the epsilon of the head's LayerNorm (EAT's ``fc_norm``: 1e-6).
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
        layout: Literal["ast", "eat"] | None = None,
        fshape: int | None = None,
        tshape: int | None = None,
        fstride: int | None = None,
        tstride: int | None = None,
        input_tdim: int = 1024,
        pooling: FinetunePooling = "mean",
        projector_dim: int = 256,
        normalize_layers: bool = False,
        standardize_embedding: bool = False,
        drop_path: float = 0.0,
        freeze_encoder: bool = False,
        head_warmup_epochs: int = 0,
        loss: Loss | None = None,
        label_smoothing: float = 0.0,
        optimizer: Optimizer = "adam",
        lr: float = 1e-4,
        head_lr_scale: float = 1.0,
        layer_decay: float = 1.0,
        weight_decay: float = 5e-7,
        decay_norms_and_biases: bool = True,
        betas: tuple[float, float] = (0.95, 0.999),
        schedule: Schedule = "step",
        warmup_steps: int = 0,
        warmup_every: int = 1,
        lr_decay_start: int = 10,
        lr_decay_every: int = 5,
        lr_decay_factor: float = 0.5,
        min_lr: float = 1e-6,
        batch_mixup: float = 0.0,
        batch_mixup_prob: float = 1.0,
        freqm: float = 0,
        timem: float = 0,
        mask_value: float | None = None,
        noise: bool = False,
        augment_order: AugmentOrder = "ast",
        head_norm_eps: float = 1e-5,
        class_names: list[str] | None = None,
        max_nonfinite_steps: int = 20,
    ) -> None:
        if schedule not in get_args(Schedule):
            raise ValueError(f"model.schedule must be one of {', '.join(get_args(Schedule))}, got {schedule!r}")
        if min(lr, head_lr_scale, weight_decay, warmup_steps, head_warmup_epochs) < 0:
            raise ValueError(f"model: lr ({lr}), head_lr_scale ({head_lr_scale}), weight_decay ({weight_decay}), "
                             f"warmup_steps ({warmup_steps}) and head_warmup_epochs ({head_warmup_epochs}) cannot be "
                             "negative")
        if normalize_layers and pooling != "layers":
            raise ValueError(f"model.normalize_layers normalizes the blocks that pooling 'layers' weighs; pooling is "
                             f"{pooling!r}")
        if not 0 < layer_decay <= 1:
            raise ValueError(f"model.layer_decay must be in (0, 1], got {layer_decay}")
        super().__init__(max_nonfinite_steps)
        self.save_hyperparameters()
        self.encoder = build_encoder(self.hparams)
        if pooling == "layers":
            self.layer_weights = LayerWeights(self.encoder.config.depth, normalize_layers)
            self.head = UtteranceHead(self.encoder.embed_dim, num_classes, projector_dim, standardize_embedding)
        else:
            self.layer_weights = None
            self.head = ClassificationHead(self.encoder.embed_dim, num_classes, head_norm_eps, standardize_embedding)
        self._train_encoder(not freeze_encoder)  # a head warm-up freezes it epoch by epoch, once DDP holds it
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

    def _train_encoder(self, trainable: bool) -> None:
        self.encoder.requires_grad_(trainable)
        # Unused here (a DDP run would wait for their gradients): MSPM's mask token, and the
        # final norm when the head reads the blocks' outputs.
        self.encoder.mask_embed.requires_grad_(False)
        if self.hparams.pooling == "layers":
            self.encoder.norm.requires_grad_(False)

    @property
    def encoder_frozen(self) -> bool:
        """Whether the encoder is a probe's this epoch (``freeze_encoder``, or LP-FT's head warm-up)."""
        return self.hparams.freeze_encoder or self.current_epoch < self.hparams.head_warmup_epochs

    def exported_classifier(self) -> dict[str, Any]:
        # Checkpoints carry the head, its pooling and class names: load_checkpoint reads the
        # finetuned model back whole, and ssast-export publishes it. A head on weighted layers
        # is not one of the formats those read: such checkpoints export the encoder alone. A
        # standardized head is read back folded into the plain one (ClassificationHead.folded).
        if self.layer_weights is not None:
            return {}
        return {"head": self.head, "head_attribute": "head", "pooling": self.hparams.pooling,
                "labels": self.hparams.class_names}

    def forward(self, fbank: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of normalized log-mels ``[B, T, F]`` (``lengths``: the
        clips' samples, which ``layers`` pooling averages over)."""
        return self.classify(self.embed(fbank, lengths))

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """Logits of clip embeddings (:meth:`embed`)."""
        return self.head.classify(embedding) if self.layer_weights is not None else self.head(embedding)

    def embed(self, fbank: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Clip embeddings: the encoder's pooled tokens ``[B, D]``, or with ``layers`` pooling
        the mean of the projected weighted tokens ``[B, projector_dim]``."""
        if self.layer_weights is None:
            return self.encoder.pool(self.encoder(fbank), self.hparams.pooling)
        tokens = self.layer_weights(self.encoder.hidden_states(fbank))
        valid = None if lengths is None else torch.round(lengths.to(tokens.device).float() / FRAME_SHIFT)
        return self.head.pool(tokens, valid)

    # --- training -------------------------------------------------------------------

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        if self.hparams.task == "multiclass":
            return F.one_hot(labels, self.hparams.num_classes).float()
        return labels.float()

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Cross-entropy on target probabilities: the official loop's CE on the argmax of
        # one-hot labels where nothing is mixed or smoothed.
        if self.loss_name == "ce":
            return F.cross_entropy(logits.float(), targets)
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    def _mask_fill(self) -> float:
        """The masks' value: ``mask_value``, or what a raw log-mel of 0 (AST's mask value)
        becomes after normalization."""
        if self.hparams.mask_value is not None:
            return self.hparams.mask_value
        datamodule = self.attached_datamodule()
        normalize = datamodule.normalize if datamodule is not None else None
        return float(normalize(torch.zeros(()))) if normalize is not None else 0.0

    def _spec_augment(self, fbank: torch.Tensor) -> torch.Tensor:
        if self.freq_masking is None and self.time_masking is None:
            return fbank
        image = rearrange(fbank, "b t f -> b 1 f t")
        fill = self._mask_fill()
        for masking in (self.freq_masking, self.time_masking):
            if masking is not None:
                image = masking(image, mask_value=fill)
        return rearrange(image, "b 1 f t -> b t f")

    def augment(self, fbank: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training augmentations after the data's (waveform mixup, roll and gain), in the
        recipe's order: AST's SpecAugment then noise, or EAT's noise, batch mixup, SpecAugment."""
        hp = self.hparams
        if hp.augment_order == "ast":
            fbank = self._spec_augment(fbank)
            return (noise_and_roll(fbank) if hp.noise else fbank), targets
        if hp.noise:
            fbank = noise_and_roll(fbank)
        fbank, targets = batch_mixup(fbank, targets, hp.batch_mixup, hp.batch_mixup_prob)
        return self._spec_augment(fbank), targets

    def on_train_start(self) -> None:
        wrapped = self.trainer.strategy.model
        if self.hparams.head_warmup_epochs and self.trainer.world_size > 1 and not (
                isinstance(wrapped, DistributedDataParallel) and wrapped.find_unused_parameters):
            raise ValueError("model.head_warmup_epochs leaves the encoder without gradients for a while, which DDP "
                             "allows only with --trainer.strategy ddp_find_unused_parameters_true")

    def on_train_epoch_start(self) -> None:
        self._train_encoder(not self.encoder_frozen)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.encoder_frozen:
            self.encoder.eval()
        targets = self._targets(batch["labels"])
        if self.hparams.label_smoothing:
            targets = targets * (1 - self.hparams.label_smoothing) + self.hparams.label_smoothing / targets.shape[1]
        if "mix_lambda" in batch:
            targets = mix_targets(targets, batch["mix_partner"], batch["mix_lambda"])
        fbank, targets = self.augment(batch["fbank"], targets)
        loss = self._loss(self(fbank, batch.get("lengths")), targets)
        self.train_loss.update(loss.detach(), len(fbank))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(fbank))
        # The epoch's mean, the official result.csv's train_loss.
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True, batch_size=len(fbank))
        return loss

    def _evaluate(self, batch: dict, loss_metric: MeanMetric, metric, stage: str) -> None:
        logits = self(batch["fbank"], batch.get("lengths"))
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

    def on_train_end(self) -> None:
        if self.layer_weights is not None and self.trainer.is_global_zero:
            weights = self.layer_weights.probabilities.tolist()
            log_bar_chart(self, "layer_weights", [f"block {index}" for index in range(1, len(weights) + 1)], weights,
                          title="learned weight of each block's output")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Any]:
        embeddings = self.embed(batch["fbank"], batch.get("lengths"))
        logits = self.classify(embeddings)
        scores = logits.sigmoid() if self.hparams.task == "multilabel" else logits.softmax(dim=-1)
        return {"key": batch["key"], "scores": scores.float().cpu(), "embeddings": embeddings.float().cpu()}

    # --- optimization ---------------------------------------------------------------

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        # Named groups: LearningRateMonitor logs each by name and history.csv reads "head".
        rates = layer_decay_groups(self.encoder.config.depth, hp.layer_decay, ("head.", "layer_weights."),
                                   hp.head_lr_scale)
        groups = parameter_groups(self, hp.lr, hp.weight_decay, hp.decay_norms_and_biases, rates)
        optimizer = build_optimizer(hp.optimizer, groups, hp.lr, hp.betas)
        if hp.schedule == "fairseq_cosine":
            scheduler = FairseqCosine(optimizer, hp.warmup_steps, int(self.trainer.estimated_stepping_batches),
                                      hp.min_lr, peak_lr=hp.lr)
        elif hp.schedule == "constant":
            scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        else:
            steps_per_epoch = self.steps_per_epoch()
            if steps_per_epoch is None:
                raise ValueError("schedule 'step' counts epochs, but the training data has no length; use a loader "
                                 "with a length (AudioDataModule's have one) or schedule 'fairseq_cosine'")
            scheduler = WarmupStepDecay(optimizer, steps_per_epoch, hp.lr_decay_start, hp.lr_decay_every,
                                        hp.lr_decay_factor, hp.warmup_steps, hp.warmup_every)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def confusion_picture(matrix: torch.Tensor) -> np.ndarray:
    """A confusion matrix (rows: true class) as an ``[H, W, 3]`` picture, each row
    normalized by its count."""
    rows = matrix.float() / matrix.sum(dim=1, keepdim=True).clamp_min(1)
    return render(confusion_matrix_figure(rows.cpu().numpy()))
