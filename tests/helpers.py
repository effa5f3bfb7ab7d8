"""What several test files share: audio, shards, small corpora, fake dataset downloads and
checkpoints in their published layouts, and a local HTTP server. Fixtures live in
``conftest.py``; test files import these helpers from here, never from each other."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import io
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile
import torch
import webdataset as wds
import yaml

from ssast import EncoderConfig
from ssast.audio import encode_flac
from ssast.data.recipes.speechcommands import SPEECH_COMMANDS
from ssast.encoder import ASTEncoder

SAMPLE_RATE = 16_000


# --- audio and shards --------------------------------------------------------------------


def tone(seconds: float, rate: int = SAMPLE_RATE, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return mono if channels == 1 else np.stack([mono * (c + 1) / channels for c in range(channels)], axis=1)


def encoded(samples: np.ndarray, rate: int, format: str = "WAV", subtype: str | None = None) -> bytes:
    """Samples ``[N]`` or ``[N, C]`` as the bytes of an audio file."""
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype=subtype)
    return buffer.getvalue()


def write_shard(path: Path, samples: Sequence[dict]) -> None:
    """A tar of ready-made samples: dicts with __key__ and members (bytes, or json-able for
    the json member)."""
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write({k: (json.dumps(v).encode() if k == "json" and not isinstance(v, bytes) else v)
                        for k, v in sample.items()})


def flac_sample(key: str, seconds: float, labels: Sequence[str] = (), freq: float = 440.0) -> dict:
    audio = torch.from_numpy(tone(seconds, freq=freq))
    return {"__key__": key, "flac": encode_flac(audio), "json": {"labels": list(labels), "sr": SAMPLE_RATE}}


def write_clip(path: Path, seconds: float = 0.3, rate: int = 8000, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, rate, freq), rate)


def write_corpus(root: Path, clips: int = 8, seconds: float = 0.6) -> Path:
    """A corpus laid out like the demo's, at a tiny fraction of its size (milliseconds to
    write): ``unlabeled/`` and ``events/{train,val,test}/`` with one shard each of ``clips``
    tones, two event classes (``events/classes.txt``)."""
    labels = ("low", "high")
    for split in ("unlabeled", "events/train", "events/val", "events/test"):
        folder = root / split
        folder.mkdir(parents=True)
        samples = [flac_sample(f"{split}/{index}", seconds, [] if split == "unlabeled" else [labels[index % 2]],
                               freq=300 + 900 * (index % 2) + 20 * index) for index in range(clips)]
        write_shard(folder / "part-000000.tar", samples)
    (root / "events/classes.txt").write_text("\n".join(labels) + "\n")
    return root


# --- fake downloads, in their published layouts -------------------------------------------


def make_esc50(parent: Path) -> Path:
    root = parent / "ESC-50-master"
    (root / "meta").mkdir(parents=True)
    lines = ["filename,fold,target,category,esc10,src_file,take"]
    for fold in range(1, 6):
        for target, category, esc10 in ((0, "dog", "True"), (19, "thunderstorm", "False")):
            name = f"{fold}-1000{target}-A-{target}.wav"
            lines.append(f"{name},{fold},{target},{category},{esc10},1000{target},A")
            write_clip(root / "audio" / name, 0.2 + 0.1 * fold, rate=(8000, 44100)[fold % 2], freq=300 + 50 * fold)
    lines.append("5-99999-B-0.wav,5,0,dog,True,99999,B")  # listed, never downloaded
    (root / "meta/esc50.csv").write_text("\n".join(lines) + "\n")
    return root


OTHER_WORDS = ("bed", "marvin")
SPEAKERS = ("0a7c2a8d", "988e2f9a", "c1d39ce8")


def make_speechcommands(parent: Path) -> Path:
    """Every word with three speakers: the first in the validation list, the second in
    the test list, the third in train; two noise files of 6 s and 5.5 s."""
    root = parent / "speech_commands_v0.02"
    for word in (*SPEECH_COMMANDS, *OTHER_WORDS):
        for index, speaker in enumerate(SPEAKERS):
            write_clip(root / word / f"{speaker}_nohash_0.wav", 0.2, rate=16000, freq=200 + 40 * index)
    (root / "validation_list.txt").write_text(
        "".join(f"{word}/{SPEAKERS[0]}_nohash_0.wav\n" for word in (*SPEECH_COMMANDS, *OTHER_WORDS))
    )
    (root / "testing_list.txt").write_text(
        "".join(f"{word}/{SPEAKERS[1]}_nohash_0.wav\n" for word in (*SPEECH_COMMANDS, *OTHER_WORDS))
        + "yes/ffffffff_nohash_3.wav\n"  # listed, not on disk
    )
    noise = np.random.default_rng(0).standard_normal(6 * 8000).astype(np.float32) * 0.1
    (root / "_background_noise_").mkdir()
    soundfile.write(root / "_background_noise_/white_noise.wav", noise, 8000)
    soundfile.write(root / "_background_noise_/pink_noise.wav", noise[: 11 * 4000] * 0.5, 8000)
    (root / "_background_noise_/README.md").write_text("noise")
    (root / "LICENSE").write_text("CC-BY-4.0")
    return root


def make_voxceleb1(parent: Path) -> Path:
    """Three speakers, two videos each, two utterances per video; split ids 1/2/3."""
    root = parent / "voxceleb1"
    lines = []
    for s, speaker in enumerate(("id10001", "id10002", "id10003")):
        for v, video in enumerate(("1zcIwhmdeo4", "7gWzIy6yIIk")):
            for u in (1, 2):
                relative = f"{speaker}/{video}/{u:05d}.wav"
                write_clip(root / "wav" / relative, 0.3 + 0.1 * u, rate=16000, freq=150 + 60 * s)
                split = 1 if v == 0 else 1 + u  # video 0 -> train, video 1 -> one val and one test
                lines.append(f"{split} {relative}")
    lines.append("3 id10003/zzzzzzzzzzz/00001.wav")  # not on disk
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return root


ONTOLOGY = [
    {"id": "/m/09x0r", "name": "Speech", "child_ids": []},
    {"id": "/m/04rlf", "name": "Music", "child_ids": []},
    {"id": "/m/0bt9lr", "name": "Dog", "child_ids": []},
    {"id": "/m/05zppz", "name": "Male speech, man speaking", "child_ids": []},
    {"id": "/m/0jbk", "name": "Animal", "child_ids": []},
    {"id": "/m/07yv9", "name": "Vehicle", "child_ids": []},  # in no CSV
]
HEADER = (
    "# Segments csv created Sun Mar  5 10:54:25 2017\n# num_ytids=3\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
)


def make_audioset(parent: Path) -> Path:
    root = parent / "audioset"
    root.mkdir()
    (root / "ontology.json").write_text(json.dumps(ONTOLOGY))
    (root / "balanced_train_segments.csv").write_text(HEADER + (
        '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/05zppz"\n'
        '-0RWZT-miFs, 420.000, 430.000, "/m/0bt9lr,/m/0jbk"\n'
        'a_b-c_d_e1f, 0.000, 10.000, "/m/04rlf"\n'
        'missingAAAA, 10.000, 20.000, "/m/04rlf,/m/09x0r"\n'
    ))
    (root / "eval_segments.csv").write_text(HEADER + (
        'YxEvalId001, 5.000, 15.000, "/m/04rlf"\n'
        'evalMiss002, 5.000, 15.000, "/m/0jbk"\n'
    ))
    (root / "unbalanced_train_segments.csv").write_text(HEADER + '_unbal_0003, 1.500, 11.500, "/m/0bt9lr"\n')
    clips = root / "clips"
    write_clip(clips / "--PJHxphWEs.wav", 0.5)  # {YTID}.wav
    write_clip(clips / "balanced" / "Y-0RWZT-miFs.flac", 0.4, rate=22050)  # Y{YTID}, in a sub-folder
    write_clip(clips / "a_b-c_d_e1f_0.000.wav", 0.3)  # {YTID}_{start}; the id holds '_' itself
    write_clip(clips / "YYxEvalId001.wav", 0.6)  # Y + an id that starts with Y
    write_clip(clips / "_unbal_0003_1500_11500.wav", 0.3, rate=16000)
    write_clip(clips / "unrelated0001.wav", 0.3)
    return root


# Two dialogs per session: (dialog, [(utterance speaker + number, label), ...]). Kept per
# session: neu, hap (exc), ang, sad, hap; dropped: fru, xxx.
IEMOCAP_DIALOGS = (
    ("impro01", (("F000", "neu"), ("M000", "exc"), ("F001", "ang"), ("M001", "fru"))),
    ("script01_1", (("F000", "sad"), ("M000", "hap"), ("M001", "xxx"))),
)
IEMOCAP_MISSING = "Session5/sentences/wav/Ses05M_script01_1/Ses05M_script01_1_F002.wav"


def make_iemocap(parent: Path) -> Path:
    """``IEMOCAP_full_release``: five sessions, each with an improvised dialog led by the
    female actor and a scripted one led by the male actor (``Ses0NF_impro01``,
    ``Ses0NM_script01_1``), their ``dialog/EmoEvaluation/<dialog>.txt`` with the annotators'
    lines, and ``sentences/wav/<dialog>/<utterance>.wav``. Session 5 lists one more
    utterance (``IEMOCAP_MISSING``) that is not on disk; Session 1 has a macOS ``._`` file
    and the ``Categorical/`` sub-folder of the release beside the label files."""
    root = parent / "IEMOCAP_full_release"
    for session in range(1, 6):
        folder = root / f"Session{session}"
        labels = folder / "dialog" / "EmoEvaluation"
        labels.mkdir(parents=True)
        for lead, (name, utterances) in zip("FM", IEMOCAP_DIALOGS):
            dialog = f"Ses{session:02d}{lead}_{name}"
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            listed = list(utterances) + ([("F002", "neu")] if session == 5 and lead == "M" else [])
            for index, (turn, label) in enumerate(listed):
                utterance = f"{dialog}_{turn}"
                times = f"[{2.0 * index + 0.5:.4f} - {2.0 * index + 1.7:.4f}]"
                lines += [
                    f"{times}\t{utterance}\t{label}\t[2.5000, 3.0000, 3.5000]",
                    "C-E1:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", "",
                ]
                if f"{folder.name}/sentences/wav/{dialog}/{utterance}.wav" != IEMOCAP_MISSING:
                    write_clip(folder / "sentences" / "wav" / dialog / f"{utterance}.wav", 0.2 + 0.05 * index,
                               rate=16000, freq=180 + 30 * session + 20 * index)
            (labels / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    labels = root / "Session1" / "dialog" / "EmoEvaluation"
    (labels / "._Ses01F_impro01.txt").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
    (labels / "Categorical").mkdir()
    (labels / "Categorical" / "Ses01F_impro01_e2_cat.txt").write_text("Ses01F_impro01_F000 :Neutral state; ()\n")
    return root


# --- checkpoints ---------------------------------------------------------------------------


def tiny_encoder(**changes) -> ASTEncoder:
    config = dict(embed_dim=128, depth=2, num_heads=2, input_tdim=96)
    torch.manual_seed(0)
    return ASTEncoder(EncoderConfig(**{**config, **changes})).eval()


def hf_config(**changes):
    """A tiny Hugging Face ``ASTConfig`` (``transformers`` is imported only here: it is slow)."""
    import transformers

    settings = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                    max_length=100, frequency_stride=10, time_stride=10)
    return transformers.ASTConfig(**{**settings, **changes})


def ssast_state(encoder: ASTEncoder, finetuned: bool = False, classes: int = 4) -> dict:
    """An official-SSAST-layout state dict built from the published key list."""
    state = {f"module.v.{k}": v for k, v in encoder.state_dict().items() if k != "mask_embed"}
    dim, patch = encoder.embed_dim, encoder.config.fshape * encoder.config.tshape
    state["module.v.head.weight"], state["module.v.head.bias"] = torch.randn(1000, dim), torch.randn(1000)  # DeiT's
    if finetuned:
        state.update({"module.mlp_head.0.weight": torch.rand(dim), "module.mlp_head.0.bias": torch.rand(dim),
                      "module.mlp_head.1.weight": torch.randn(classes, dim), "module.mlp_head.1.bias": torch.randn(classes)})
    else:
        state["module.mask_embed"] = encoder.mask_embed.detach().clone()
        for name in ("cpredlayer", "gpredlayer"):
            state.update({f"module.{name}.0.weight": torch.randn(dim, dim), f"module.{name}.0.bias": torch.zeros(dim),
                          f"module.{name}.2.weight": torch.randn(patch, dim), f"module.{name}.2.bias": torch.zeros(patch)})
        state["module.p_input_fdim"] = torch.tensor(128)
        state["module.p_input_tdim"] = torch.tensor(encoder.config.input_tdim)
    return state


# --- a local HTTP server -------------------------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server(folder: Path, handler: type[http.server.BaseHTTPRequestHandler] = QuietHandler) -> Iterator[str]:
    """Serve ``folder`` on localhost from a thread; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def logged(run: Path, name: str) -> list[float]:
    """Every value of ``name`` a run's CSVLogger (``<run>/csv/version_0``) wrote, in order."""
    rows = list(csv.DictReader((run / "csv/version_0/metrics.csv").open()))
    return [float(row[name]) for row in rows if row.get(name)]


