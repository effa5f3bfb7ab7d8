"""Bad configuration and bad checkpoints: one line that says what is wrong and how to fix
it, before any data is read or any step is taken. Everything here is a real file handed to
the real programs."""

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from finetune.cli import main as finetune
from helpers import recipe_args
from pretrain.cli import main as pretrain
from ssast import EncoderConfig, save_encoder
from ssast.encoder import ASTEncoder
from ssast.train.cli import concise_error



def error_of(program, args: list[str]) -> str:
    """The message a program exits with; it must be a single line."""
    with pytest.raises(SystemExit) as exited:
        program(args)
    message = exited.value.code
    assert isinstance(message, str), f"exited with {message!r}, not a message"
    assert "\n" not in message and "Traceback" not in message, message
    return message


def pretrain_args(corpus: Path, run: Path, *extra: str, method: str = "mspm") -> list[str]:
    return ["fit", *recipe_args("pretrain", f"{method}_demo"),
            "--data.train", str(corpus / "unlabeled"), "--data.val", str(corpus / "events/val"),
            "--trainer.default_root_dir", str(run), "--trainer.logger", "false", *extra]


def finetune_args(corpus: Path, run: Path, *extra: str) -> list[str]:
    return ["fit", *recipe_args("finetune", "demo_events"),
            "--data.train", str(corpus / "events/train"), "--data.val", str(corpus / "events/val"),
            "--trainer.default_root_dir", str(run), "--trainer.logger", "false", *extra]


@pytest.mark.parametrize(("extra", "expected"), [
    (["--model.init_args.maskpatches", "5"], "model (pretrain.mspm.MSPM): Option 'maskpatches' is not accepted"),
    (["--data.batch_size", "abc"], "data.batch_size: Expected a int. Got value: abc"),
    (["--model.init_args.optimization.optimizer", "sgd"],
     "model.optimization.optimizer (pretrain.mspm.MSPM): Expected a typing.Literal"),
    (["--trainer.max_stepz", "3"], "unrecognized arguments: --trainer.max_stepz 3"),
])
def test_a_wrong_key_or_type_on_the_command_line(extra, expected, tmp_path):
    message = error_of(pretrain, pretrain_args(tmp_path / "corpus", tmp_path / "run", *extra))
    assert message.startswith("ssast-pretrain fit: error: ") and expected in message
    assert "--help" in message  # and how to find the right spelling
    assert not (tmp_path / "corpus").exists()  # failed before generating the demo corpus


# Values of the right type that the classes refuse (issue 37, finding 4): one line that names the setting,
# before any data is read (the corpus does not exist: reading it would be another message; finetuning reads
# its classes.txt before it builds the model, so a model's setting is tried on a corpus that has one).
@pytest.mark.parametrize(("stage", "extra", "expected"), [
    ("pretrain", ["--data.batch_size", "0"], "data.batch_size must be at least 1, got 0"),
    ("pretrain", ["--data.batch_size", "-4"], "data.batch_size must be at least 1, got -4"),
    ("finetune", ["--data.batch_size", "0"], "data.batch_size must be at least 1, got 0"),
    ("pretrain", ["--model.init_args.optimization.lr", "-1"], "optimization.lr must be positive, got -1.0"),
    ("finetune", ["--model.lr", "-1"], "model: lr (-1.0), head_lr_scale (1.0), weight_decay (5e-07), warmup_steps (20) and "
                                        "head_warmup_epochs (0) cannot be negative"),
    ("finetune", ["--model.layer_decay", "0"], "model.layer_decay must be in (0, 1], got 0.0"),
    ("pretrain", ["--model.init_args.passes", "3"], "passes must be 1 or 2, got 3"),
    ("pretrain", ["--global_batch_size", "0"], "a global batch of 0 clips"),
    ("pretrain", ["--max_device_batch_size", "-1"], "max_device_batch_size must be at least 1, got -1"),
])
def test_a_value_the_classes_refuse_is_one_line_before_any_data_is_read(stage, extra, expected, tiny_corpus,
                                                                       tmp_path):
    model_setting = stage == "finetune" and extra[0].startswith("--model.")
    corpus, run = (tiny_corpus if model_setting else tmp_path / "corpus"), tmp_path / "run"
    program, args = (pretrain, pretrain_args) if stage == "pretrain" else (finetune, finetune_args)
    message = error_of(program, args(corpus, run, *extra))
    assert message.startswith(f"ssast-{stage}: error: ") and expected in message, message
    assert not (run / "checkpoints").exists()


