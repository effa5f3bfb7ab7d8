"""Publishing encoders: as a transformers AST, and in this project's own format through the
Hugging Face Hub.

``ssast-export CHECKPOINT DIR --format hf`` writes a folder that transformers'
``ASTForAudioClassification`` (or ``ASTModel``, without a classifier) loads with no warning:
``config.json``, ``model.safetensors`` under the names of the Hub's AST files (transformers
4's, which transformers 5 reads too) and ``preprocessor_config.json`` for its
``ASTFeatureExtractor``, whose Kaldi fbank, zero padding and ``(x - mean) / (2 std)`` are
ours. The files are written here: transformers is not needed to export (it is a dev-only
dependency).

transformers' AST is one of our geometries with fixed choices: square patches, two leading
tokens (cls and distillation), a classifier on the mean of those two, pre-norm blocks with
learned positions. What lies outside them has no transformers equivalent and is refused in
one line (:class:`CheckpointError`): frame tokens (128x2 patches), a single leading token,
EAT's layout (post-norm blocks, a fixed sin-cos table), a classifier trained on the mean of
the patch tokens (``--no-head`` exports its encoder alone, as ``ASTModel``). Such models
export in our format, ``--format ssast``: a ``save_pretrained`` folder of
:class:`HubEncoder` (huggingface_hub's ``PyTorchModelHubMixin``), which
``HubEncoder.from_pretrained`` and ``ssast.load_checkpoint`` read and ``push_to_hub``
publishes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_file
from torch import nn

from ssast.audio import SAMPLE_RATE
from ssast.checkpoints import (
    OUR_FORMAT, Checkpoint, CheckpointError, Preprocessing, classifier_record, load_checkpoint,
    to_huggingface_state,
)
from ssast.encoder import ASTEncoder, EncoderConfig, Pooling
from ssast.heads import ClassificationHead

log = logging.getLogger(__name__)

HF_MODEL_TYPE = "audio-spectrogram-transformer"
FORMATS = ("hf", "ssast")


# --- transformers ----------------------------------------------------------------------


def huggingface_gaps(config: EncoderConfig, classifier_pooling: Pooling | None = None) -> list[str]:
    """What of an encoder of ``config`` (with a classifier reading ``classifier_pooling``,
    when it has one) transformers' AST cannot hold; empty when it exports."""
    gaps = []
    if config.fshape != config.tshape:
        kind = "frame tokens" if config.fshape == config.input_fdim else "non-square patches"
        gaps.append(f"{config.fshape}x{config.tshape} patches ({kind}): transformers' AST cuts square patches only")
    if (config.block_norm, config.embed_norm, config.final_norm) != ("pre", False, True):
        gaps.append("post-norm blocks after a norm over the embeddings and no final norm (EAT's layout): transformers' "
                    "AST has pre-norm blocks and a final norm")
    if config.positions != "learned":
        gaps.append("a fixed sin-cos position table with none on the cls token: transformers' AST learns one "
                    "position embedding for every token")
    if config.num_lead_tokens != 2:
        gaps.append("one leading token: transformers' AST always has two (cls and distillation)")
    if classifier_pooling == "mean":
        gaps.append("a classifier on the mean of the patch tokens: transformers' ASTForAudioClassification reads "
                    "the mean of the cls and distillation tokens (--no-head exports the encoder alone, as ASTModel)")
    return gaps


def huggingface_config(checkpoint: Checkpoint, head: bool = True) -> dict[str, Any]:
    """The ``config.json`` of ``checkpoint`` as a transformers ``ASTConfig``: of an
    ``ASTForAudioClassification`` when ``head`` and the checkpoint has a classifier, else of
    an ``ASTModel``."""
    config = checkpoint.encoder.config
    classifier = checkpoint.head if head else None
    hf_config: dict[str, Any] = {
        "architectures": ["ASTForAudioClassification" if classifier is not None else "ASTModel"],
        "model_type": HF_MODEL_TYPE,
        "hidden_size": config.embed_dim,
        "num_hidden_layers": config.depth,
        "num_attention_heads": config.num_heads,
        "intermediate_size": int(config.embed_dim * config.mlp_ratio),  # as ssast.encoder.Mlp
        "hidden_act": "gelu",  # the exact (erf) GELU, as nn.GELU()
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": config.layer_norm_eps,
        "qkv_bias": config.qkv_bias,
        "patch_size": config.fshape,
        "frequency_stride": config.fstride,
        "time_stride": config.tstride,
        "max_length": config.input_tdim,
        "num_mel_bins": config.input_fdim,
    }
    if classifier is not None:
        labels = checkpoint.labels
        if labels is None:  # transformers names them LABEL_0, ...; the file keeps saying there are none
            hf_config["num_labels"] = classifier.num_classes
        elif len(set(labels)) != len(labels):
            raise ValueError(f"the class names repeat, which transformers' label2id cannot hold: {labels}")
        else:
            hf_config["id2label"] = {str(index): label for index, label in enumerate(labels)}
            hf_config["label2id"] = {label: index for index, label in enumerate(labels)}
    return hf_config


