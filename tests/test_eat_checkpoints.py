"""EAT's released weights (``ssast.checkpoints.eat``) against a transcription of EAT's own
forward (tests/eat_reference.py): fairseq files pretrained and finetuned, a Hugging Face folder,
at 512, 1024 and 2048 frames; and the files that look like data2vec 2.0 but are not EAT's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from einops import rearrange

from eat_reference import (
    COLUMNS, Classification, Data2VecMulti, HuggingFaceEAT, fairseq_finetuned, fairseq_pretrained, huggingface_folder,
    randomized, sincos_table,
)
from ssast.checkpoints import CheckpointError, load_checkpoint
from ssast.encoder import LAYOUTS, ASTEncoder, EncoderConfig
from ssast.positions import sincos_positions

LENGTHS = (512, 1024, 2048)
TOLERANCE = 1e-5


def ours(reference_tokens: torch.Tensor) -> torch.Tensor:
    """EAT's tokens (cls, then patches time-major) in our order (cls, then patches frequency-major)."""
    patches = rearrange(reference_tokens[:, 1:], "b (t f) d -> b (f t) d", f=COLUMNS)
    return torch.cat([reference_tokens[:, :1], patches], dim=1)


def log_mels(batch: int, frames: int) -> torch.Tensor:
    return torch.randn(batch, frames, 128, generator=torch.Generator().manual_seed(frames + batch))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> float:
    difference = (a - b).abs().max().item()
    assert difference < TOLERANCE, difference
    return difference


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eat")
    student, teacher = randomized(Data2VecMulti(), seed=0), randomized(Data2VecMulti(), seed=1)
    return fairseq_pretrained(folder / "EAT-base_epoch10_pt.pt", student, teacher), student, teacher


def test_the_sincos_table_is_eats_in_our_order():
    table = torch.from_numpy(sincos_table(64, 5))  # rows t * 8 + f
    expected = rearrange(table, "(t f) d -> (f t) d", f=COLUMNS)
    assert torch.allclose(sincos_positions(64, (COLUMNS, 5)), expected, atol=1e-6)
    encoder = ASTEncoder(EncoderConfig.from_size("mini", layout="eat", input_tdim=80))
    assert "pos_embed" not in dict(encoder.named_parameters())  # fixed: a buffer, not trained
    assert torch.equal(encoder.pos_embed[0, 0], torch.zeros(192))  # the cls token takes no position