def test_a_class_listed_twice_in_classes_txt(tiny_corpus, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\nrain\ndog\n")
    message = error_of(finetune, finetune_args(tiny_corpus, tmp_path / "run", "--data.classes", str(classes)))
    assert message == f"ssast-finetune: error: {classes} lists 'dog' more than once: one line per class, each class once"


def test_no_logger_takes_the_recipes_lr_monitor_with_it(tiny_corpus, tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor

    from pretrain.cli import build_cli

    args = pretrain_args(tiny_corpus, tmp_path / "run")[1:]  # with --trainer.logger false
    cli = build_cli(args, run=False)
    assert cli.trainer.logger is None and not any(isinstance(c, LearningRateMonitor) for c in cli.trainer.callbacks)
    logged = build_cli([*args, "--trainer.logger", "true"], run=False)  # with a logger, the recipe's monitor stays
    assert any(isinstance(callback, LearningRateMonitor) for callback in logged.trainer.callbacks)


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


# Every renamed option, key or value, on the command line and in a recipe file: refused in one line that names
# what to set instead (ssast.renamed.RENAMED), before any data is read.
RENAMES = [
    ("pretrain", ["--model.init_args.lr", "1e-3"], "lr was renamed optimization.lr; set optimization.lr instead"),
    ("pretrain", ["--model.init_args.warmup_steps", "5"], "warmup_steps was renamed optimization.warmup_steps"),
    ("pretrain", ["--model.init_args.optimization.schedule", "cosine"],
     "schedule cosine was renamed warmup_cosine; set schedule: warmup_cosine instead"),
    ("pretrain", ["--data.init_args.batch_size", "4"], "data.init_args was removed: the data's options sit under data"),
    ("pretrain", ["--model", "pretrain.distill.ASiT"], "pretrain.distill.ASiT was renamed pretrain.asit.ASiT"),
    ("asit", ["--model.init_args.cls_dim", "64"], "cls_dim was renamed cls_prototypes; set cls_prototypes instead"),
    ("asit", ["--model.init_args.patch_dim", "64"], "patch_dim was renamed patch_prototypes"),
    ("asit", ["--model.init_args.teacher_temp_warmup_steps", "64"], "teacher_temp_warmup_steps was renamed "
                                                                     "teacher_temp_warmup_epochs"),
    ("asit", ["--model.init_args.momentum", "0.99"], "momentum was renamed ema_decay; set ema_decay instead"),
    ("eat", ["--model.init_args.cls_loss", "1"], "cls_loss was renamed utterance_weight; set utterance_weight"),
    ("finetune", ["--model.decay_start", "3"], "decay_start was renamed lr_decay_start; set lr_decay_start instead"),
    ("finetune", ["--model.decay_every", "3"], "decay_every was renamed lr_decay_every"),
    ("finetune", ["--model.decay_factor", "0.5"], "decay_factor was renamed lr_decay_factor"),
    ("finetune", ["--model.head_lr", "2"], "head_lr was renamed head_lr_scale; set head_lr_scale instead"),
    ("finetune", ["--model.schedule", "cosine"], "schedule cosine was renamed fairseq_cosine"),
]


@pytest.mark.parametrize("stage,option,expected", RENAMES, ids=[" ".join(option) for _, option, _ in RENAMES])
@pytest.mark.parametrize("where", ["command line", "recipe"])
def test_a_renamed_option_is_refused_naming_the_new_one(stage, option, expected, where, tmp_path):
    if where == "recipe":  # the same option in a file of the recipe's
        key, value = option[0].removeprefix("--"), option[1]
        *parents, leaf = key.split(".")
        tree = {leaf: value}
        for parent in reversed(parents):
            tree = {parent: tree}
        recipe = tmp_path / "old.yaml"
        recipe.write_text(yaml.safe_dump(tree))
        option = ["--config", str(recipe)]
    corpus, run = tmp_path / "corpus", tmp_path / "run"
    if stage == "finetune":
        message = error_of(finetune, finetune_args(corpus, run, *option))
        program = "ssast-finetune"
    else:
        message = error_of(pretrain, pretrain_args(corpus, run, *option, method="mspm" if stage == "pretrain" else stage))
        program = "ssast-pretrain"
    assert message.startswith(f"{program}") and expected in message, message
