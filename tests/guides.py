"""The guides, run: every command in the README and docs/, in reading order, at tiny scale.

A reader follows a path through the guides (``READING_PATHS``) on one machine, each guide
reusing what the ones before it made. Each path runs in its own scratch folder laid out like
a new user's machine: a copy of ``configs/``, a ``HOME`` holding small fakes of the
downloads the guides name (ESC-50, Speech Commands, VoxCeleb1, AudioSet trees, official
SSAST, Hugging Face AST, ASiT and EAT checkpoints at tiny sizes), and no GPU; the paths are
independent, so pytest-xdist runs them side by side (one test file per path, ``--dist
loadfile``). ``bash`` blocks run in bash with ``-euo pipefail``, ``python`` blocks in this
interpreter, ``yaml`` blocks must parse. ``ssast-pretrain``, ``ssast-finetune`` and
``ssast-demo`` are reached through small wrappers that append tiny step counts, a mini model,
CPU settings and a tenth of the demo corpus (``SHIM_ARGS``), so every command runs as
written, only smaller; ``sbatch``, ``srun`` and ``torchrun`` have local stand-ins
(``CLUSTER_SHIMS``).

A comment line right before a block changes what happens to it:

- ``<!-- docs-test: file PATH -->`` writes the block to PATH (a recipe, a CSV, a job
  script) for later blocks to use;
- ``<!-- docs-test: ci -->`` marks the README's ``make`` commands, which ``.ci/run`` runs
  itself; the test checks that it does;
- ``<!-- docs-test: network -->`` marks what needs the internet or a cluster (``wandb
  login``, downloads, ``sbatch``): it is only checked for syntax and that each program
  exists.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
# Two readers, each on a machine of their own: one starts at the quickstart and goes on with the
# demo corpus, the other reads the README's summary, then the guides on downloaded datasets.
# A path lists whatever its guides build on before them (the shards data.md makes, the stats
# pretraining.md writes), so data.md runs in both.
READING_PATHS = {
    "demo": ["docs/index.md", "docs/quickstart.md", "docs/data.md", "docs/pretraining.md", "docs/checkpoints.md",
             "docs/tracking.md", "docs/reliability.md", "docs/scaling.md"],
    "downloads": ["README.md", "docs/data.md", "docs/finetuning.md", "docs/embeddings.md", "docs/reproducing.md"],
}
LANGUAGES = {"bash", "python", "yaml", "text", "csv"}
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\w*)\s*$")

_TRAINER = [
    "--trainer.max_steps=2", "--trainer.max_epochs=1", "--trainer.limit_val_batches=1",
    "--trainer.limit_test_batches=1", "--trainer.limit_predict_batches=2", "--trainer.num_sanity_val_steps=0",
    "--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.num_nodes=1",
    "--trainer.enable_progress_bar=false",
]
# What the wrappers append, per program (``DEVICES`` becomes the local process count).
SHIM_ARGS = {
    "ssast-pretrain": [*_TRAINER, "--trainer.devices=DEVICES", "--model.init_args.size=mini", "--data.batch_size=2",
                       "--data.batches_per_epoch=2", "--data.num_workers=0",
                       "--data.reader.shuffle_buffer=8"],
    "ssast-finetune": [*_TRAINER, "--trainer.devices=DEVICES", "--data.batch_size=2", "--data.batches_per_epoch=2",
                       "--data.num_workers=0", "--data.reader.shuffle_buffer=8"],
    "ssast-demo": [f"--pretrain-arg={arg}" for arg in ("--trainer.max_epochs=1", "--data.batches_per_epoch=2",
                                                       "--data.batch_size=4")]
                  + [f"--finetune-arg={arg}" for arg in ("--trainer.max_epochs=1", "--data.batches_per_epoch=2")],
    # A tenth of the clips (2 training clips a class): what follows runs as on the full corpus.
    "ssast-demo corpus": ["--scale", "0.1"],
}
TRAINING_COMMANDS = {"fit", "validate", "test", "predict", "cv"}


@dataclass(frozen=True)
class Block:
    doc: str
    line: int
    language: str
    code: str
    directive: str | None

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def read_blocks(doc: str) -> list[Block]:
    lines = (REPO / doc).read_text().splitlines()
    blocks, directive, index = [], None, 0
    while index < len(lines):
        line = lines[index].strip()
        if match := DIRECTIVE.match(line):
            directive = match.group(1)
        elif match := FENCE.match(line):
            end = next(i for i in range(index + 1, len(lines)) if lines[i].strip() == "```")
            code = textwrap.dedent("\n".join(lines[index + 1:end])) + "\n"
            blocks.append(Block(doc, index + 1, match.group(1), code, directive))
            directive, index = None, end
        elif line:
            directive = None  # a directive belongs to the block right after it
        index += 1
    return blocks


# --- the scratch machine -----------------------------------------------------------------


# Local stand-ins for what needs a cluster: sbatch runs the job script at once as one
# SLURM task, srun runs its command, torchrun starts 2 processes on this one node.
CLUSTER_SHIMS = {
    "sbatch": """\
