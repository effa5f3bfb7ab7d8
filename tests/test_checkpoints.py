"""Loading encoders from our files, official SSAST, Hugging Face AST and ASiT."""

import argparse
import json
import os
import re

import pytest
import torch
import transformers  # a [dev] dependency, for the parity tests only
from safetensors import safe_open

import ssast
from pretrain.asit import ASiT
from ssast import CheckpointError, load_checkpoint, load_encoder, save_encoder
from ssast.checkpoints import Preprocessing, lightning_metadata
from ssast.encoder import ASTEncoder
from ssast.positions import adapt_pos_embed
from ssast.masking import GmmlOptions

from helpers import hf_config, ssast_state, tiny_encoder


def same_outputs(a: ASTEncoder, b: ASTEncoder, atol: float = 1e-5) -> bool:
    x = torch.randn(2, a.config.input_tdim, 128)
    return torch.allclose(a(x), b(x), atol=atol)


# --- Hugging Face ---------------------------------------------------------------------

def test_huggingface_folder_gives_the_same_last_hidden_state(tmp_path):
    torch.manual_seed(0)
    model = transformers.ASTModel(hf_config()).eval()
    model.save_pretrained(tmp_path / "ast")
    checkpoint = load_checkpoint(tmp_path / "ast")
    assert checkpoint.format == "huggingface-ast" and checkpoint.head is None and checkpoint.pooling == "cls"
    assert checkpoint.encoder.config.grid == (12, 9)
    x = torch.randn(2, 100, 128)
    with torch.no_grad():
        expected = model(x).last_hidden_state
        actual = checkpoint.encoder.eval()(x)
    assert (actual - expected).abs().max() <= 1e-4


def v4_names(state: dict) -> dict:
    """Transformers 5 parameter names back to the transformers 4 names of the Hub files."""
    rules = [(r"layers\.(\d+)\.attention\.q_proj\.", r"encoder.layer.\1.attention.attention.query."),
             (r"layers\.(\d+)\.attention\.k_proj\.", r"encoder.layer.\1.attention.attention.key."),
             (r"layers\.(\d+)\.attention\.v_proj\.", r"encoder.layer.\1.attention.attention.value."),
             (r"layers\.(\d+)\.attention\.o_proj\.", r"encoder.layer.\1.attention.output.dense."),
             (r"layers\.(\d+)\.mlp\.fc1\.", r"encoder.layer.\1.intermediate.dense."),
             (r"layers\.(\d+)\.mlp\.fc2\.", r"encoder.layer.\1.output.dense."),
             (r"layers\.(\d+)\.layernorm_", r"encoder.layer.\1.layernorm_")]
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("names", ["v5", "v4"])
def test_huggingface_classifier_and_bare_state_dicts(tmp_path, names):
    torch.manual_seed(1)
    model = transformers.ASTForAudioClassification(hf_config(num_labels=5)).eval()
    state = model.state_dict() if names == "v5" else v4_names(model.state_dict())
    torch.save(state, tmp_path / "bare.bin")
    # A bare state dict records neither the input length (96 to 105 frames all make 9
    # patches) nor the number of heads (read as embed_dim / 64, as in every released AST).
    assert load_checkpoint(tmp_path / "bare.bin").encoder.config.input_tdim == 96
    checkpoint = load_checkpoint(tmp_path / "bare.bin", input_tdim=100, num_heads=2)
    assert checkpoint.encoder.config.grid == (12, 9) and checkpoint.head.num_classes == 5
    x = torch.randn(3, 100, 128)
    with torch.no_grad():
        tokens = checkpoint.encoder.eval()(x)
        logits = checkpoint.head(checkpoint.encoder.pool(tokens, checkpoint.pooling))
        assert (logits - model(x).logits).abs().max() <= 1e-4