@pytest.mark.parametrize("frames", LENGTHS)
def test_a_pretrained_fairseq_file_computes_eats_tokens(pretrained, frames):
    path, student, teacher = pretrained
    checkpoint = load_checkpoint(path, input_tdim=frames)
    encoder = checkpoint.encoder.eval()
    assert checkpoint.format == "eat" and checkpoint.head is None and checkpoint.pooling == "cls"
    assert {name: getattr(encoder.config, name) for name in LAYOUTS["eat"]} == LAYOUTS["eat"]
    assert (checkpoint.preprocessing.mean, checkpoint.preprocessing.std) == (-4.268, 4.569)
    assert checkpoint.preprocessing.target_length == frames
    fbank = log_mels(2, frames)
    with torch.no_grad():
        tokens, expected = encoder(fbank), ours(student(fbank))
    assert tokens.shape == expected.shape == (2, 1 + 8 * frames // 16, 64)
    assert_close(tokens, expected)
    assert_close(encoder.pool(tokens, "cls"), expected[:, 0])
    # Every block's output, as the SUPERB protocol and layers="all" read them.
    with torch.no_grad():
        states = encoder.hidden_states(fbank)
    assert_close(states[-1], tokens)


def test_token_dropping_is_eats_student_pass(pretrained):
    """EAT's student sees only its visible patches: ours keeps the same patches (our indices are
    frequency-major, EAT's time-major) and computes the same tokens."""
    path, student, _ = pretrained
    encoder = load_checkpoint(path, input_tdim=512).encoder.eval()
    n_freq, n_time = encoder.grid
    ours_kept = torch.stack([torch.randperm(n_freq * n_time, generator=torch.Generator().manual_seed(i))[:20].sort()[0]
                             for i in range(2)])
    theirs_kept = (ours_kept % n_time) * n_freq + ours_kept // n_time  # (f, t) -> t * 8 + f
    fbank = log_mels(2, 512)
    with torch.no_grad():
        assert_close(encoder(fbank, visible=ours_kept), student.student(fbank, theirs_kept))


def test_the_teacher_and_decoder_ride_along_in_our_names(pretrained):
    path, student, teacher = pretrained
    extra = load_checkpoint(path, input_tdim=512).extra
    teacher_state = {key.removeprefix("teacher."): value for key, value in extra.items() if key.startswith("teacher.")}
    encoder = ASTEncoder(EncoderConfig(embed_dim=64, depth=2, num_heads=4, input_tdim=512, **LAYOUTS["eat"])).eval()
    missing, unexpected = encoder.load_state_dict(teacher_state, strict=False)
    assert missing == ["mask_embed"] and unexpected == []
    fbank = log_mels(1, 512)
    with torch.no_grad():
        assert_close(encoder(fbank), ours(teacher(fbank)))
    decoder = {key.removeprefix("decoder."): value for key, value in extra.items() if key.startswith("decoder.")}
    assert sorted(decoder) == ["convs.0.bias", "convs.0.weight", "convs.1.bias", "convs.1.weight", "proj.bias",
                               "proj.weight"]
    # Kernels over EAT's (time, frequency) grid turned to our (frequency, time) one.
    original = student.modality_encoders["IMAGE"].decoder.blocks[0][0].weight
    assert torch.equal(decoder["convs.0.weight"].float(), original.transpose(-1, -2))


@pytest.mark.parametrize("frames", LENGTHS)
def test_a_finetuned_fairseq_file_gives_eats_logits(tmp_path, frames):
    classifier = randomized(Classification(classes=5), seed=2)
    path = fairseq_finetuned(tmp_path / "EAT-base_epoch10_ft_AS2M.pt", classifier)
    checkpoint = load_checkpoint(path, input_tdim=frames)
    encoder, head = checkpoint.encoder.eval(), checkpoint.head.eval()
    fbank = log_mels(3, frames)
    with torch.no_grad():
        tokens = encoder(fbank)
        assert_close(tokens, ours(classifier.model(fbank)))
        assert_close(head(encoder.pool(tokens, checkpoint.pooling)), classifier(fbank))
    assert head.norm.eps == 1e-6 and checkpoint.labels is None


def test_labels_come_from_a_users_file(tmp_path):
    path = fairseq_finetuned(tmp_path / "ft.pt", randomized(Classification(classes=3), seed=3))
    audioset = tmp_path / "class_labels_indices.csv"
    audioset.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/05zppz,"Male speech, man speaking"\n'
                        '2,/m/0ytgt,"Child speech, kid speaking"\n')
    assert load_checkpoint(path, labels=audioset, input_tdim=64).labels == [
        "Speech", "Male speech, man speaking", "Child speech, kid speaking"]
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n")
    assert load_checkpoint(path, labels=classes, input_tdim=64).labels == ["a", "b", "c"]
    with pytest.raises(CheckpointError, match="2 labels for a classifier of 3 classes"):
        load_checkpoint(path, labels=["a", "b"], input_tdim=64)


@pytest.mark.parametrize("frames", LENGTHS)
def test_a_hugging_face_folder_computes_eats_tokens_and_logits(tmp_path, frames):
    model = randomized(HuggingFaceEAT(classes=4), seed=4)
    folder = huggingface_folder(tmp_path / "EAT-base_epoch30_finetune_AS2M", model, classes=4)
    checkpoint = load_checkpoint(folder, input_tdim=frames)
    assert checkpoint.format == "eat" and checkpoint.head.norm.eps == 1e-5
    fbank = log_mels(2, frames)
    with torch.no_grad():
        tokens = checkpoint.encoder.eval()(fbank)
        assert_close(tokens, ours(model.extract_features(fbank)))
        assert_close(checkpoint.head(checkpoint.encoder.pool(tokens, "cls")), model(fbank))


def test_a_pretrained_hugging_face_folder_loads_without_a_head(tmp_path):
    model = randomized(HuggingFaceEAT(classes=None), seed=5)
    checkpoint = load_checkpoint(huggingface_folder(tmp_path / "EAT-large_epoch20_pretrain", model, classes=None))
    assert checkpoint.head is None and checkpoint.encoder.config.input_tdim == 1024
    fbank = log_mels(1, 1024)
    with torch.no_grad():
        assert_close(checkpoint.encoder.eval()(fbank), ours(model.extract_features(fbank)))


# --- what is refused ----------------------------------------------------------------------


def resaved(tmp_path, pretrained, change) -> str:
    path, _, _ = pretrained
    contents = torch.load(path, weights_only=False)
    change(contents)
    target = tmp_path / "changed.pt"
    torch.save(contents, target)
    return target


