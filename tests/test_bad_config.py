"""Bad configuration and bad checkpoints: one line that says what is wrong and how to fix
it, before any data is read or any step is taken. Everything here is a real file handed to
the real programs."""

import json
import os
from pathlib import Path

import pytest
import torch

from finetune.cli import main as finetune
from ssast.train.cli import concise_error
from pretrain.cli import main as pretrain
from ssast import EncoderConfig, save_encoder
from ssast.encoder import ASTEncoder

REPO = Path(__file__).resolve().parents[1]


def error_of(program, args: list[str]) -> str:
    """The message a program exits with; it must be a single line."""
    with pytest.raises(SystemExit) as exited:
        program(args)
    message = exited.value.code
    assert isinstance(message, str), f"exited with {message!r}, not a message"
    assert "\n" not in message and "Traceback" not in message, message
    return message


def pretrain_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/pretrain/mspm_demo.yaml"), "--data.init_args.train", str(corpus / "unlabeled"), "--data.init_args.val", str(corpus / "events/val"),
            "--trainer.default_root_dir", str(run), "--trainer.logger", "false", *extra]


def finetune_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/finetune/demo_events.yaml"), "--data.train", str(corpus / "events/train"), "--data.val", str(corpus / "events/val"),
            "--trainer.default_root_dir", str(run), "--trainer.logger", "false", *extra]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--model.init_args.maskpatches", "5"], "model (pretrain.mspm.MSPM): Option 'maskpatches' is not accepted"),
    (["--data.init_args.batch_size", "abc"], "data.batch_size (ssast.train.datamodule.AudioDataModule): Expected a int. "
                                             "Got value: abc"),
    (["--model.init_args.optimizer", "sgd"], "model.optimizer (pretrain.mspm.MSPM): Expected a typing.Literal"),
    (["--trainer.max_stepz", "3"], "unrecognized arguments: --trainer.max_stepz 3"),
])
def test_a_wrong_key_or_type_on_the_command_line(extra, expected, tmp_path):
    message = error_of(pretrain, pretrain_args(tmp_path / "corpus", tmp_path / "run", *extra))
    assert message.startswith("ssast-pretrain fit: error: ") and expected in message
    assert "--help" in message  # and how to find the right spelling
    assert not (tmp_path / "corpus").exists()  # failed before generating the demo corpus


def test_a_wrong_key_in_a_config_file(tmp_path):
    overrides = tmp_path / "mine.yaml"
    overrides.write_text("model:\n  mask_patchez: 3\n")
    message = error_of(finetune, [*finetune_args(tmp_path / "corpus", tmp_path / "run"), "--config", str(overrides)])
    assert "model.mask_patchez" in message and not (tmp_path / "corpus").exists()


def test_concise_error_keeps_the_innermost_reason():
    nested = ('Parser key "data":\n  Does not validate against any of the Union subtypes\n  Errors:\n'
              "    - Problem with given class_path 'a.B':\n        Parser key \"stats\":\n"
              "          Expected a <class 'str'>. Got value: 5\n    - Expected a <class 'NoneType'>\n"
              "  Given value type: <class 'dict'>\n")
    assert concise_error(nested) == "data.stats (a.B): Expected a str. Got value: 5"


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.fixture
def bad_files(tmp_path) -> dict[str, Path]:
    code = tmp_path / "runs_code.ckpt"
    torch.save({"state_dict": {}, "payload": RunsCode()}, code)
    text = tmp_path / "notes.ckpt"
    text.write_text("these are my notes, not a checkpoint\n")
    return {"code": code, "text": text}


def test_a_checkpoint_that_would_run_code_or_is_not_one(tiny_corpus, bad_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    for name, path in bad_files.items():
        for program, args in ((finetune, finetune_args(tiny_corpus, run, "--model.init_from", str(path))),
                              (pretrain, pretrain_args(tiny_corpus, run, "--ckpt_path", str(path))),
                              (finetune, ["test", *finetune_args(tiny_corpus, run)[1:], "--ckpt_path", str(path)])):
            message = error_of(program, args)
            assert str(path) in message, message
            assert ("refused" in message) if name == "code" else ("not a" in message), message
    assert not (tmp_path / "pwned").exists()  # nothing ran
    assert not (run / "checkpoints").exists()  # and nothing trained


def test_a_checkpoint_of_another_model_is_refused_before_fit(tiny_corpus, tmp_path):
    other = tmp_path / "other.ckpt"
    encoder = ASTEncoder(EncoderConfig.from_size("mini", input_tdim=256))  # 16 x 16 patches; the recipe: frames
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()}}, other)
    message = error_of(pretrain, pretrain_args(tiny_corpus, tmp_path / "run", "--ckpt_path", str(other)))
    assert "written by another model" in message and "encoder.patch_embed.proj.weight" in message
    assert "config.yaml" in message  # how to fix it
    assert not (tmp_path / "run/checkpoints").exists()


def test_a_patch_checkpoint_for_a_frame_recipe(tiny_corpus, tmp_path):
    patches = tmp_path / "patches.safetensors"
    save_encoder(ASTEncoder(EncoderConfig.from_size("mini", input_tdim=256)), patches)
    message = error_of(finetune, finetune_args(tiny_corpus, tmp_path / "run", "--model.init_from", str(patches)))
    assert "fshape=16, tshape=16" in message and "fshape=128, tshape=2" in message and "null" in message
    # Taking the checkpoint's geometry is the documented way out, and it builds.
    from finetune.cli import build_cli

    cli = build_cli(finetune_args(tiny_corpus, tmp_path / "run", "--model.init_from", str(patches),
                                  "--model.fshape", "null", "--model.tshape", "null")[1:], run=False)
    assert cli.model.encoder.config.fshape == 16


def test_missing_or_unreadable_shards_are_one_line_too(tiny_corpus, tmp_path):
    # A local path that names nothing fails at once (retries are for remote and pipe: sources) ...
    nowhere = tmp_path / "nowhere"
    message = error_of(pretrain, pretrain_args(tiny_corpus, tmp_path / "run", "--data.train", str(nowhere)))
    assert message == f"ssast-pretrain: error: no shards at {nowhere}: no such file or folder"
    # ... and shards that exist but cannot be read are retried, then reported.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "part-000000.tar").write_bytes(b"not a tar")
    message = error_of(pretrain, pretrain_args(tiny_corpus, tmp_path / "run", "--data.val", str(broken),
                                               "--data.reader.retry_delay", "0"))
    assert message.startswith("ssast-pretrain: error: read nothing") and "part-000000.tar" in message