def test_huggingface_folder_keeps_labels_and_feature_extractor_stats(tmp_path):
    config = hf_config(num_labels=3, id2label={0: "dog", 1: "cat", 2: "bird"}, label2id={"dog": 0, "cat": 1, "bird": 2})
    transformers.ASTForAudioClassification(config).save_pretrained(tmp_path / "ast")
    transformers.ASTFeatureExtractor(mean=-5.0, std=3.0, max_length=100).save_pretrained(tmp_path / "ast")
    checkpoint = load_checkpoint(tmp_path / "ast")
    assert checkpoint.labels == ["dog", "cat", "bird"]
    assert checkpoint.preprocessing == Preprocessing(-5.0, 3.0, 100)


# --- official SSAST -------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["module.", ""])
@pytest.mark.parametrize("frame", [False, True])
def test_official_ssast_pretrained(tmp_path, prefix, frame):
    shape = dict(fshape=128, tshape=2, fstride=128, tstride=2) if frame else {}
    encoder = tiny_encoder(**shape)
    state = {k.replace("module.", prefix, 1): v for k, v in ssast_state(encoder).items()}
    torch.save(state, tmp_path / "ssast.pth")
    checkpoint = load_checkpoint(tmp_path / "ssast.pth")
    assert checkpoint.format == "ssast-official" and checkpoint.head is None
    assert checkpoint.encoder.config == encoder.config
    assert torch.equal(checkpoint.encoder.mask_embed, encoder.mask_embed)
    assert sorted(checkpoint.extra) == sorted(k.removeprefix("module.") for k in state if "predlayer" in k)
    assert same_outputs(checkpoint.encoder.eval(), encoder)
    # Round trip through our own format.
    save_encoder(checkpoint.encoder, tmp_path / "ours.pt")
    assert same_outputs(load_encoder(tmp_path / "ours.pt").eval(), encoder)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_official_ssast_finetuned_loads_where_the_official_loader_fails(tmp_path, prefix):
    encoder = tiny_encoder(fstride=10, tstride=10)  # SSAST finetunes patch models at stride 10
    state = {k.replace("module.", prefix, 1): v for k, v in ssast_state(encoder, finetuned=True).items()}
    torch.save(state, tmp_path / "finetuned.pth")
    checkpoint = load_checkpoint(tmp_path / "finetuned.pth")
    assert checkpoint.encoder.config.grid == encoder.config.grid and checkpoint.encoder.config.fstride == 10
    assert same_outputs(checkpoint.encoder.eval(), encoder)
    assert torch.equal(checkpoint.head.linear.weight, state[f"{prefix}mlp_head.1.weight"])
    assert checkpoint.pooling == "mean"


def test_overrides_adapt_the_position_embedding(tmp_path):
    encoder = tiny_encoder()  # 16x16 patches at stride 16, 96 frames: grid 8 x 6
    torch.save(ssast_state(encoder), tmp_path / "ssast.pth")
    adapted = load_encoder(tmp_path / "ssast.pth", fstride=10, tstride=10, input_tdim=200, drop_path=0.1)
    assert adapted.config.grid == (12, 19) and adapted.config.drop_path == 0.1
    expected = adapt_pos_embed(encoder.pos_embed.data, 2, (8, 6), (12, 19))
    assert torch.equal(adapted.pos_embed.data, expected)
    assert torch.equal(adapted.patch_embed.proj.weight, encoder.patch_embed.proj.weight)
    assert load_checkpoint(tmp_path / "ssast.pth", input_tdim=200).preprocessing.target_length == 200
    with pytest.raises(TypeError, match="embed_dim"):
        load_encoder(tmp_path / "ssast.pth", embed_dim=64)


# --- ASiT -----------------------------------------------------------------------------

def test_asit_teacher_with_its_saved_options(tmp_path):
    encoder = tiny_encoder(num_lead_tokens=1)
    teacher = {f"backbone.{k}": v for k, v in encoder.state_dict().items() if k != "mask_embed"}
    teacher["head.mlp.0.weight"] = torch.randn(8, 128)
    student = {f"module.{k}": torch.zeros_like(v) for k, v in teacher.items()}
    torch.save({"student": student, "teacher": teacher, "epoch": 99, "args": argparse.Namespace(lr=5e-4)},
               tmp_path / "asit.pt")
    checkpoint = load_checkpoint(tmp_path / "asit.pt")
    assert checkpoint.format == "asit" and checkpoint.encoder.num_lead_tokens == 1
    assert checkpoint.encoder.config.grid == encoder.config.grid
    assert same_outputs(checkpoint.encoder.eval(), encoder)
    assert "head.mlp.0.weight" in checkpoint.extra


