"""Dataset recipes: tiny fake ESC-50, Speech Commands, VoxCeleb1, AudioSet and IEMOCAP trees,
in their published layouts, written to shards and read back."""

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from helpers import (
    HEADER, IEMOCAP_MISSING, OTHER_WORDS, SPEAKERS, make_audioset, make_esc50, make_iemocap, make_speechcommands,
    make_voxceleb1, write_clip,
)
from ssast.data.cli import main
from ssast.data.recipes.audioset import list_audioset
from ssast.data.recipes.build import build_recipe
from ssast.data.recipes.iemocap import list_iemocap
from ssast.data.recipes.speechcommands import SPEECH_COMMANDS, list_speechcommands
from ssast.data.shards import list_shards, read_classes

FAST = {"progress": False, "shard_size": 4}


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


def test_speechcommands_12_classes_with_the_released_v001_test_set(speechcommands, tmp_path):
    released = tmp_path / "speech_commands_test_set_v0.01"
    for name, count in (("yes", 2), ("_unknown_", 3), ("_silence_", 1)):
        for index in range(count):
            write_clip(released / name / f"{index:08x}_nohash_0.wav", 0.2, rate=16000)
    out = tmp_path / "ks1"
    assert main(["speechcommands", str(speechcommands), str(out), "--variant", "12", "--test-set", str(released),
                 "--workers", "2", "--no-stats"]) == 0
    test = read_back(out, "test")
    assert label_counts(test) == {"yes": 2, "_unknown_": 3, "_silence_": 1}  # the released clips only
    assert all(key.startswith("speechcommands/test_set/") and meta["test_set"] == "v0.01" for key, meta in test.items())
    trained = {meta["path"] for meta in read_back(out, "train").values()}
    assert not any(path.startswith(("yes/" + SPEAKERS[1], "no/" + SPEAKERS[1])) for path in trained)  # testing_list out
    with pytest.raises(ValueError, match="--variant 12"):
        list_speechcommands(speechcommands, test_set=released)
    (released / "marvin").mkdir()
    with pytest.raises(ValueError, match="marvin"):
        list_speechcommands(speechcommands, variant=12, test_set=released)


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


# --------------------------------------------------------------------------- IEMOCAP


@pytest.fixture
def iemocap(tmp_path: Path) -> Path:
    return make_iemocap(tmp_path)


def test_iemocap_one_folder_per_session(iemocap, tmp_path, capsys):
    out = tmp_path / "iemocap"
    assert main(["iemocap", str(iemocap), str(out), "--workers", "1", "--shard-size", "4"]) == 0
    printed = capsys.readouterr().out
    assert "4 classes" in printed and "1 listed clips are not on disk" in printed
    assert "10 utterances with other labels dropped (fru 5, xxx 5)" in printed and "stats over fold1+" in printed

    assert sorted(path.name for path in out.iterdir() if path.is_dir()) == [f"fold{k}" for k in range(1, 6)]
    assert read_classes(out / "classes.txt") == ["ang", "hap", "neu", "sad"]
    for session in range(1, 6):
        samples = read_back(out, f"fold{session}")
        assert label_counts(samples) == {"neu": 1, "hap": 2, "ang": 1, "sad": 1}  # exc counted as hap
        assert {meta["emotion"] for meta in samples.values()} == {"neu", "hap", "exc", "ang", "sad"}
        assert all(meta["session"] == meta["fold"] == session and meta["split"] == f"fold{session}"
                   for meta in samples.values())
        prefix = f"iemocap/Ses{session:02d}"
        excited = samples[f"{prefix}F_impro01_M000"]
        assert excited["labels"] == ["hap"] and excited["emotion"] == "exc"
        # The speaker is the utterance's own (its M/F letter), not the dialog's lead actor.
        assert excited["speaker"] == f"Ses{session:02d}M" and excited["dialog"] == f"Ses{session:02d}F_impro01"
        sad = samples[f"{prefix}M_script01_1_F000"]
        assert sad["labels"] == ["sad"] and sad["speaker"] == f"Ses{session:02d}F"
        dialog = f"Ses{session:02d}M_script01_1"
        assert sad["path"] == f"Session{session}/sentences/wav/{dialog}/{dialog}_F000.wav" and sad["dialog"] == dialog
        assert sad["vad"] == [2.5, 3.0, 3.5] and sad["sr"] == 16000 and abs(sad["duration"] - 0.2) < 1e-3
        assert not any(key.endswith("_M001") for key in samples)  # fru and xxx dropped
    assert (out / "missing.txt").read_text() == f"{IEMOCAP_MISSING}\tfold5\n"
    assert_stats(out, 600)
    assert json.loads((out / "stats.json").read_text())["count"] == 25  # every session: no train split


def test_iemocap_errors_are_clear(iemocap, tmp_path, caplog):
    # A wrong folder (here the one holding IEMOCAP_full_release): one line that names what is missing.
    caplog.set_level(logging.ERROR)
    assert main(["iemocap", str(iemocap.parent), str(tmp_path / "out")]) == 2
    [record] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    message = record.getMessage()
    assert "\n" not in message and "IEMOCAP_full_release" in message and "Session1/dialog/EmoEvaluation" in message
    assert main(["iemocap", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()

    evaluation = iemocap / "Session2/dialog/EmoEvaluation/Ses02F_impro01.txt"
    text = evaluation.read_text()
    evaluation.write_text(text.replace("\tneu\t[2.5000, 3.0000, 3.5000]", "\tneu"))
    with pytest.raises(ValueError, match=r"Ses02F_impro01.txt:3: expected"):
        list_iemocap(iemocap)
    evaluation.write_text(text.replace("Ses02F_impro01_F000", "Ses03F_impro01_F000"))
    with pytest.raises(ValueError, match="'Ses03F_impro01_F000' is not an utterance of Session2"):
        list_iemocap(iemocap)
    evaluation.write_text(text)

    for wav in (iemocap / "Session3/sentences/wav").rglob("*.wav"):
        wav.unlink()
    plan = list_iemocap(iemocap)  # a session without audio: its utterances are missing, not fatal
    assert plan.counts() == {"fold1": 5, "fold2": 5, "fold4": 5, "fold5": 5} and len(plan.missing) == 6
    (iemocap / "Session3/sentences/wav").rename(iemocap / "Session3/sentences/audio")
    with pytest.raises(FileNotFoundError, match="Session3/sentences/wav"):
        build_recipe("iemocap", iemocap, tmp_path / "out", **FAST)
