"""Exporting: ssast-export to transformers' AST (parity, no loading warnings, the round trip
back), to our own format (HubEncoder: save_pretrained / from_pretrained), and finetuning
checkpoints that carry their classifier."""

import json
import logging
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
import transformers  # a [dev] dependency, for the parity tests only
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from finetune.module import Finetune
from ssast import CheckpointError, HubEncoder, load_checkpoint, save_encoder
from ssast.checkpoints import Checkpoint, Preprocessing
from ssast.features import Fbank, Normalize, fit_frames
from ssast.heads import ClassificationHead
from ssast.hub import export_huggingface, main

from helpers import tiny_encoder

FRAMES = 96


def load_cleanly(model_class: type, folder: Path):
    """``model_class.from_pretrained(folder)``, asserting that transformers had nothing to say:
    no missing, unexpected or mismatched weights, no warning logged or raised."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = transformers.logging.get_logger()  # the library's root logger
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, info = model_class.from_pretrained(folder, output_loading_info=True)
    finally:
        logger.removeHandler(handler)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    assert not messages and not caught, messages + [str(warning.message) for warning in caught]
    return model.eval()


def logits_of(checkpoint: Checkpoint, fbank: torch.Tensor) -> torch.Tensor:
    encoder = checkpoint.encoder.eval()
    return checkpoint.head(encoder.pool(encoder(fbank), checkpoint.pooling))


def export(*args: str | Path) -> int:
    """``ssast-export`` with these arguments; its exit status."""
    return main([str(arg) for arg in args])


def trained_head(embed_dim: int, classes: int, seed: int = 1) -> ClassificationHead:
    """A head whose LayerNorm is not the identity, as after training."""
    torch.manual_seed(seed)
    head = ClassificationHead(embed_dim, classes)
    torch.nn.init.normal_(head.norm.weight, 1.0, 0.3)
    torch.nn.init.normal_(head.norm.bias, 0.0, 0.3)
    return head.eval()


# --- transformers ------------------------------------------------------------------------

def test_an_encoder_exports_as_an_ast_model(tmp_path, capsys):
    encoder = tiny_encoder(fstride=10, tstride=10)
    save_encoder(encoder, tmp_path / "encoder.safetensors", Preprocessing(-5.0, 3.0, FRAMES))
    assert export(tmp_path / "encoder.safetensors", tmp_path / "hf", "--format", "hf") == 0
    assert "ASTModel" in capsys.readouterr().out
    assert sorted(path.name for path in (tmp_path / "hf").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((tmp_path / "hf/config.json").read_text())
    assert config["model_type"] == "audio-spectrogram-transformer" and config["architectures"] == ["ASTModel"]
    assert (config["frequency_stride"], config["time_stride"], config["max_length"]) == (10, 10, FRAMES)
    assert "id2label" not in config and "num_labels" not in config
    # The Hub's AST files name the weights as transformers 4 did; transformers 5 reads them.
    assert "encoder.layer.1.attention.attention.query.weight" in load_file(tmp_path / "hf/model.safetensors")

    model = load_cleanly(transformers.ASTModel, tmp_path / "hf")
    fbank = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        assert (model(fbank).last_hidden_state - encoder(fbank)).abs().max() <= 1e-4
        # The feature extractor makes the input our encoders were trained on.
        waveform = 0.1 * torch.randn(16000)
        extractor = transformers.ASTFeatureExtractor.from_pretrained(tmp_path / "hf")
        theirs = extractor(waveform.numpy(), sampling_rate=16000, return_tensors="pt").input_values[0]
        ours = Normalize(-5.0, 3.0)(fit_frames(Fbank()(waveform), FRAMES))
        assert (theirs - ours).abs().max() <= 1e-3

        # And back: the folder loads as a Hugging Face AST, with our preprocessing.
        back = load_checkpoint(tmp_path / "hf")
        assert back.format == "huggingface-ast" and back.head is None and back.labels is None
        assert back.preprocessing == Preprocessing(-5.0, 3.0, FRAMES)
        assert back.encoder.config.replace(layer_norm_eps=1e-6) == encoder.config
        assert (back.encoder.eval()(fbank) - encoder(fbank)).abs().max() <= 1e-5


@pytest.mark.parametrize("labels", [["dog", "rain", "siren"], None])
def test_a_classifier_on_the_leading_tokens_exports_as_ast_for_audio_classification(tmp_path, labels):
    encoder, head = tiny_encoder(fstride=10, tstride=10), trained_head(128, 3)
    checkpoint = Checkpoint(encoder, Preprocessing(-5.0, 3.0, FRAMES), "test", tmp_path, head, "cls", labels)
    export_huggingface(checkpoint, tmp_path / "hf")
    model = load_cleanly(transformers.ASTForAudioClassification, tmp_path / "hf")
    fbank = torch.randn(3, FRAMES, 128)
    with torch.no_grad():
        expected = logits_of(checkpoint, fbank)
        # Within the tolerance even though transformers' classifier LayerNorm takes the
        # encoder's epsilon (1e-6) where ours had 1e-5.
        assert (model(fbank).logits - expected).abs().max() <= 1e-4
        assert model.config.num_labels == 3
        if labels:
            assert model.config.id2label == dict(enumerate(labels)) and model.config.label2id["rain"] == 1
        back = load_checkpoint(tmp_path / "hf")
        assert back.labels == labels and back.pooling == "cls" and back.preprocessing == checkpoint.preprocessing
        assert (logits_of(back, fbank) - expected).abs().max() <= 1e-4


def test_transformers_is_not_needed_to_export():
    code = "import sys, ssast.hub; sys.exit('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize(("changes", "pooling", "reason"), [
    (dict(fshape=128, tshape=2, fstride=128, tstride=1), None, r"128x2 patches \(frame tokens\)"),
    (dict(num_lead_tokens=1), None, "one leading token"),
    (dict(fstride=10, tstride=10), "mean", "a classifier on the mean of the patch tokens.*--no-head"),
])
def test_what_transformers_cannot_hold_is_refused_in_one_line(tmp_path, capsys, changes, pooling, reason):
    encoder = tiny_encoder(**changes)
    if pooling is None:
        save_encoder(encoder, tmp_path / "model.pt")
    else:  # an official SSAST finetuned file: its head reads the mean of the patch tokens
        torch.save({f"module.v.{k}": v for k, v in encoder.state_dict().items()}
                   | {f"module.mlp_head.{i}.{p}": t for i, layer in enumerate(trained_head(128, 4).children())
                      for p, t in layer.state_dict().items()},
                   tmp_path / "model.pt")
    assert export(tmp_path / "model.pt", tmp_path / "hf") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"ssast-export: error: {tmp_path / 'model.pt'}")
    assert "has no transformers equivalent" in error and "--format ssast" in error
    assert re.search(reason, error), error
    assert not (tmp_path / "hf").exists()  # refused before anything was written
    if pooling == "mean":  # the encoder alone has an equivalent
        assert export(tmp_path / "model.pt", tmp_path / "hf", "--no-head") == 0
        model = load_cleanly(transformers.ASTModel, tmp_path / "hf")
        fbank = torch.randn(2, FRAMES, 128)
        with torch.no_grad():
            expected = load_checkpoint(tmp_path / "model.pt").encoder.eval()(fbank)
            assert (model(fbank).last_hidden_state - expected).abs().max() <= 1e-4


# --- our format --------------------------------------------------------------------------

def test_a_frame_model_with_its_classifier_round_trips_through_our_format(tmp_path):
    encoder = tiny_encoder(num_lead_tokens=1, fshape=128, tshape=2, fstride=128, tstride=1)
    head = trained_head(128, 2)
    torch.save({"module.v." + k: v for k, v in encoder.state_dict().items() if k != "mask_embed"}
               | {f"module.mlp_head.{i}.{p}": t for i, layer in enumerate(head.children())
                  for p, t in layer.state_dict().items()}, tmp_path / "frames.pth")
    assert export(tmp_path / "frames.pth", tmp_path / "hf", "--format", "hf") == 2
    assert export(tmp_path / "frames.pth", tmp_path / "ours", "--format", "ssast") == 0
    original = load_checkpoint(tmp_path / "frames.pth")
    fbank = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        model = HubEncoder.from_pretrained(tmp_path / "ours")
        assert torch.equal(model.classify(fbank), logits_of(original, fbank))
        assert torch.equal(model(fbank), original.encoder(fbank)) and model.pooling == "mean"
        back = load_checkpoint(tmp_path / "ours")
        assert back.format == "ssast-encoder" and back.encoder.config == original.encoder.config
        assert back.pooling == "mean" and back.preprocessing == original.preprocessing
        assert torch.equal(logits_of(back, fbank), logits_of(original, fbank))
    assert export(tmp_path / "frames.pth", tmp_path / "bare", "--format", "ssast", "--no-head") == 0
    assert load_checkpoint(tmp_path / "bare").head is None


def test_hub_encoder_save_pretrained_and_from_pretrained(tmp_path):
    encoder, head = tiny_encoder(), trained_head(128, 3)
    model = HubEncoder.from_encoder(encoder, Preprocessing(-6.0, 5.0, FRAMES), head=head, pooling="cls",
                                    labels=["a", "b", "c"])
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model/config.json").read_text())
    assert config["format"] == "ssast-encoder" and config["encoder"] == encoder.config.to_dict()
    assert config["preprocessing"] == {"mean": -6.0, "std": 5.0, "target_length": FRAMES}
    loaded = HubEncoder.from_pretrained(tmp_path / "model")
    fbank = torch.randn(2, FRAMES, 128)
    with torch.no_grad():
        assert torch.equal(loaded(fbank), encoder(fbank))
        assert torch.equal(loaded.classify(fbank), head(encoder.pool(encoder(fbank), "cls")))
        assert torch.equal(loaded.embed(fbank), encoder.pool(encoder(fbank), "cls"))
    assert loaded.labels == ["a", "b", "c"] and loaded.preprocessing == Preprocessing(-6.0, 5.0, FRAMES)
    # The folder is a checkpoint like any other.
    checkpoint = load_checkpoint(tmp_path / "model", input_tdim=128)
    assert checkpoint.labels == ["a", "b", "c"] and checkpoint.encoder.config.input_tdim == 128
    with pytest.raises(ValueError, match="no classifier"):
        HubEncoder.from_encoder(encoder).classify(fbank)

    # A weight gone missing is an error, not a weight left at its random start.
    weights = load_file(tmp_path / "model/model.safetensors")
    del weights["encoder.blocks.1.mlp.fc2.weight"]
    save_file(weights, tmp_path / "model/model.safetensors")
    with pytest.raises(RuntimeError, match="blocks.1.mlp.fc2.weight"):
        HubEncoder.from_pretrained(tmp_path / "model")
    with pytest.raises(CheckpointError, match="missing encoder keys: blocks.1.mlp.fc2.weight"):
        load_checkpoint(tmp_path / "model")


# --- finetuning checkpoints carry their classifier ---------------------------------------

def finetuned(tmp_path: Path, pooling: str, standardize: bool = False) -> tuple[Finetune, Path]:
    """A tiny finetune run of 2 steps through a Lightning Trainer, saved by it."""
    torch.manual_seed(0)
    module = Finetune(num_classes=3, size="mini", fstride=10, tstride=10, input_tdim=48, pooling=pooling,
                      class_names=["dog", "rain", "siren"], warmup_steps=1, lr=1e-3, standardize_embedding=standardize)
    generator = torch.Generator().manual_seed(0)
    batches = DataLoader([{"fbank": torch.randn(2, 48, 128, generator=generator),
                           "labels": torch.randint(0, 3, (2,), generator=generator)} for _ in range(2)],
                         batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    trainer.fit(module, train_dataloaders=batches)
    trainer.save_checkpoint(tmp_path / "finetuned.ckpt")
    return module.eval(), tmp_path / "finetuned.ckpt"


@pytest.mark.parametrize("standardize", [False, True])
def test_a_finetuning_checkpoint_exports_whole(tmp_path, capsys, standardize):
    module, path = finetuned(tmp_path, pooling="cls", standardize=standardize)
    checkpoint = load_checkpoint(path)
    assert checkpoint.format == "ssast-lightning" and checkpoint.labels == ["dog", "rain", "siren"]
    assert checkpoint.pooling == "cls" and checkpoint.head.norm.eps == module.head.norm.eps
    assert checkpoint.head.standardize is None  # a standardized head is read folded into the plain one
    fbank = torch.randn(2, 48, 128)
    with torch.no_grad():
        expected = module(fbank)
        assert (logits_of(checkpoint, fbank) - expected).abs().max() <= (1e-5 if standardize else 0)

        assert export(path, tmp_path / "hf", "--format", "hf") == 0
        assert "ASTForAudioClassification" in capsys.readouterr().out
        model = load_cleanly(transformers.ASTForAudioClassification, tmp_path / "hf")
        assert (model(fbank).logits - expected).abs().max() <= 1e-4
        assert model.config.id2label == {0: "dog", 1: "rain", 2: "siren"}
        back = load_checkpoint(tmp_path / "hf")
        assert back.labels == checkpoint.labels and back.preprocessing == checkpoint.preprocessing
        assert (logits_of(back, fbank) - expected).abs().max() <= 1e-4

    # A checkpoint from before classifiers were recorded loads as an encoder alone, as it did.
    old = torch.load(path, weights_only=True)
    del old["classifier"]
    torch.save(old, tmp_path / "old.ckpt")
    assert load_checkpoint(tmp_path / "old.ckpt").head is None


def test_a_finetuning_checkpoint_with_mean_pooling_exports_its_encoder_or_in_our_format(tmp_path, capsys):
    module, path = finetuned(tmp_path, pooling="mean")
    assert export(path, tmp_path / "hf") == 2 and "--no-head" in capsys.readouterr().err
    assert export(path, tmp_path / "hf", "--no-head") == 0
    fbank = torch.randn(2, 48, 128)
    with torch.no_grad():
        model = load_cleanly(transformers.ASTModel, tmp_path / "hf")
        assert (model(fbank).last_hidden_state - module.encoder(fbank)).abs().max() <= 1e-4
        assert export(path, tmp_path / "ours", "--format", "ssast") == 0
        assert torch.equal(HubEncoder.from_pretrained(tmp_path / "ours").classify(fbank), module(fbank))