# --- our own files and errors -----------------------------------------------------------

@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_export_round_trip(tmp_path, suffix):
    encoder = tiny_encoder(num_lead_tokens=1, fshape=128, tshape=2, fstride=128, tstride=1)
    save_encoder(encoder, tmp_path / f"enc{suffix}", Preprocessing(-6.0, 5.0, 96))
    checkpoint = load_checkpoint(tmp_path / f"enc{suffix}")
    assert checkpoint.format == "ssast-encoder" and checkpoint.encoder.config == encoder.config
    assert checkpoint.preprocessing == Preprocessing(-6.0, 5.0, 96)
    assert same_outputs(checkpoint.encoder.eval(), encoder, atol=0)


def test_lightning_checkpoint(tmp_path):
    encoder = tiny_encoder()
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state["generative_head.weight"] = torch.randn(3, 3)
    torch.save({"state_dict": state, "encoder_config": encoder.config.to_dict(), "epoch": 3}, tmp_path / "last.ckpt")
    checkpoint = load_checkpoint(tmp_path / "last.ckpt")
    assert checkpoint.format == "ssast-lightning" and same_outputs(checkpoint.encoder.eval(), encoder, atol=0)


def test_an_asit_export_records_the_teacher_it_holds(tmp_path):
    """ASiT's teacher sees views shorter than the data's clips: what a run writes of it, the
    exported file and the Lightning checkpoint, records the teacher's input length."""
    model = ASiT(size="mini", input_tdim=64, view_frames=48, cls_prototypes=32, patch_prototypes=16, head_hidden_dim=32,
                 head_bottleneck_dim=16, num_lead_tokens=1, gmml=GmmlOptions(align=16))
    teacher = model.exported_encoder
    assert model.exported == "teacher" and teacher.config.input_tdim == 48
    clips = Preprocessing(-6.0, 5.0, target_length=64)  # what the data module hands the writers
    save_encoder(teacher, tmp_path / "encoder.safetensors", clips)
    with safe_open(tmp_path / "encoder.safetensors", framework="pt") as handle:
        recorded = json.loads(handle.metadata()["preprocessing"])
    assert recorded == {"mean": -6.0, "std": 5.0, "target_length": 48}
    run = {"state_dict": model.state_dict(), **lightning_metadata(teacher, model.exported, clips)}
    torch.save(run, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["preprocessing"]["target_length"] == 48
    for path in (tmp_path / "encoder.safetensors", tmp_path / "last.ckpt"):
        assert ssast.load_encoder(path).config == teacher.config


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": RunsCode()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_encoder(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_errors_name_the_file_the_format_and_the_keys(tmp_path):
    encoder = tiny_encoder()
    state = ssast_state(encoder)
    missing = {k: v for k, v in state.items() if k != "module.v.blocks.1.mlp.fc2.weight"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing.pth \(ssast-official\): missing encoder keys: blocks.1.mlp.fc2.weight"):
        load_encoder(tmp_path / "missing.pth")
    wrong = dict(state, **{"module.v.norm.weight": torch.ones(7)})
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"shapes do not fit: norm.weight"):
        load_encoder(tmp_path / "wrong.pth")
    extra = dict(state, **{"module.something_else": torch.ones(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected keys: something_else"):
        load_encoder(tmp_path / "extra.pth")
    torch.save({"weights": torch.ones(3), "epoch": 1}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth \(unknown\).*epoch, weights"):
        load_encoder(tmp_path / "other.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        load_encoder(tmp_path / "garbage.pth")
    with pytest.raises(FileNotFoundError):
        load_encoder(tmp_path / "nowhere.pth")
