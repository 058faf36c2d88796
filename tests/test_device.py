"""Device selection: auto falls back to the CPU, cuda without a GPU is a one-line error; GPU paths
skip with a reason here (no GPU on this machine)."""

from __future__ import annotations

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


@pytest.mark.skipif(not NO_GPU, reason="a GPU is present: the CPU fallback is not reachable here")
def test_auto_falls_back_to_cpu_and_cuda_without_gpu_is_an_error(base, tiny_csv, tmp_path, monkeypatch, capsys):
    from slimtune.compute import resolve_device

    assert resolve_device("auto") == "cpu"
    with pytest.raises(SlimtuneError, match="device: cuda requested but torch.cuda.is_available"):
        resolve_device("cuda")
    with pytest.raises(SlimtuneError, match=r"r.yaml: device must be one of auto, cpu, cuda, not 'tpu'"):
        parse(recipe(base, tiny_csv, device="tpu"), "r.yaml")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(base, tiny_csv)))
    for nproc in ("1", "2"):  # in the run itself, and before launching processes
        code, err = cli_main(monkeypatch, capsys, "run", path, "--out", tmp_path / "o", "--device", "cuda", "--nproc", nproc)
        assert code == 2, err
        assert err.strip().splitlines()[-1].endswith(
            "device: cuda requested but torch.cuda.is_available() is False (a CPU-only torch build); use device: auto or cpu")
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


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