def feature_extractor_config(preprocessing: Preprocessing, num_mel_bins: int = 128) -> dict[str, Any]:
    """The ``preprocessor_config.json`` of a transformers ``ASTFeatureExtractor`` that makes the
    input our encoder was trained on: Kaldi fbank at 16 kHz, zero-padded or cut to the target
    length, normalized as ``(x - mean) / (2 std)`` with our statistics."""
    return {
        "feature_extractor_type": "ASTFeatureExtractor",
        "feature_size": 1,
        "sampling_rate": SAMPLE_RATE,
        "num_mel_bins": num_mel_bins,
        "max_length": preprocessing.target_length,
        "padding_value": 0.0,
        "padding_side": "right",
        "do_normalize": True,
        "mean": preprocessing.mean,
        "std": preprocessing.std,
        "return_attention_mask": False,
    }


def export_huggingface(checkpoint: Checkpoint, directory: str | Path, *, head: bool = True) -> Path:
    """Write ``checkpoint`` into ``directory`` as a transformers AST: ``config.json``,
    ``model.safetensors`` and ``preprocessor_config.json``; files of those names are replaced.

    With its classifier (when it has one and ``head``) it is an ``ASTForAudioClassification``
    with the checkpoint's labels, else an ``ASTModel``. Raises :class:`CheckpointError` when the
    geometry has no transformers equivalent (:func:`huggingface_gaps`).

    transformers gives the classifier's LayerNorm the encoder's epsilon; ours may have had
    another (``ClassificationHead``'s 1e-5 against the encoder's 1e-6). The logits move by about
    ``(eps_head - eps_encoder) / (2 var)`` of themselves, ``var`` the variance of the pooled
    embedding's features: ~1e-6 for a trained model, well inside float32 noise.
    """
    classifier = checkpoint.head if head else None
    gaps = huggingface_gaps(checkpoint.encoder.config, checkpoint.pooling if classifier is not None else None)
    if gaps:
        raise CheckpointError(checkpoint.path, checkpoint.format,
                              f"has no transformers equivalent: {'; '.join(gaps)}; export it with --format ssast")
    hf_config = huggingface_config(checkpoint, head)
    encoder_eps = checkpoint.encoder.config.layer_norm_eps
    if classifier is not None and classifier.norm.eps != encoder_eps:
        log.info("the classifier's LayerNorm epsilon becomes the encoder's, %g (was %g): transformers has one for both",
                 encoder_eps, classifier.norm.eps)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(to_huggingface_state(checkpoint.encoder, classifier), str(directory / "model.safetensors"),
              metadata={"format": "pt"})  # what transformers' own files say: PyTorch tensors
    _write_json(directory / "config.json", hf_config)
    extractor = feature_extractor_config(checkpoint.preprocessing, checkpoint.encoder.config.input_fdim)
    _write_json(directory / "preprocessor_config.json", extractor)
    return directory


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2) + "\n")


# --- our format, through the Hub -------------------------------------------------------