@pytest.mark.parametrize("change,message", [
    (lambda c: c["model"].__setitem__("modality_encoders.IMAGE.local_encoder.proj.weight", torch.zeros(64, 3, 16, 16)),
     "reads 3 input channels: an image model"),
    (lambda c: c["model"].__setitem__("modality_encoders.IMAGE.alibi_scale", torch.ones(1, 1, 4, 1, 1)),
     "modality_encoders.IMAGE.alibi_scale: ALiBi"),
    (lambda c: c["model"].__setitem__("modality_encoders.AUDIO.local_encoder.0.weight", torch.zeros(4)),
     "unexpected encoder key modality_encoders.AUDIO.local_encoder.0.weight .another data2vec 2.0 modality"),
    (lambda c: c["model"].__setitem__("blocks.0.attn.rel_pos_bias", torch.zeros(4)),
     "unexpected encoder keys: blocks.0.attn.rel_pos_bias"),
    (lambda c: c["model"].__setitem__("recon_proj.weight", torch.zeros(4)), "unexpected encoder key recon_proj.weight"),
    (lambda c: c["cfg"]["model"].__setitem__("layer_norm_first", True), "model.layer_norm_first is true"),
    (lambda c: c["cfg"]["model"]["modalities"]["image"].__setitem__("use_alibi_encoder", True), "use_alibi_encoder"),
])
def test_what_looks_like_data2vec_but_is_not_eats_audio_model_is_refused(tmp_path, pretrained, change, message):
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(resaved(tmp_path, pretrained, change), input_tdim=64)


def test_a_length_beyond_the_table_and_other_frequency_strides_are_refused(tmp_path, pretrained):
    def short_table(contents):
        key = "modality_encoders.IMAGE.fixed_positional_encoder.positions"
        contents["model"][key] = contents["model"][key][:, : 4 * COLUMNS]
        contents["model"]["_ema"][key] = contents["model"]["_ema"][key][:, : 4 * COLUMNS]

    path = resaved(tmp_path, pretrained, short_table)
    assert load_checkpoint(path, input_tdim=64).encoder.config.grid == (8, 4)
    with pytest.raises(CheckpointError, match="covers 4 patch columns, at most 64 frames"):
        load_checkpoint(path, input_tdim=80)
    with pytest.raises(CheckpointError, match="8 frequency columns"):
        load_checkpoint(pretrained[0], fstride=10, input_tdim=64)


def test_a_hugging_face_folder_of_another_layout_is_refused(tmp_path):
    model = HuggingFaceEAT(classes=None)
    folder = huggingface_folder(tmp_path / "pre-norm", model, classes=None, layer_norm_first=True)
    with pytest.raises(CheckpointError, match="layer_norm_first is True"):
        load_checkpoint(folder)