# --- recipes, resolved as the CLIs compose them ---------------------------------------------

# The files a recipe composes on, before its own, as its header says (the stage's base.yaml is the CLI's).
RECIPE_FAMILY: dict[tuple[str, str], list[str]] = {
    **{("finetune", name): ["superb"] for name in ("speechcommands_v1_12", "voxceleb1_sid", "iemocap_er")},
    **{("finetune", name): ["eat"] for name in ("eat_as20k", "eat_as2m", "eat_spcv2")},
    ("finetune", "eat_esc50"): ["eat", "esc50_folds"],
    **{("finetune", name): ["esc50_folds"] for name in ("esc50", "esc50_imagenet")},
    **{("finetune", f"demo_{task}"): ["demo"] for task in ("events", "keywords", "speakers")},
    **{("pretrain", f"{method}_demo"): ["demo"] for method in ("mspm", "asit", "eat")},
}


def recipe_files(stage: str, name: str) -> list[Path]:
    """The files a recipe is given as, as its header says (the stage's base is read by the CLI):
    the files it composes on (:data:`RECIPE_FAMILY`), then its own."""
    configs = Path(__file__).resolve().parents[1] / "configs" / stage
    return [configs / f"{family}.yaml" for family in RECIPE_FAMILY.get((stage, name), [])] + [configs / f"{name}.yaml"]


def recipe_args(stage: str, name: str) -> list[str]:
    """``--config`` arguments of a recipe (:func:`recipe_files`)."""
    return [arg for path in recipe_files(stage, name) for arg in ("--config", str(path))]


def resolved_recipe(stage: str, name: str, *options: str, after: tuple[str, ...] = ()) -> dict:
    """A recipe's ``--print_config``, composed as :func:`recipe_files`, then the files named
    ``after`` (``frame_tokens``) and ``options`` (``--model.init_args.size``, ``tiny``)."""
    from finetune.cli import build_cli as finetune_cli
    from pretrain.cli import build_cli as pretrain_cli

    configs = Path(__file__).resolve().parents[1] / "configs" / stage
    files = [*recipe_files(stage, name), *(configs / f"{file}.yaml" for file in after)]
    output = io.StringIO()
    build = finetune_cli if stage == "finetune" else pretrain_cli
    try:
        with contextlib.redirect_stdout(output):
            build(["fit", *[arg for path in files for arg in ("--config", str(path))], *options, "--print_config"])
    except SystemExit as exited:
        assert exited.code in (0, None), exited.code
    return yaml.safe_load(output.getvalue())