class HubEncoder(nn.Module, PyTorchModelHubMixin, library_name="ssast", tags=["audio", "ssast"]):
    """An encoder with the preprocessing it was trained on and, when finetuned, its classifier,
    that ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` (huggingface_hub's
    ``PyTorchModelHubMixin``) move as a folder: ``config.json`` and ``model.safetensors``
    (``encoder.*``, ``head.*``). The folder also loads through ``ssast.load_checkpoint``
    (format ``ssast-encoder``). Any geometry travels, frame tokens and one leading token too.

    ``forward(fbank [B, T, F])`` gives the encoder's tokens, as :class:`ASTEncoder`;
    :meth:`embed` the clip embedding, :meth:`classify` the classifier's logits.

    Make one with :meth:`from_checkpoint` or :meth:`from_encoder`; ``HubEncoder(config)`` builds
    the modules of a ``config`` (``from_pretrained`` then fills their weights).

    Args:
        config: ``format`` (``ssast-encoder``), ``encoder`` (``EncoderConfig.to_dict()``),
            ``preprocessing`` (mean, std, target_length), ``pooling`` (``mean`` or ``cls``: of
            the clip embedding, and what the classifier reads) and ``classifier``
            (``num_classes``, ``labels``, ``layer_norm_eps``) or ``None``.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if config.get("format") != OUR_FORMAT:
            raise ValueError(f"not the config of a HubEncoder: its format is {config.get('format')!r}, "
                             f"not {OUR_FORMAT!r}")
        self.encoder = ASTEncoder(EncoderConfig(**config["encoder"]))
        self.preprocessing = Preprocessing(**config["preprocessing"])
        self.pooling: Pooling = config.get("pooling", "mean")
        classifier = config.get("classifier")
        self.head = None
        self.labels: list[str] | None = None
        if classifier is not None:
            self.head = ClassificationHead(self.encoder.embed_dim, classifier["num_classes"],
                                           classifier["layer_norm_eps"])
            self.labels = classifier.get("labels")

    @classmethod
    def from_encoder(
        cls,
        encoder: ASTEncoder,
        preprocessing: Preprocessing | None = None,
        *,
        head: ClassificationHead | None = None,
        pooling: Pooling = "mean",
        labels: list[str] | None = None,
    ) -> HubEncoder:
        """A copy of ``encoder`` (and of its classifier ``head``, which reads ``pooling``) with
        the ``preprocessing`` it was trained on (AudioSet's statistics and its input length
        when not given)."""
        preprocessing = (preprocessing or Preprocessing()).for_encoder(encoder.config)
        classifier = None if head is None else classifier_record(head, labels)
        config = {"format": OUR_FORMAT, "version": 1, "encoder": encoder.config.to_dict(),
                  "preprocessing": dict(preprocessing.__dict__), "pooling": pooling, "classifier": classifier}
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        if head is not None:
            model.head.load_state_dict(head.state_dict())
        return model.eval()

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, head: bool = True) -> HubEncoder:
        """The model of a loaded checkpoint (``ssast.load_checkpoint``): its encoder,
        preprocessing, pooling and, unless ``head`` is false, its classifier and labels."""
        classifier = checkpoint.head if head else None
        labels = checkpoint.labels if classifier is not None else None
        return cls.from_encoder(checkpoint.encoder, checkpoint.preprocessing, head=classifier,
                                pooling=checkpoint.pooling, labels=labels)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> HubEncoder:
        """A model saved by ``save_pretrained`` (a folder, or a Hub repository id; see
        huggingface_hub's ``ModelHubMixin.from_pretrained`` for the download options). Loads
        strictly unless ``strict=False`` is passed: the mixin's default would leave a missing
        weight at its random start without a word."""
        kwargs.setdefault("strict", True)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Every token after the final norm, ``[B, lead + N, D]``, of normalized log-mels ``[B, T, F]``."""
        return self.encoder(fbank)

    def embed(self, fbank: torch.Tensor) -> torch.Tensor:
        """Clip embeddings ``[B, D]``: the tokens pooled as the model was trained (``pooling``)."""
        return self.encoder.pool(self.encoder(fbank), self.pooling)

    def classify(self, fbank: torch.Tensor) -> torch.Tensor:
        """The classifier's logits ``[B, classes]``."""
        if self.head is None:
            raise ValueError("this model has no classifier: it was saved from an encoder alone")
        return self.head(self.embed(fbank))


def export_ssast(checkpoint: Checkpoint, directory: str | Path, *, head: bool = True) -> Path:
    """Write ``checkpoint`` into ``directory`` in our format, a :class:`HubEncoder` folder
    (``config.json``, ``model.safetensors``, a model card ``README.md``); any geometry."""
    HubEncoder.from_checkpoint(checkpoint, head=head).save_pretrained(directory)
    return Path(directory)


# --- the command -----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssast-export",
        description="Export a checkpoint (anything ssast.load_checkpoint reads) as a transformers AST folder "
                    "(--format hf) or as this project's save_pretrained folder (--format ssast), ready for "
                    "`hf upload`.",
    )
    parser.add_argument("checkpoint", help="the checkpoint: ours, a finetuning run's .ckpt, official SSAST, "
                                           "Hugging Face AST, ASiT")
    parser.add_argument("directory", help="the folder to write (made if missing; files of the same names are replaced)")
    parser.add_argument("--format", choices=FORMATS, default="hf",
                        help="hf: transformers' ASTForAudioClassification / ASTModel (square patches, two leading "
                             "tokens, a classifier on them); ssast: our format, any geometry (default: hf)")
    parser.add_argument("--no-head", action="store_true",
                        help="export the encoder alone, without the checkpoint's classifier")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ssast-export: %(message)s")
    try:
        checkpoint = load_checkpoint(args.checkpoint)
        if args.format == "hf":
            directory = export_huggingface(checkpoint, args.directory, head=not args.no_head)
        else:
            directory = export_ssast(checkpoint, args.directory, head=not args.no_head)
    except (CheckpointError, FileNotFoundError, ValueError) as error:
        print(f"ssast-export: error: {error}", file=sys.stderr)
        return 2
    config = checkpoint.encoder.config
    head = checkpoint.head if not args.no_head else None
    what = ("ASTForAudioClassification" if head is not None else "ASTModel") if args.format == "hf" else "HubEncoder"
    classes = f", {head.num_classes} classes on {checkpoint.pooling} pooling" if head is not None else ""
    print(f"{directory}: {what} ({config.embed_dim} wide, {config.depth} blocks, {config.fshape}x{config.tshape} "
          f"tokens at stride {config.fstride}x{config.tstride}, {config.input_tdim} frames{classes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
