"""The demo corpus: deterministic, complete, and not solvable by level or length."""

import json

import pytest
import torch

from ssast.demo.corpus import TASKS, ClipSpec, build_demo, make_clip
from ssast.data.shards import list_shards, read_classes
from ssast.data.stats import read_stats
from ssast.features import Fbank


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    build_demo(out, scale=0.02, seed=3, workers=2, progress=False)  # one clip a class and split: ~140 in all
    return out


def tar_bytes(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.tar"))}


def test_layout(corpus):
    manifest = json.loads((corpus / "demo.json").read_text())
    assert set(manifest["tasks"]) == {"events", "keywords", "speakers", "unlabeled"}
    for name in ("events", "keywords", "speakers"):
        classes = read_classes(corpus / name / "classes.txt")
        assert len(classes) >= 8
        for split in ("train", "val", "test"):
            assert list_shards(corpus / name, split)
        mean, std = read_stats(corpus / name / "stats.json")
        assert -12 < mean < 0 and 1 < std < 8
    assert list_shards(corpus / "unlabeled")
    assert manifest["tasks"]["speakers"]["clips"]["train"] == 1 * 10  # at least one per class (24 * 0.02 rounds to 0)


def test_same_seed_same_bytes_whatever_the_workers(corpus, tmp_path):
    build_demo(tmp_path, scale=0.02, seed=3, workers=1, progress=False)
    assert tar_bytes(tmp_path) == tar_bytes(corpus)
    assert read_stats(tmp_path / "events/stats.json") == pytest.approx(read_stats(corpus / "events/stats.json"), rel=1e-9)


def test_another_seed_gives_other_audio():
    spec = ClipSpec("events", "train", 0, "tone", seed=0)
    assert torch.equal(make_clip(spec), make_clip(spec))
    assert not torch.equal(make_clip(spec), make_clip(ClipSpec("events", "train", 0, "tone", seed=1)))


def test_keeps_the_same_corpus_and_refuses_to_overwrite_another(corpus):
    made = (corpus / "demo.json").stat().st_mtime_ns
    assert "already there" in str(build_demo(corpus, scale=0.02, seed=3, progress=False))
    assert (corpus / "demo.json").stat().st_mtime_ns == made
    with pytest.raises(FileExistsError, match="overwrite"):
        build_demo(corpus, scale=0.02, seed=4, progress=False)


def leave_one_out_accuracy(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Nearest class centroid, each clip left out of its own centroid."""
    classes = labels.unique()
    sums = torch.stack([features[labels == c].sum(0) for c in classes])
    counts = torch.stack([(labels == c).sum() for c in classes]).float()
    correct = 0
    for feature, label in zip(features, labels):
        own = classes == label
        centroids = (sums - own[:, None] * feature) / (counts - own.float())[:, None]
        correct += int(classes[(centroids - feature).norm(dim=1).argmin()] == label)
    return correct / len(labels)


def foreground_features(clip: torch.Tensor) -> torch.Tensor:
    """Crude content features: the loudest frames' spectrum over the quietest frames'
    (shape, not level), with the loud frames' spectral peakiness and flux."""
    logmel = Fbank()(clip)
    order = logmel.mean(1).argsort()
    count = max(1, len(order) // 5)
    loud, quiet = order[-count:], order[:count]
    contrast = logmel[loud].mean(0) - logmel[quiet].mean(0)
    peakiness = (logmel - logmel.mean(1, keepdim=True)).amax(1)[loud].mean()
    flux = logmel.diff(dim=0).abs().mean(1)[loud.clamp(max=len(logmel) - 2)].mean()
    return torch.cat([contrast - contrast.mean(), torch.stack([peakiness, flux])])


@pytest.mark.slow  # synthesizes and analyses 10 clips a class (up to a minute a task)
@pytest.mark.parametrize("task", ["events", "keywords", "speakers"])
def test_classes_differ_in_content_not_in_level_or_length(task):
    classes = TASKS[task].classes
    clips, labels = [], []
    for index in range(10 * len(classes)):
        clips.append(make_clip(ClipSpec(task, "train", index, classes[index % len(classes)], seed=0)))
        labels.append(index % len(classes))
    labels = torch.tensor(labels)
    assert len({clip.numel() for clip in clips}) == 1
    chance = 1 / len(classes)
    level_db = torch.stack([20 * clip.square().mean().sqrt().log10() for clip in clips])[:, None]
    by_level = leave_one_out_accuracy(level_db, labels)
    by_content = leave_one_out_accuracy(torch.stack([foreground_features(clip) for clip in clips]), labels)
    # Seen at seed 0: level 1-1.8x chance; content 2.6x (keywords) to 5.5x (speakers).
    assert by_level < 2.5 * chance
    assert by_content > 2 * chance and by_content > 2 * by_level