export SLURM_JOB_ID=4242 SLURM_JOB_NAME=docs SLURM_NTASKS=1 SLURM_NTASKS_PER_NODE=1 SLURM_NNODES=1 \\
    SLURM_NODELIST=localhost SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0
exec bash "$@"
""",
    "srun": """\
while [[ "${1:-}" == -* ]]; do shift; done
exec "$@"
""",
    "torchrun": """\
args=()
while [[ "${1:-}" == --* ]]; do
  case "$1" in
    --nproc[_-]per[_-]node=*|--nnodes=*|--node[_-]rank=*|--rdzv[_-]*=*|--master[_-]*=*|--standalone) shift ;;
    --nproc[_-]per[_-]node|--nnodes|--node[_-]rank|--rdzv[_-]*|--master[_-]*) shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec REAL --standalone --nproc_per_node=2 "${args[@]}" "$@"
""",
}


# The wrappers are Python, as the programs they stand for: torchrun runs its script with Python.
CLI_SHIM = """\
import os, sys
args = sys.argv[1:]
if args[:1] == ["corpus"]:
    extra = {corpus!r}
elif {untouched}:
    extra = []  # --help, --print_config without a subcommand, ssast-demo recorded ...
else:
    extra = [arg.replace("DEVICES", os.environ.get("LOCAL_WORLD_SIZE", "1")) for arg in {extra!r}]
