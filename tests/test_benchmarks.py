"""The pretraining-step benchmark runs and reports what it promises (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_pretrain_step_reports_distill_beside_mspm():
    command = [sys.executable, "benchmarks/pretrain_step.py", "--method", "distill", "--size", "mini",
               "--batch", "2", "--frames", "64", "--view-frames", "48", "--mask-patches", "10", "--passes", "1",
               "--align", "16", "--warmup", "0", "--steps", "1"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["method"] == "distill" and "official_style" not in report
    distill, mspm = report["distill"], report["passes"]["1"]
    assert distill["step_s"] > 0 and mspm["step_s"] > 0
    assert distill["tflop_per_step"] > mspm["tflop_per_step"]  # two views, teacher and student
    assert report["ratio_distill_vs_passes1"] == round(distill["step_s"] / mspm["step_s"], 3)
