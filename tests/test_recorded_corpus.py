"""The corpus of real recordings (ssast.demo.recorded), built from a fake /usr/share of
generated tones in the Debian packages' layout and a fake instrument renderer: layout,
counts, splits that keep speakers and words apart, and an unlabeled pool that never holds
a validation or test recording."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ssast.data.shards import list_shards, read_classes
from ssast.demo.corpus import CORPUS_VERSION, SPLITS, TASKS, build_demo
from ssast.demo.instrument_figures import INSTRUMENTS, NOTE_DELAY, Figure, Note, figures_midi
from ssast.demo.recorded import build_recorded
from ssast.demo.recorded_sources import LETTERS, MIN_SPEAKER_WORDS, SOUNDFONTS, MissingSourceError
from ssast.demo.runner import main as demo_main

RATE = 16_000
SCALE = 0.02  # one clip a class and split; 40 unlabeled clips
KEYWORD_VOICES = ("v1", "v2", "v3", "v4", "v5")  # the corpus splits them 2 / 1 / 2


def speech(path: Path, freq: float, rate: int = RATE, seconds: float = 0.3) -> None:
    """A tone between stretches of silence, like a word in its recording; every freq
    gives other bytes."""
    t = np.arange(round(seconds * rate)) / rate
    sound = 0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(t.size)
    silence = np.zeros(round(0.1 * rate))
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.concatenate([silence, sound, silence]).astype(np.float32), rate)


def fake_renderer(font: Path, figures, spacing: float, out: Path) -> None:
    """Each note a sine at its pitch, where fluidsynth would put it."""
    audio = np.zeros(round(len(figures) * spacing * RATE), dtype=np.float32)
    for position, figure in enumerate(figures):
        for note in figure.notes:
            start = round((position * spacing + NOTE_DELAY + note.onset) * RATE)
            t = np.arange(round(note.duration * RATE)) / RATE
            freq = 440 * 2 ** ((note.pitch - 69) / 12) * (1.01 if font.name.startswith("Tim") else 1.0)
            audio[start : start + t.size] += note.velocity / 127 * 0.2 * np.sin(2 * np.pi * freq * t)
    soundfile.write(out, audio, RATE)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("usr_share")
    freq = iter(range(200, 100_000, 7))
    for voice in KEYWORD_VOICES:  # Latin-alphabet voices: every letter in sounds.xml, and syllables
        folder = root / "klettres" / voice
        sounds = "".join(f'<sound name="{letter}" file="{voice}/alpha/{letter.lower()}.ogg" />' for letter in LETTERS)
        for letter in LETTERS:
            speech(folder / "alpha" / f"{letter.lower()}.ogg", next(freq), rate=22050)
        for syllable in ("ba", "do"):
            speech(folder / "syllab" / f"{syllable}.ogg", next(freq), rate=22050)
        (folder / "sounds.xml").write_text(f"<klettres><language code='{voice}'><alphabet>{sounds}</alphabet>"
                                           "</language></klettres>")
    for syllable in ("ka", "ri", "mu"):  # another script: no letters the keywords use
        speech(root / "klettres" / "xx" / "syllab" / f"{syllable}.ogg", next(freq))
    words = root / "ktuberling" / "sounds"
    for voice in ("sa", "sb"):  # the speakers
        for index in range(MIN_SPEAKER_WORDS):
            speech(words / voice / f"word{index:02d}.wav", next(freq))
    speech(words / "sa" / "xmas_ball.wav", next(freq))  # one word under two theme names
    speech(words / "sa" / "ball.wav", next(freq))
    shutil.copy(words / "sa" / "word00.wav", words / "sa" / "tv_woman.wav")  # one recording under two names
    speech(words / "sa" / "old_session.wav", next(freq), rate=8000)  # another format: left out
    for index in range(5):  # a small voice, a folder that copies it, and a copy of a speaker's word
        speech(words / "sm" / f"small{index}.wav", next(freq))
    shutil.copytree(words / "sm", words / "sm@copy")
    for index in range(MIN_SPEAKER_WORDS):
        shutil.copy(words / "sa" / f"word{index:02d}.wav", words / "sm" / f"copied{index:02d}.wav")
    (words / "sa.soundtheme").write_text("not a voice")
    for font in SOUNDFONTS:
        (root / "sounds" / "sf2").mkdir(parents=True, exist_ok=True)
        (root / "sounds" / "sf2" / font).write_bytes(b"fake soundfont")
    return root


def build(out: Path, root: Path, **options) -> str:
    options = {"scale": SCALE, "seed": 3, "workers": 1, "progress": False, "renderer": fake_renderer, **options}
    return str(build_recorded(out, root=root, **options))


@pytest.fixture(scope="module")
def corpus(root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("recorded")
    build(out, root)
    return out


def clips(folder: Path) -> list[dict]:
    """The json member of every clip under ``folder``."""
    found = []
    for shard in sorted(folder.rglob("*.tar")):
        with tarfile.open(shard) as tar:
            found += [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    return found


def digest(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def test_layout_classes_and_counts_are_the_demo_corpus_s(corpus):
    manifest = json.loads((corpus / "demo.json").read_text())
    assert (manifest["version"], manifest["source"], manifest["seed"], manifest["scale"]) == (CORPUS_VERSION,
                                                                                                "recorded", 3, SCALE)
    assert {"klettres/v1", "klettres/xx", "ktuberling/sounds/sa", "sounds/sf2/TimGM6mb.sf2"} <= set(manifest["sources"])
    assert "ktuberling/sounds/sm@copy" not in manifest["sources"]  # all its files are copies
    classes = {
        "events": sorted(INSTRUMENTS), "keywords": sorted(letter.lower() for letter in LETTERS), "speakers": ["sa", "sb"],
    }
    for task, names in classes.items():
        assert read_classes(corpus / task / "classes.txt") == names
        assert (corpus / task / "stats.json").is_file()
        entry = manifest["tasks"][task]
        assert entry["target_length"] == TASKS[task].target_length
        for split, per_class in SPLITS.items():
            expected = max(1, round(per_class * SCALE)) * len(names)
            assert entry["clips"][split] == expected == len(clips(corpus / task / split))
            assert list_shards(corpus / task, split)
        made = clips(corpus / task)
        assert {clip["labels"][0] for clip in made} == set(names)
        assert {clip["duration"] for clip in made} == {TASKS[task].clip_seconds}
    unlabeled = clips(corpus / "unlabeled")
    assert manifest["tasks"]["unlabeled"]["clips"]["all"] == len(unlabeled) == 40
    assert {clip["kind"] for clip in unlabeled} == {"words", "letters", "instruments"}
    assert {clip["font"] for clip in clips(corpus / "events")} == set(SOUNDFONTS)


def test_keyword_voices_and_speaker_words_never_share_splits(corpus):
    voices, words = defaultdict(set), defaultdict(set)
    for clip in clips(corpus / "keywords"):
        voices[clip["split"]].add(clip["voice"])
        assert clip["recordings"] == [f"{clip['voice']}/alpha/{clip['labels'][0]}.ogg"]
    for clip in clips(corpus / "speakers"):
        assert all(name.startswith(f"ktuberling/sounds/{clip['speaker']}/") for name in clip["recordings"])
        words[clip["split"]].update((clip["speaker"], Path(name).stem) for name in clip["recordings"])
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not voices[first] & voices[second]
        assert not words[first] & words[second]
    # one word under two names, one recording under two names: each pair in one split
    for pair in (("xmas_ball", "ball"), ("tv_woman", "word00")):
        assert sum(bool({("sa", word) for word in pair} & used) for used in words.values()) <= 1
    assert ("sa", "old_session") not in set().union(*words.values())


def test_no_validation_or_test_recording_reaches_the_unlabeled_pool(corpus, root):
    manifest = json.loads((corpus / "demo.json").read_text())
    held_voices = set(manifest["tasks"]["keywords"]["voices"]["val"] + manifest["tasks"]["keywords"]["voices"]["test"])
    held = {name for task in ("keywords", "speakers") for clip in clips(corpus / task)
            if clip["split"] != "train" for name in clip["recordings"]}
    # every recording of a held-out keyword voice, letters and syllables alike
    held |= {path.relative_to(root).as_posix() for voice in held_voices for path in (root / voice).rglob("*.ogg")}
    unlabeled = [name for clip in clips(corpus / "unlabeled") for name in clip.get("recordings", [])]
    assert unlabeled and not set(unlabeled) & held
    assert not {digest(root / name) for name in unlabeled} & {digest(root / name) for name in held}
    assert not {name.rsplit("/", 2)[0] for name in unlabeled} & held_voices


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(corpus, root, tmp_path):
    def tars(folder: Path) -> dict[str, bytes]:
        return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.tar"))}

    build(tmp_path / "again", root, workers=2)
    assert tars(tmp_path / "again") == tars(corpus)
    assert (tmp_path / "again/demo.json").read_text() == (corpus / "demo.json").read_text()
    build(tmp_path / "other", root, seed=4)
    assert tars(tmp_path / "other")["keywords/train/train-000000.tar"] != tars(corpus)["keywords/train/train-000000.tar"]


def test_keeps_the_same_corpus_and_refuses_another(corpus, root):
    assert "already there" in build(corpus, root)
    with pytest.raises(FileExistsError, match="overwrite"):
        build(corpus, root, seed=4)
    with pytest.raises(FileExistsError, match="overwrite"):  # the synthetic corpus is another corpus
        build_demo(corpus, scale=SCALE, seed=3, progress=False)


@pytest.mark.parametrize("missing, package", [
    ("klettres", "klettres-data"), ("ktuberling", "ktuberling-data"),
    ("sounds/sf2/FluidR3_GM.sf2", "fluid-soundfont-gm"), ("sounds/sf2/TimGM6mb.sf2", "timgm6mb-soundfont"),
])
def test_a_missing_package_is_named_with_its_apt_get(root, tmp_path, missing, package):
    partial = tmp_path / "root"
    shutil.copytree(root, partial)
    target = partial / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(MissingSourceError, match=f"apt-get install {package}"):
        build(tmp_path / "out", partial)
    assert not (tmp_path / "out").exists()  # found out before anything was written


def test_the_cli_reports_a_missing_package(tmp_path):
    with pytest.raises(SystemExit, match="ssast-demo recorded: error: .*apt-get install klettres-data"):
        demo_main(["recorded", "--root", str(tmp_path), "--out", str(tmp_path / "out")])


def test_the_midi_file_holds_every_note():
    figures = [Figure(40, (Note(0.0, 0.5, 60, 100),)), Figure(0, (Note(0.0, 0.2, 64, 90), Note(0.3, 0.2, 67, 80)))]
    midi = figures_midi(figures, spacing=4.0)
    assert midi[:4] == b"MThd" and midi[14:18] == b"MTrk"
    assert int.from_bytes(midi[18:22], "big") == len(midi) - 22
    assert midi.count(bytes([0xC0, 40])) == midi.count(bytes([0xC0, 0])) == 1
    assert sum(midi.count(bytes([0x90, pitch, velocity])) for pitch, velocity in ((60, 100), (64, 90), (67, 80))) == 3


