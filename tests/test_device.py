"""Device selection: auto falls back to the CPU, cuda without a GPU is a one-line error; GPU paths
skip with a reason here (no GPU on this machine)."""

from __future__ import annotations

import re

import pytest
import yaml

from slimtune import runner
from slimtune.errors import SlimtuneError
from slimtune.recipe import parse

from test_ddp import cli_main, recipe

NO_GPU = not __import__("torch").cuda.is_available()


@pytest.fixture(scope="module")
def base(tmp_path_factory, tokenizer):
    import torch
    from transformers import BertModel

    from conftest import tiny_config

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("device") / "base"
    BertModel(tiny_config()).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def no_gpu_message(torch) -> str:
    """What `--device cuda` must say on a machine without a GPU, for the torch build installed: the
    CPU-only build (what pip takes where it finds the CPU wheel) or a CUDA-enabled one (what PyPI
    serves on Linux; it runs on the CPU too)."""
    if torch.version.cuda is not None:
        why = f"no GPU visible to this CUDA {torch.version.cuda} build"
    elif getattr(torch.version, "hip", None):
        why = f"no GPU visible to this ROCm {torch.version.hip} build"
    else:
        why = "a CPU-only torch build"
    return f"device: cuda requested but torch.cuda.is_available() is False ({why}); use device: auto or cpu"


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present: the CPU fallback is not reachable here")
def test_auto_falls_back_to_cpu_and_cuda_without_gpu_is_an_error(base, tiny_csv, tmp_path, monkeypatch, capsys):
    import torch

    from slimtune.compute import resolve_device

    message = no_gpu_message(torch)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(SlimtuneError) as e:
        resolve_device("cuda")
    assert str(e.value) == message
    with pytest.raises(SlimtuneError, match=r"r.yaml: device must be one of auto, cpu, cuda, not 'tpu'"):
        parse(recipe(base, tiny_csv, device="tpu"), "r.yaml")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(base, tiny_csv)))
    for nproc in ("1", "2"):  # in the run itself, and before launching processes
        code, err = cli_main(monkeypatch, capsys, "run", path, "--out", tmp_path / "o", "--device", "cuda", "--nproc", nproc)
        assert code == 2, err
        assert err.strip().splitlines()[-1].endswith(message)
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cuda, hip, why", [
    (None, None, "a CPU-only torch build"),
    ("12.8", None, "no GPU visible to this CUDA 12.8 build"),
    (None, "6.4.1", "no GPU visible to this ROCm 6.4.1 build"),
], ids=["cpu-only", "cuda", "rocm"])
def test_each_torch_build_says_why_there_is_no_gpu(monkeypatch, cuda, hip, why):
    """Every build's message, whichever build this suite runs on (torch.version is what tells them apart)."""
    import torch

    from slimtune.compute import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", hip)
    with pytest.raises(SlimtuneError) as e:
        resolve_device("cuda", where="r.yaml: device")
    assert str(e.value) == f"r.yaml: device: cuda requested but torch.cuda.is_available() is False ({why}); use device: auto or cpu"
    assert str(e.value) == "r.yaml: " + no_gpu_message(torch)
    assert resolve_device("auto") == "cpu"


def test_setup_names_the_torch_build_it_installed(monkeypatch):
    """The line `make setup` prints: a CPU-only build plainly; a CUDA-enabled one with its size and
    the way to the CPU-only build (the size of torch's own files and the nvidia-*/cuda-*/triton ones)."""
    import torch

    from slimtune.compute import torch_build

    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    assert torch_build("make it so") == "torch 2.13.0+cpu (CPU-only build)"
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    line = torch_build("rm -rf .venv && make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert re.fullmatch(r"torch 2\.13\.0 with CUDA 12\.8 \(CUDA-enabled build, ~\d+\.\d GB; to get the CPU-only build: "
                        r"rm -rf \.venv && make setup TORCH_INDEX=https://download\.pytorch\.org/whl/cpu\)", line), line
    assert float(line.split("~")[1].split()[0]) > 0  # at least torch's own files, whichever build is installed


def test_onnx_provider_names_the_missing_gpu_package(tiny_clf_dir):
    import onnxruntime as ort

    from slimtune.compute import onnx_providers
    from slimtune.artifacts import load_predictor

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    with pytest.raises(SlimtuneError, match=r"--provider: 'rocm' is not one of cpu, cuda, tensorrt"):
        onnx_providers("rocm")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SlimtuneError, match=r"--provider cuda: this onnxruntime .* has no CUDAExecutionProvider .*install onnxruntime-gpu"):
            onnx_providers("cuda")
    with pytest.raises(SlimtuneError, match="applies to ONNX artifacts"):
        load_predictor(tiny_clf_dir, 32, provider="cuda")


@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU on this machine")
def test_cuda_training_uses_mixed_precision(base, tiny_csv, tmp_path):
    import torch

    from slimtune.compute import Compute

    kw = Compute("cuda").training_arguments(8)
    assert kw["use_cpu"] is False and kw["bf16"] == torch.cuda.is_bf16_supported() and kw["fp16"] != kw["bf16"]
    raw = recipe(base, tiny_csv, device="cuda")
    raw["stages"] = raw["stages"][:1]
    report = runner.run(parse(raw), tmp_path, log=lambda m: None)
    assert report["compute"]["device"] == "cuda" and report["hardware"]["gpu"]["name"]
    assert report["stages"][0]["metrics"]["eval_device"] == "cuda"  # evaluated on the GPU, timed on the CPU


@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU on this machine")
def test_gpu_evaluation_matches_the_cpu(tiny_clf_dir):
    import numpy as np

    from slimtune.artifacts import load_predictor
    from tests.conftest import synthetic_rows

    texts = [t for t, _ in synthetic_rows(16)]
    pred = load_predictor(tiny_clf_dir, 32)
    cpu = pred.logits(texts)
    gpu = pred.to("cuda").logits(texts)
    assert isinstance(gpu, np.ndarray) and np.abs(gpu - cpu).max() < 1e-3


def test_cpu_run_records_cpu_evaluation(base, tiny_csv, tmp_path):
    raw = recipe(base, tiny_csv, device="cpu")
    raw["stages"] = raw["stages"][:1]
    report = runner.run(parse(raw), tmp_path, log=lambda m: None)
    assert report["stages"][0]["metrics"]["eval_device"] == "cpu"


@pytest.mark.skipif(NO_GPU, reason="no CUDA GPU on this machine")
def test_hardware_fingerprint_names_the_gpu():
    from slimtune.measure.bench import hardware

    assert hardware()["gpu"]["name"]
