"""Dataset recipes: tiny fake ESC-50, Speech Commands, VoxCeleb1 and AudioSet trees, in
their published layouts, written to shards and read back."""

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
import webdataset as wds

from conftest import tone
from ssast.data.cli import main
from ssast.data.reader import list_shards, read_classes
from ssast.data.recipes import SPEECH_COMMANDS, build_recipe, list_audioset, list_speechcommands

FAST = {"progress": False, "shard_size": 4}


def write_clip(path: Path, seconds: float = 0.3, rate: int = 8000, freq: float = 440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, tone(seconds, rate, freq), rate)


def read_back(out: Path, split: str) -> dict[str, dict]:
    """key -> json member of every sample in OUT/SPLIT."""
    samples = wds.WebDataset(list_shards(out, split), shardshuffle=False)
    return {sample["__key__"]: json.loads(sample["json"]) for sample in samples}


def label_counts(samples: dict[str, dict]) -> Counter:
    return Counter(label for meta in samples.values() for label in meta["labels"])


def assert_stats(out: Path, target_length: int) -> None:
    stats = json.loads((out / "stats.json").read_text())
    assert math.isfinite(stats["mean"]) and math.isfinite(stats["std"]) and stats["std"] > 0
    assert stats["target_length"] == target_length and stats["count"] > 0


# --------------------------------------------------------------------------- ESC-50


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


@pytest.fixture
def esc50(tmp_path: Path) -> Path:
    return make_esc50(tmp_path)