os.execv(sys.executable, [sys.executable, {real!r}, *args, *extra])
"""


def _write_shims(folder: Path) -> None:
    folder.mkdir()
    bin = str(Path(sys.executable).parent)
    scripts = {}
    for program in ("ssast-pretrain", "ssast-finetune", "ssast-demo"):
        real = shutil.which(program, path=bin) or pytest.fail(f"{program} is not installed in {bin}")
        untouched = ("args[:1] == ['recorded']" if program == "ssast-demo"  # needs Debian packages: never run here
                     else f"not args or args[0] not in {sorted(TRAINING_COMMANDS)!r}")
        corpus = SHIM_ARGS.get(f"{program} corpus", [])
        body = CLI_SHIM.format(corpus=corpus, untouched=untouched, extra=SHIM_ARGS[program], real=real)
        scripts[program] = f"#!{sys.executable}\n# docs test: {program} at tiny scale\n{body}"
    torchrun = shutil.which("torchrun", path=bin) or pytest.fail(f"torchrun is not installed in {bin}")
    for program, body in CLUSTER_SHIMS.items():
        body = body.replace("REAL", shlex.quote(torchrun))
        scripts[program] = f"#!/usr/bin/env bash\n# docs test: a local stand-in for {program}\n{body}"
    for program, script in scripts.items():
        (folder / program).write_text(script)
        (folder / program).chmod(0o755)


def _fake_downloads(home: Path, work: Path) -> None:
    """What the guides tell users to download, small: dataset trees and checkpoints."""
    import transformers
    from safetensors.torch import save_file

    from ssast import EncoderConfig
    from ssast.encoder import ASTEncoder
    from eat_reference import (
        Classification, Data2VecMulti, HuggingFaceEAT, fairseq_finetuned, fairseq_pretrained, huggingface_folder,
        randomized,
    )
    from helpers import (
        hf_config, make_audioset, make_esc50, make_iemocap, make_speechcommands, make_voxceleb1, ssast_state, write_clip,
    )

    downloads = home / "downloads"
    downloads.mkdir(parents=True)
    for make in (make_esc50, make_speechcommands, make_voxceleb1, make_audioset, make_iemocap):
        make(downloads)
    # Enough evaluation clips that each of torchrun's 2 ranks gets one (DDP needs a batch on every rank).
    with (downloads / "audioset/eval_segments.csv").open("a") as segments:
        for index in range(4):
            segments.write(f'evalExtra{index:03d}, 0.000, 10.000, "/m/04rlf"\n')
            write_clip(downloads / f"audioset/clips/evalExtra{index:03d}.wav", 0.5, freq=300 + 100 * index)
    shutil.copytree(downloads / "speech_commands_v0.02", downloads / "speech_commands_v0.01")
    for speaker, chapter in (("19", "198"), ("26", "495")):
        folder = downloads / "LibriSpeech" / "train-clean-100" / speaker / chapter
        for utterance in range(3):
            write_clip(folder / f"{speaker}-{chapter}-{utterance:04d}.flac", 1.5, rate=16000, freq=120 + 40 * utterance)
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("0000 HELLO\n")

    sounds = home / "audio" / "my_sounds"
    for index, label in enumerate(("dog", "rain", "siren")):
        for take in range(4):
            write_clip(sounds / label / f"{label}_{take}.wav", 1.0, rate=16000, freq=200 + 150 * index + 20 * take)
    for take in range(3):
        write_clip(sounds / f"unlabeled_{take}.wav", 1.0, rate=22050, freq=500 + 30 * take)
    (sounds / "notes.txt").write_text("not audio")

    torch.manual_seed(0)
    tiny = dict(embed_dim=64, depth=2, num_heads=2)
    patch = ASTEncoder(EncoderConfig(**tiny, input_tdim=1024))
    frame = ASTEncoder(EncoderConfig(**tiny, input_tdim=1024, fshape=128, tshape=2, fstride=128, tstride=2))
    torch.save(ssast_state(patch), work / "SSAST-Base-Patch-400.pth")
    torch.save(ssast_state(frame), work / "SSAST-Base-Frame-400.pth")
    asit = ASTEncoder(EncoderConfig(**tiny, input_tdim=592, num_lead_tokens=1))
    teacher = {f"backbone.{key}": value for key, value in asit.state_dict().items() if key != "mask_embed"}
    torch.save({"teacher": teacher, "epoch": 99}, work / "ASiT_base.pt")
    labels = {0: "Speech", 1: "Music", 2: "Dog"}
    config = hf_config(num_labels=3, id2label=labels, label2id={name: i for i, name in labels.items()}, max_length=1024)
    transformers.ASTForAudioClassification(config).save_pretrained(work / "ast-finetuned-audioset")
    transformers.ASTFeatureExtractor(max_length=1024).save_pretrained(work / "ast-finetuned-audioset")
    deit = ASTEncoder(EncoderConfig(**tiny, input_tdim=1024)).state_dict()  # timm's DeiT names, as the Hub's file
    deit["patch_embed.proj.weight"] = deit["patch_embed.proj.weight"].repeat(1, 3, 1, 1)  # RGB
    deit["pos_embed"] = torch.randn(1, 2 + 24 * 24, tiny["embed_dim"])
    deit["head.weight"], deit["head.bias"] = torch.randn(1000, tiny["embed_dim"]), torch.zeros(1000)
    (work / "deit").mkdir()
    save_file({key: value for key, value in deit.items() if key != "mask_embed"}, work / "deit" / "model.safetensors")
    # EAT's releases: a pretrained fairseq file of the mini size (the wrappers pretrain mini models) with EAT's
    # decoder (6 layers, 16 groups), a finetuned one with 3 AudioSet classes and their labels.csv, a Hub folder.
    eat = dict(dim=192, depth=4, num_heads=3)
    student = randomized(Data2VecMulti(**eat, decoder_layers=6, decoder_groups=16), seed=0)
    teacher = randomized(Data2VecMulti(**eat, decoder_layers=6, decoder_groups=16), seed=1)
    fairseq_pretrained(work / "EAT-base_epoch10_pt.pt", student, teacher, **eat)
    fairseq_finetuned(work / "EAT-base_epoch10_ft_AS2M.pt", randomized(Classification(classes=3), seed=2))
    (work / "labels.csv").write_text('0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0bt9lr,"Dog"\n')
    huggingface_folder(work / "EAT-base_epoch30_pretrain", randomized(HuggingFaceEAT(classes=None), seed=3), None)


def prepare_machine(root: Path) -> tuple[Path, dict[str, str]]:
    """A working folder (``cwd`` of every block) and the environment blocks run in, under root."""
    work, home = root / "ssast", root / "home"
    work.mkdir()
    shutil.copytree(REPO / "configs", work / "configs")
    _fake_downloads(home, work)
    _write_shims(root / "shims")
    env = {name: value for name, value in os.environ.items() if not name.startswith(("WANDB_", "SLURM_", "CUDA_"))}
    env.update(HOME=str(home), CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(root / "shims"), str(Path(sys.executable).parent), env.get("PATH", "")]))
    return work, env


# --- running blocks ----------------------------------------------------------------------


SHELL_WORDS = {"export", "source", ".", "cd", "set", "trap", "kill", "for", "do", "done", "if", "then", "fi"}


def _programs(code: str) -> set[str]:
    """The first word of each command line of a shell block (after any VAR=value)."""
    programs = set()
    joined = code.replace("\\\n", " ")
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words and re.match(r"^\w+=", words[0]):
            words = words[1:]
        if words and words[0] not in SHELL_WORDS and "/" not in words[0]:  # a path made earlier in the block
            programs.add(words[0])
    return programs


def run_block(block: Block, work: Path, env: dict[str, str]) -> None:
    kind, _, argument = (block.directive or "").partition(" ")
    if kind == "file":
        target = work / argument
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.code)
        if block.language == "bash":
            target.chmod(0o755)
        return
    if block.language == "yaml":
        yaml.safe_load(block.code)
        return
    if block.language not in {"bash", "python"}:
        return
    if kind == "ci":
        ci = (REPO / ".ci/run").read_text()
        for program in _programs(block.code):
            assert program == "make", f"{block}: only make commands can be left to CI"
        for target in re.findall(r"^make (\w[\w-]*)", block.code, flags=re.M):
            assert re.search(rf"^make {target}\b", ci, flags=re.M), f"{block}: .ci/run does not run make {target}"
        return
    if kind == "network" and block.language == "python":  # e.g. push_to_hub
        compile(block.code, str(block), "exec")
        return
    if kind == "network":
        subprocess.run(["bash", "-n", "-c", block.code], check=True)
        missing = [p for p in _programs(block.code) if not shutil.which(p, path=env["PATH"])]
        assert not missing, f"{block}: {missing} not installed"
        return
    command = ["bash", "-euo", "pipefail", "-c", block.code] if block.language == "bash" else [sys.executable, "-c", block.code]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-6000:]
        pytest.fail(f"{block} exited with {result.returncode}:\n{block.code}\n--- output (tail) ---\n{output}")


def run_guide(doc: str, work: Path, env: dict[str, str]) -> None:
    for block in read_blocks(doc):
        run_block(block, work, env)


def reading_path_tests(name: str):
    """For the test module of path ``name`` (one module per path, so that pytest-xdist's
    ``--dist loadfile`` runs the paths side by side): its scratch machine, a module fixture,
    and the test that runs each guide of ``READING_PATHS[name]`` on it, in order."""

    @pytest.fixture(scope="module")
    def machine(tmp_path_factory):
        return prepare_machine(tmp_path_factory.mktemp(f"docs-{name}"))

    @pytest.mark.slow
    @pytest.mark.parametrize("doc", READING_PATHS[name])
    def test_guide_runs(doc, machine):
        run_guide(doc, *machine)

    return machine, test_guide_runs
