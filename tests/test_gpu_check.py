"""scripts/gpu-check.sh --dry-run: the GPU check's whole run on CPU torch, so the script cannot rot
between the rare runs on a GPU machine."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="torch is not installed (the torch backend is optional: pip install torch)")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
SECTIONS = ("## Machine", "## pytest -m gpu", "## Bench", "## Accuracy", "## Steps")


def run(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
    )


def test_dry_run_writes_every_section(tmp_path, yolo_tiny_onnx, assets_dir):
    started = time.monotonic()
    proc = run(tmp_path, "--dry-run")
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = (tmp_path / "gpu-check" / "summary.md").read_text()
    print(f"\n{summary}\ndry run: {took:.1f}s")
    positions = [summary.find(s) for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), positions
    for step in ("machine", "models", "pytest-gpu", "bench"):
        assert re.search(rf"^\| {step} \| ok \| \d+ \|$", summary, re.M), step
    assert "torch 2." in summary and "needs an NVIDIA GPU" in summary  # the gpu tests ran, and skipped with why
    for batch in (1, 2):
        for variant in ("bare", "jpeg path"):
            assert re.search(rf"^\| fp32 \| {batch} \| {variant} \| [\d.]+ \| [\d.]+ \|", summary, re.M), (
                batch,
                variant,
            )
    assert "fp16: CUDA only" in summary and "batch-1 latency of the whole path" in summary
    parity = re.search(r"JPEG path fp32 vs ONNX Runtime .*max box diff ([\d.]+) px.*unpaired (\d+)", summary)
    assert parity and float(parity[1]) <= 1.0 and parity[2] == "0", parity
    assert "coco-mini mAP@0.5" in summary and "torch fp32 - onnxruntime" in summary
    figures = json.loads((tmp_path / "gpu-check" / "bench.json").read_text())
    assert {(r["batch"], r["variant"]) for r in figures["rows"]} == {
        (b, v) for b in (1, 2) for v in ("bare", "jpeg path")
    }
    assert all(r["images_per_s"] > 0 for r in figures["rows"])
    assert (tmp_path / "gpu-check" / "pytest-gpu.log").exists()
    assert took < 60, f"the dry run took {took:.0f}s"


def test_deadline_stops_the_run_and_keeps_the_summary(tmp_path, yolo_tiny_onnx, assets_dir):
    proc = run(tmp_path, "--dry-run", DEADLINE_S="14")
    assert proc.returncode == 1, proc.stdout[-3000:]
    summary = (tmp_path / "gpu-check" / "summary.md").read_text()
    assert all(s in summary for s in ("## Machine", "## Steps"))
    assert re.search(r"\| (bench|pytest-gpu) \| (timed out after \d+s|not run: the 14s deadline) \|", summary), summary


def test_unknown_argument_is_refused(tmp_path):
    proc = run(tmp_path, "--gpu")
    assert proc.returncode == 2 and "usage: scripts/gpu-check.sh [--prepare | --dry-run], got '--gpu'" in proc.stderr