def test_esc50_one_folder_per_fold(esc50, tmp_path, capsys):
    out = tmp_path / "esc50"
    assert main(["esc50", str(esc50), str(out), "--workers", "1", "--shard-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "2 classes" in printed and "1 listed clips are not on disk" in printed and "stats over fold1+" in printed

    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == [f"fold{k}" for k in range(1, 6)]
    assert read_classes(out / "classes.txt") == ["dog", "thunderstorm"]
    for fold in range(1, 6):
        samples = read_back(out, f"fold{fold}")
        assert label_counts(samples) == {"dog": 1, "thunderstorm": 1}
        dog = samples[f"esc50/{fold}-10000-A-0"]
        assert dog["fold"] == fold and dog["esc10"] is True and dog["target"] == 0 and dog["split"] == f"fold{fold}"
        assert samples[f"esc50/{fold}-100019-A-19"]["esc10"] is False
        assert dog["sr"] == 16000 and abs(dog["duration"] - (0.2 + 0.1 * fold)) < 1e-3
    assert (out / "missing.txt").read_text() == "audio/5-99999-B-0.wav\tfold5\n"
    assert_stats(out, 512)
    assert json.loads((out / "stats.json").read_text())["count"] == 10  # all folds: ESC-50 has no train split


def test_esc50_errors_are_clear(esc50, tmp_path):
    with pytest.raises(FileNotFoundError, match="esc50.csv"):
        build_recipe("esc50", tmp_path, tmp_path / "out", **FAST)
    (esc50 / "meta/esc50.csv").write_text("filename,fold,category\nx.wav,1,dog\n")
    with pytest.raises(ValueError, match="target, esc10"):
        build_recipe("esc50", esc50, tmp_path / "out", **FAST)
    assert main(["esc50", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


# --------------------------------------------------------------------------- Speech Commands

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


@pytest.fixture
def speechcommands(tmp_path: Path) -> Path:
    return make_speechcommands(tmp_path)


def test_speechcommands_all_words(speechcommands, tmp_path):
    out = tmp_path / "sc"
    summary = build_recipe("speechcommands", speechcommands, out, workers=2, **FAST)
    words = sorted((*SPEECH_COMMANDS, *OTHER_WORDS))
    assert read_classes(out / "classes.txt") == words  # _background_noise_ is no label
    assert summary.clips == {"train": 12, "val": 12, "test": 12} and summary.missing == 1
    for split, speaker in (("val", SPEAKERS[0]), ("test", SPEAKERS[1]), ("train", SPEAKERS[2])):
        samples = read_back(out, split)
        assert label_counts(samples) == {word: 1 for word in words}
        assert {meta["speaker"] for meta in samples.values()} == {speaker}
    meta = read_back(out, "val")[f"speechcommands/right/{SPEAKERS[0]}_nohash_0"]
    assert meta["path"] == f"right/{SPEAKERS[0]}_nohash_0.wav" and meta["word"] == "right"
    assert (out / "missing.txt").read_text() == "yes/ffffffff_nohash_3.wav\ttest\n"
    assert_stats(out, 128)
    assert json.loads((out / "stats.json").read_text())["count"] == 12  # train only


def test_speechcommands_12_classes_with_silence(speechcommands, tmp_path):
    out = tmp_path / "sc12"
    assert main(["speechcommands", str(speechcommands), str(out), "--variant", "12", "--workers", "2"]) == 0
    assert read_classes(out / "classes.txt") == sorted((*SPEECH_COMMANDS, "_unknown_", "_silence_"))
    # 6 + 5 one-second segments, numbered across the files in name order (pink, then white):
    # index % 10 == 8 -> val, == 9 -> test, else train.
    silence = {"train": 9, "val": 1, "test": 1}
    for split in ("train", "val", "test"):
        samples = read_back(out, split)
        counts = label_counts(samples)
        assert counts == {**{word: 1 for word in SPEECH_COMMANDS}, "_unknown_": 2, "_silence_": silence[split]}
        unknown = {meta["word"] for meta in samples.values() if meta["labels"] == ["_unknown_"]}
        assert unknown == set(OTHER_WORDS)
        for key, meta in samples.items():
            if meta["labels"] == ["_silence_"]:
                assert key.startswith("speechcommands/_silence_/") and meta["duration"] == 1.0
                assert meta["path"].startswith("_background_noise_/") and meta["end"] - meta["start"] == 1.0
                assert "speaker" not in meta
    assert "speechcommands/_silence_/white_noise/0003" in read_back(out, "val")  # global index 5 + 3 = 8
    assert_stats(out, 128)

    # The same listing twice: the silence assignment is fixed.
    first, second = (list_speechcommands(speechcommands, variant=12).items for _ in range(2))
    assert [(item.key, item.split) for item in first] == [(item.key, item.split) for item in second]


def test_speechcommands_errors_are_clear(speechcommands, tmp_path):
    with pytest.raises(FileNotFoundError, match="validation_list.txt"):
        build_recipe("speechcommands", tmp_path, tmp_path / "out", **FAST)
    with pytest.raises(ValueError, match="variant"):
        build_recipe("speechcommands", speechcommands, tmp_path / "out", variant=20, **FAST)
    for noise in (speechcommands / "_background_noise_").iterdir():
        noise.unlink()
    (speechcommands / "_background_noise_").rmdir()
    with pytest.raises(FileNotFoundError, match="_background_noise_"):
        build_recipe("speechcommands", speechcommands, tmp_path / "out", variant=12, **FAST)


# --------------------------------------------------------------------------- VoxCeleb1


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


@pytest.fixture
def voxceleb1(tmp_path: Path) -> Path:
    return make_voxceleb1(tmp_path)


def test_voxceleb1_identification_splits(voxceleb1, tmp_path):
    out = tmp_path / "vox"
    summary = build_recipe("voxceleb1", voxceleb1, out, **FAST)
    speakers = ["id10001", "id10002", "id10003"]
    assert read_classes(out / "classes.txt") == speakers and summary.classes == 3
    assert summary.clips == {"train": 6, "val": 3, "test": 3} and summary.missing == 1
    expected = {"train": ("1zcIwhmdeo4", 2), "val": ("7gWzIy6yIIk", 1), "test": ("7gWzIy6yIIk", 1)}
    for split, (video, per_speaker) in expected.items():
        samples = read_back(out, split)
        assert label_counts(samples) == {speaker: per_speaker for speaker in speakers}
        assert {meta["video"] for meta in samples.values()} == {video}
        assert all(meta["speaker"] == meta["labels"][0] for meta in samples.values())
    assert "voxceleb1/id10002/7gWzIy6yIIk/00002" in read_back(out, "test")
    assert (out / "missing.txt").read_text() == "wav/id10003/zzzzzzzzzzz/00001.wav\ttest\n"
    assert_stats(out, 1000)


def test_voxceleb1_errors_are_clear(voxceleb1, tmp_path):
    with pytest.raises(FileNotFoundError, match="iden_split.txt"):
        build_recipe("voxceleb1", tmp_path, tmp_path / "out", **FAST)
    (voxceleb1 / "iden_split.txt").write_text("4 id10001/abc/00001.wav\n")
    with pytest.raises(ValueError, match="iden_split.txt:1"):
        build_recipe("voxceleb1", voxceleb1, tmp_path / "out", **FAST)


# --------------------------------------------------------------------------- AudioSet

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


@pytest.fixture
def audioset(tmp_path: Path) -> Path:
    return make_audioset(tmp_path)


def test_audioset_names_splits_and_missing_clips(audioset, tmp_path, capsys):
    out = tmp_path / "as"
    code = main(["audioset", str(audioset), str(out), "--clips", str(audioset / "clips"), "--workers", "1"])
    assert code == 0
    assert "2 listed clips are not on disk" in capsys.readouterr().out
    classes = read_classes(out / "classes.txt")
    # Names of every mid in the CSVs, the missing clips' included; 'Vehicle' is in no CSV.
    assert classes == sorted(["Speech", "Male speech, man speaking", "Dog", "Animal", "Music"])

    balanced = read_back(out, "balanced_train")
    assert sorted(balanced) == ["audioset/--PJHxphWEs", "audioset/-0RWZT-miFs", "audioset/a_b-c_d_e1f"]
    speech = balanced["audioset/--PJHxphWEs"]
    assert speech["labels"] == ["Speech", "Male speech, man speaking"] and speech["mids"] == ["/m/09x0r", "/m/05zppz"]
    assert speech["ytid"] == "--PJHxphWEs" and speech["start"] == 30.0 and speech["end"] == 40.0
    assert balanced["audioset/-0RWZT-miFs"]["path"] == "balanced/Y-0RWZT-miFs.flac"
    assert balanced["audioset/a_b-c_d_e1f"]["path"] == "a_b-c_d_e1f_0.000.wav"
    assert list(read_back(out, "eval")) == ["audioset/YxEvalId001"]
    assert read_back(out, "unbalanced_train")["audioset/_unbal_0003"]["start"] == 1.5

    index = {name: position for position, name in enumerate(classes)}
    multi_hot = np.zeros((len(balanced), len(classes)), dtype=int)
    for row, key in enumerate(sorted(balanced)):
        multi_hot[row, [index[label] for label in balanced[key]["labels"]]] = 1
    assert multi_hot.tolist() == [[0, 0, 1, 0, 1], [1, 1, 0, 0, 0], [0, 0, 0, 1, 0]]  # Animal Dog Male Music Speech

    assert (out / "missing.txt").read_text() == "missingAAAA\tbalanced_train\nevalMiss002\teval\n"
    assert_stats(out, 1024)
    assert json.loads((out / "stats.json").read_text())["count"] == 3  # balanced_train only

    # A second run refuses before touching anything, and replaces everything with --overwrite.
    (audioset / "clips/--PJHxphWEs.wav").unlink()
    assert main(["audioset", str(audioset), str(out), "--clips", str(audioset / "clips"), "--no-stats"]) == 2
    assert read_classes(out / "classes.txt") == classes
    arguments = ["audioset", str(audioset), str(out), "--clips", str(audioset / "clips"), "--no-stats", "--overwrite"]
    assert main(arguments) == 0
    assert read_classes(out / "classes.txt") == classes  # the listing's classes, not just those on disk
    assert "--PJHxphWEs" in (out / "missing.txt").read_text() and len(read_back(out, "balanced_train")) == 2


def test_audioset_default_clips_folder_and_errors(audioset, tmp_path):
    (audioset / "clips").rename(audioset / "audio")
    plan = list_audioset(audioset)
    assert len(plan.items) == 5 and len(plan.missing) == 2
    (audioset / "unbalanced_train_segments.csv").unlink()  # optional
    assert {item.split for item in list_audioset(audioset).items} == {"balanced_train", "eval"}

    with pytest.raises(FileNotFoundError, match="--clips"):
        list_audioset(audioset, clips=tmp_path / "nowhere")
    (audioset / "eval_segments.csv").write_text(HEADER + 'abc, 0, 10, "/m/unknown"\n')
    with pytest.raises(ValueError, match="/m/unknown"):
        list_audioset(audioset)
    (audioset / "eval_segments.csv").unlink()
    with pytest.raises(FileNotFoundError, match="eval_segments.csv"):
        list_audioset(audioset)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="ontology.json"):
        build_recipe("audioset", tmp_path / "empty", tmp_path / "out", **FAST)
