"""The benchmarks run and report what they promise (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_pretrain_step_reports_asit_beside_mspm():
    command = [sys.executable, "benchmarks/pretrain_step.py", "--method", "asit", "--size", "mini",
               "--batch", "2", "--frames", "64", "--view-frames", "48", "--mask-patches", "10", "--passes", "1",
               "--align", "16", "--warmup", "0", "--steps", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["method"] == "asit" and "official_style" not in report
    asit, mspm = report["asit"], report["passes"]["1"]
    assert asit["step_s"] > 0 and mspm["step_s"] > 0
    assert asit["tflop_per_step"] > mspm["tflop_per_step"]  # two views, teacher and student
    assert report["ratio_asit_vs_passes1"] == round(asit["step_s"] / mspm["step_s"], 3)


def test_pretrain_step_reports_each_steps_flop_rate_against_the_machines_own_matmul():
    command = [sys.executable, "benchmarks/pretrain_step.py", "--method", "mspm", "--size", "mini",
               "--batch", "2", "--frames", "64", "--mask-patches", "10", "--passes", "1,2", "--warmup", "0",
               "--steps", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["matmul"]["shape"] == [(128 // 16) * (64 // 16) + 2, 192, 768] and report["matmul"]["fp32_tflop_s"] > 0
    for variant in (report["passes"]["1"], report["passes"]["2"], report["official_style"]):
        recomputed = variant["tflop_per_step"] / variant["step_s"] / report["matmul"]["fp32_tflop_s"]
        assert variant["matmul_ratio"] == pytest.approx(recomputed, rel=0.15)  # (from figures rounded for print)


def test_features_reports_the_training_pipeline_per_worker_from_flac_and_wav_beside_ssasts_loader():
    command = [sys.executable, "benchmarks/features.py", "--clips", "16", "--batch-size", "4", "--workers", "1",
               "--repeats", "1", "--batches", "2", "--mixup", "1.0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["training_mixup"] == 1.0 and report["training_roll_gain"] is True
    for kind in ("flac", "wav"):
        assert report[f"training_reader_{kind}_clips_per_s_per_worker"] > 0
    assert report["per_clip_kaldi_loader_clips_per_s_per_worker"] == report["per_clip_kaldi_loader_clips_per_s"]


@pytest.mark.slow  # about 1.5 minutes: every line at CPU size, a short real fit and two-rank runs among them
def test_bench_gpu_prints_every_line_at_cpu_size_with_nulls_where_cuda_is_needed():
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--workers", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_kind: dict[str, list[dict]] = {}
    for line in lines:
        by_kind.setdefault(line["benchmark"], []).append(line)
    assert [line["method"] for line in by_kind["gpu_step"]] == ["mspm", "asit", "eat"]
    steps = {line["method"]: line for line in by_kind["gpu_step"]}
    assert {"passes1/fp32/eager", "passes2/fp32/eager"} <= steps["mspm"].keys()
    for method, key in (("mspm", "passes2/fp32/eager"), ("asit", "asit/fp32/eager"), ("eat", "eat/fp32/eager")):
        figures = steps[method][key]
        assert figures["step_s"] > 0 and figures["tflop_per_step"] > 0 and figures["matmul_ratio"] > 0
        assert figures["clips_per_s"] == round(2 / figures["step_s"], 2) and figures["mfu"] is None  # no GPU peak
    assert [line["largest_batch"] for line in by_kind["gpu_largest_batch"]] == [None, None, None]
    assert by_kind["gpu_fbank"][0]["clips_per_s"] > 0 and by_kind["gpu_input"][0]["clips_per_s_per_worker"] > 0
    fit = by_kind["gpu_fit"][0]
    assert fit["steps"] == 6 and 0 <= fit["data_wait"] < 1 and fit["host_syncs_per_step"] is None
    ddp = by_kind["gpu_ddp"][0]
    assert ddp["backend"] == "gloo" and ddp["steps_per_rank"] == [4, 4]  # uneven shards, equal steps
    assert ddp["lost_rank_line"].startswith("ssast-pretrain: error: rank 0 lost rank 1")
    assert ddp["lost_rank_exit_code"] != 0 and ddp["lost_rank_ended_run_s"] < 120  # the 6 s timeout, not a hang
    assert by_kind["gpu_done"][0]["device_name"] == "cpu"
