"""The pretraining-step benchmark runs and reports what it promises (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path

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
