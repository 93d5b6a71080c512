"""The benchmarks run and print their tables (speed is never asserted here: bench/ measures it), and
the data-path speed-ups they motivated compute exactly what the straightforward code computes."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers.commands import FP32, ROOT

# what a benchmark's train.py runs need to print their rows: two steps, small evaluation sets
FEW = ["--train-limit", "64", "--eval-limit", "20", *FP32]


def bench(script: str, *args: str, timeout: float = 600) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def table_row(output: str, first_cell: str) -> list[str]:
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{output}")


def leading_number(cell: str) -> float:
    """The number a cell starts with, its sign included ('1,234.5 (1,200.0-1,300.1)' -> 1234.5)."""
    match = re.match(r"[-+]?(\d[\d,]*(\.\d*)?|\.\d+)", cell.strip())
    assert match, f"no number at the start of {cell!r}"
    return float(match.group(0).replace(",", ""))


def assert_measured(*cells: str) -> None:
    """Timings, throughputs or ratios that were measured: each printed as a number (their size depends
    on the machine's load, and a quick one rounds to 0, so no bound)."""
    for cell in cells:
        assert math.isfinite(leading_number(cell)) and leading_number(cell) >= 0, f"measured {cell!r}"


@pytest.mark.slow
def test_data_pipeline_prints_ratio_against_naive_pipeline():
    out = bench("data_pipeline.py", "--level", "2", "--repeats", "1", "--ours-images", "128",
                "--naive-images", "32", "--workers", "0")
    assert "hardware:" in out and "versions:" in out and "command:" in out
    row = table_row(out, "2")
    assert "RandAugment 2x9" in row[1] and "Mixup/CutMix" in row[1] and row[2] == "128 px"
    assert_measured(row[3])
    assert row[-1].endswith(")") and "x" in row[-1]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--no-augment"]], ids=["full", "no-augment"])
def test_loop_overhead_times_the_real_loop_against_a_bare_one(tiny_cifar, tmp_path, extra):
    out = bench("loop_overhead.py", "--arch", "test_resnet", "--img-size", "32", "--level", "1",
                "--dataset", tiny_cifar, "--train-limit", "128", "--batch-size", "32", "--repeats", "1",
                "--mixed-precision", "no", *extra)  # not the CPU's measured choice: a fixed row
    assert "4 batches (128 images) per measurement" in out
    assert ("WITHOUT augmentation" in out) == bool(extra)
    row = table_row(out, "1")
    assert row[1] == "test_resnet" and row[4] == "no"
    assert_measured(row[7], row[8])
    timed = re.search(r"augmentation: ([\d.]+) ms per batch inside the loop .* ([\d.]+) ms per batch run alone", out)
    assert (timed is None) == bool(extra)
    if timed:
        assert_measured(timed.group(1), timed.group(2))


@pytest.mark.slow
def test_time_to_accuracy_runs_train_py_and_reports_mean(tiny_cifar, tmp_path):
    out = bench("time_to_accuracy.py", "--dataset", tiny_cifar, "--seeds", "3", "--arch", "test_resnet",
                "--img-size", "32", "--batch-size", "32", "--no-pretrained", "--epochs", "0", "1",
                "--lr", "1e-2", "1e-2", "--ema", "0.9", "--keep-runs", tmp_path, *FEW)
    row = table_row(out, "3")
    assert 0 <= leading_number(row[1]) <= 100 and row[1].endswith("%")
    assert "mean ± sd (1 seeds)" in out
    kept = json.loads((tmp_path / "seed3" / "L1-test_resnet-s3" / "results.json").read_text())
    assert f"{kept['test_acc']:.2%}" == row[1]
    # --ema: a second table sets the last epoch's raw weights beside the EMA, from results.json
    assert "raw weights (= without --ema) against the EMA (decay 0.9)" in out
    ema_row = out.split("against the EMA")[1].split("\n| 3 | ")[1].split("\n")[0].split(" | ")
    final = kept["final_weights"]
    assert ema_row[:4] == [f"{100 * final[w][k]:.2f} ± 0.00%" for k in ("val_acc", "test_acc")
                           for w in ("raw", "ema")]


@pytest.mark.slow
def test_plain_loop_baseline_trains_and_reports_per_seed(tiny_cifar):
    out = bench("plain_loop.py", "--dataset", tiny_cifar, "--seeds", "1", "--arch", "test_resnet",
                "--epochs", "1", "--workers", "0")
    assert "plain loop: test_resnet 32 px, 1 epochs" in out and "jitter 0.2" in out
    assert 0 <= leading_number(table_row(out, "1")[1]) <= 100
    assert "mean ± sd (1 seeds)" in out


@pytest.mark.slow
def test_cpu_precision_compares_fp32_with_bf16():
    out = bench("cpu_precision.py", "--quick", "--repeats", "1")
    assert "AMX tiles:" in out
    for work in ("matmul 128x128", "conv 3x3 256->256 at 16 px, batch 8, fwd+bwd",
                 "cifar_speednet training step, batch 64"):
        fp32, bf16, ratio = (leading_number(cell) for cell in table_row(out, work)[2:5])
        # the speeds print rounded to integers (a slow one may show 0), their ratio to 0.01: it is
        # the ratio of these two speeds, up to their rounding
        assert min(fp32, bf16, ratio) >= 0, (work, out)
        assert (bf16 - 0.5) / (fp32 + 0.5) <= ratio + 0.005, (work, out)
        assert fp32 < 0.5 or ratio - 0.005 <= (bf16 + 0.5) / (fp32 - 0.5), (work, out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_gpu_benchmark_says_plainly_that_no_gpu_was_found():
    out = bench("gpu.py")
    assert out.startswith("no GPU found") and "img/s" not in out


@pytest.mark.parametrize("shape,size", [((2, 3, 32, 32), 128), ((2, 3, 32, 32), 144),
                                        ((2, 3, 32, 32), 16), ((1, 3, 32, 40), 64)])
def test_matmul_resize_equals_bilinear_interpolate(shape, size):
    from cifar10_levels.data.normalize import resize_bilinear

    x = torch.rand(shape)
    expected = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_bilinear(x, size), expected, atol=1e-6, rtol=1e-6)


def test_window_translate_equals_per_pixel_indexing():
    from cifar10_levels.data.augment import translate

    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    dx, dy = torch.randint(-4, 5, (16,)), torch.randint(-4, 5, (16,))
    padded = F.pad(x, (4,) * 4)
    expected = torch.stack([padded[i, :, 4 - dy[i]:36 - dy[i], 4 - dx[i]:36 - dx[i]] for i in range(16)])
    assert torch.equal(translate(x, dx, dy, 4), expected)


@pytest.mark.slow
def test_step_costs_prints_optimizer_gather_and_augmentation_rows():
    out = bench("step_costs.py", "--archs", "test_resnet", "--calls", "1", "--repeats", "1",
                "--batch-size", "8")
    for name in (*(f"AdamW step, test_resnet, {kind}" for kind in ("per-tensor", "foreach", "fused")),
                 "gather 8 of 45,000 uint8 images, index_select", "level 1, batch 8: whole TrainAugment",
                 "level 2, batch 8: RandAugment 2x9, per image (ours)",
                 "level 2, batch 8: whole TrainAugment (mixing phase)"):
        assert_measured(table_row(out, name)[1])


@pytest.mark.slow
def test_tta_views_scores_each_scheme_on_kept_checkpoints(tiny_cifar, tmp_path_factory):
    from helpers.runs import trained_run

    run = trained_run("speednet", tiny_cifar, tmp_path_factory)
    out = bench("tta_views.py", "--dataset", tiny_cifar, "--weights", run / "best.safetensors",
                run / "last.safetensors", "--batch-size", "64")
    results = json.loads((run / "results.json").read_text())
    plain = table_row(out, "plain")
    assert plain[1] == f"{results['test_acc']:.2%}"          # the same plain test as train.py's
    for scheme in ("mirror", "ours, 4 views, logits",
                   "airbench, 6 views: 1 px reflect shifts, weights 1/4 1/4 1/8 x4, logits"):
        row = table_row(out, scheme)
        assert len(row) == 4 and all(0 <= leading_number(c) <= 100 for c in row[1:])


@pytest.mark.slow
def test_side_by_side_runs_ours_and_another_command_and_prints_ratios(tiny_cifar, tmp_path):
    # the "other recipe" stands in as a one-liner that reports its seed's accuracy in percent
    other = (f"{sys.executable} -c \"import sys; print('seed', sys.argv[1], 'test acc: 40.00%')\" {{seed}}")
    out = bench("side_by_side.py", "--dataset", tiny_cifar, "--seeds", "3", "4", "--other", other,
                "--other-accuracy", r"test acc: ([0-9.]+)%", "--ours-metric", "plain",
                "--log-dir", tmp_path, "--", "--arch", "test_resnet", "--img-size", "32",
                "--batch-size", "32", "--no-pretrained", "--epochs", "0", "1", "--lr", "1e-2", "1e-2", *FEW)
    assert "hardware:" in out and "ours: train.py --arch test_resnet" in out
    assert (tmp_path / "other-seed4.log").read_text().startswith("seed 4 ")
    for seed, order in (("3", "ours first"), ("4", "other first")):
        row = table_row(out, seed)
        assert row[1] == order and row[3] == "40.00%"
        ours_acc = leading_number(row[2]) / 100
        assert leading_number(row[6]) == pytest.approx(ours_acc / 0.40, abs=1e-4)
        assert_measured(row[4], row[5], row[7])
    assert "mean (2 seeds)" in out


@pytest.mark.slow
def test_side_by_side_names_the_flag_when_the_accuracy_is_not_in_the_output(tiny_cifar):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "side_by_side.py"), "--dataset", tiny_cifar,
                           "--other", f"{sys.executable} -c \"print('done')\"", "--other-accuracy", r"acc ([0-9.]+)",
                           "--ours-metric", "plain", "--", "--arch", "test_resnet", "--img-size", "32", "--batch-size", "32",
                           "--no-pretrained", "--epochs", "0", "1", "--train-limit", "64", "--eval-limit", "64"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode != 0
    assert "--other-accuracy 'acc ([0-9.]+)': no match in the other command's output" in done.stderr


def test_shifted_weight_grad_conv_matches_autograd(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from fast_step_levers import ShiftedWeightGradConv
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, 7, dtype=torch.float64).to(memory_format=torch.channels_last)
    weight = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    grad = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    ours_x, ours_w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    ShiftedWeightGradConv.apply(ours_x, ours_w).backward(grad)
    ref_x, ref_w = x.clone().requires_grad_(), weight.clone().requires_grad_()
    F.conv2d(ref_x, ref_w, padding=1).backward(grad)
    torch.testing.assert_close(ours_w.grad, ref_w.grad)
    torch.testing.assert_close(ours_x.grad, ref_x.grad)


@pytest.mark.slow
def test_fast_step_levers_prints_each_candidate_against_the_baseline():
    out = bench("fast_step_levers.py", "--batch", "16", "--repeats", "1", "--sizes", "24")
    for name in ("baseline: 32 px, oneDNN", "24 px training images", "shifted weight grad (convs at <= 7 px)",
                 "3 Newton-Schulz iterations"):
        assert_measured(*table_row(out, name)[1:3])