def test_numpy_values_load_but_code_is_still_refused(tmp_path, pretrained):
    """The numpy allowlist lets fairseq's training state through (the fixture's files hold
    np.float64, np.int64, np.float32 and arrays) and nothing else."""
    with pytest.raises(Exception, match="numpy"):  # torch's own allowlist refuses them
        torch.load(pretrained[0], weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({"model": {"modality_encoders.IMAGE.extra_tokens": torch.zeros(1)}, "extra": np.random.default_rng()},
               bad)
    with pytest.raises(CheckpointError, match="refused: loading it would import numpy.random"):
        load_checkpoint(bad)


def test_the_encoder_exports_to_our_format_but_not_to_transformers(tmp_path, pretrained):
    from ssast.hub import HubEncoder, main as export

    checkpoint = load_checkpoint(pretrained[0], input_tdim=512)
    assert export([str(pretrained[0]), str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert not (tmp_path / "hf").exists()
    HubEncoder.from_checkpoint(checkpoint).save_pretrained(tmp_path / "ours")
    again = load_checkpoint(tmp_path / "ours")
    fbank = log_mels(1, 512)
    with torch.no_grad():
        assert torch.equal(again.encoder.eval()(fbank), checkpoint.encoder.eval()(fbank))
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["encoder"]["block_norm"] == "post"


# --- continuing EAT's pretraining ----------------------------------------------------------


def test_eat_pretraining_continues_from_eats_student_teacher_and_decoder(tmp_path):
    from pretrain.base import optimization_step
    from pretrain.eat import EAT

    shape = dict(dim=192, depth=4, num_heads=3)  # our mini size
    student, teacher = randomized(Data2VecMulti(**shape), seed=6), randomized(Data2VecMulti(**shape), seed=7)
    path = fairseq_pretrained(tmp_path / "EAT-base_epoch10_pt.pt", student, teacher, **shape)
    model = EAT(init_from=str(path), size="mini", layout="eat", input_tdim=64, clone_batch=2, decoder_layers=2,
                decoder_groups=4).eval()
    fbank = log_mels(2, 64)
    with torch.no_grad():
        assert_close(model.encoder(fbank), ours(student(fbank)))
        assert_close(model.teacher(fbank), ours(teacher(fbank)))
        # The targets are EAT's: its teacher's feed-forward outputs, normalised and averaged.
        expected = rearrange(teacher.targets(fbank), "b (t f) d -> b (f t) d", f=COLUMNS)
        assert_close(model.teacher_targets(fbank), expected)
    assert torch.equal(model.decoder.proj.weight, student.modality_encoders["IMAGE"].decoder.proj.weight)
    assert model.init_extra == {}
    before = model.teacher.blocks[0].mlp.fc1.weight.clone()
    out = optimization_step(model.train(), model.build_optimizer(lr=1e-4), fbank)
    assert torch.isfinite(out["loss"]) and not torch.equal(model.teacher.blocks[0].mlp.fc1.weight, before)


def test_continuing_refuses_a_recipe_of_another_shape(pretrained):
    from pretrain.eat import EAT

    with pytest.raises(CheckpointError, match="embed_dim=64, depth=2, num_heads=4.*block_norm=post.*"
                                              "but the recipe asks for embed_dim=192, depth=4, num_heads=3"):
        EAT(init_from=str(pretrained[0]), size="mini", input_tdim=64)


# --- every command reads them ------------------------------------------------------------


def test_embeddings_and_hear_read_an_eat_file(pretrained, tmp_path, capsys):
    import soundfile

    from ssast import Embedder
    from ssast.embed_cli import main as embed
    from ssast.features import Fbank, Normalize, fit_frames
    from ssast.hear import get_scene_embeddings, load_model

    path, student, _ = pretrained
    waveform = torch.randn(16000, generator=torch.Generator().manual_seed(0)) * 0.1
    embedder = Embedder(path)
    # EAT's feature_extract.py: Kaldi fbank, zero-padded to 1024 frames, then (x + 4.268) / (2 * 4.569).
    features = Normalize(-4.268, 4.569)(fit_frames(Fbank()(waveform[None]), 1024))
    with torch.no_grad():
        expected = student(features)[:, 0]  # EAT's utterance embedding: the cls token
    assert_close(embedder(waveform[None]).clip, expected)
    assert_close(get_scene_embeddings(waveform[None], load_model(str(path))), expected)
    soundfile.write(tmp_path / "clip.wav", waveform.numpy(), 16000)
    assert embed([str(path), str(tmp_path / "clip.wav"), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "out" / "clips.npy").shape == (1, 64)


@pytest.mark.slow
def test_a_finetune_from_an_eat_file_runs_eats_esc50_recipe(tmp_path):
    from finetune.cli import main
    from ssast.data.cli import main as data_main
    from test_finetune_protocol import fake_esc50

    classifier = randomized(Classification(classes=527), seed=8)
    path = fairseq_finetuned(tmp_path / "EAT-base_epoch10_ft_AS2M.pt", classifier)
    data = tmp_path / "esc50"
    assert data_main(["esc50", str(fake_esc50(tmp_path)), str(data), "--workers", "1"]) == 0
    run = tmp_path / "run"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}}
    main(["cv", "--config", "configs/finetune/eat.yaml", "--config", "configs/finetune/esc50_folds.yaml",
          "--config", "configs/finetune/eat_esc50.yaml",
          "--model.init_from", str(path), "--data.train", str(data), "--data.target_length", "64",
          "--model.timem", "12", "--model.warmup_steps", "2", "--trainer.max_steps", "4", "--data.batch_size", "8",
          "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
          "--trainer.precision", "32-true", "--trainer.default_root_dir", str(run), "--trainer.logger",
          json.dumps(logger), "--trainer.enable_progress_bar", "false"])
    summary = json.loads((run / "cv.json").read_text())
    assert set(summary["folds"]) == {f"fold{k}" for k in range(1, 6)} and 0 <= summary["mean"] <= 1
    # The encoder kept EAT's layout through finetuning, and the run's checkpoint loads back as one.
    finetuned = load_checkpoint(next((run / "fold1").rglob("*.ckpt")))
    assert finetuned.encoder.config.block_norm == "post" and finetuned.encoder.config.input_tdim == 64
