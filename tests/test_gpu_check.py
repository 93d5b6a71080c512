"""bench/gpu_check.sh on a machine without a GPU: one line saying so, exit 0, nothing measured."""
from __future__ import annotations

import os
import subprocess

from helpers.commands import ROOT


def test_gpu_check_without_a_gpu_says_so_in_one_line(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # hides any GPU this machine has
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dataset", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "gpu_check: no GPU found (torch.cuda.is_available() is False): nothing measured"]
    assert result.stderr == "" and list(tmp_path.iterdir()) == []
