"""`slimtune serve` speed settings that do not depend on timing: the served ONNX session's options."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from slimtune.artifacts import load_predictor
from slimtune.compute import physical_cores
from slimtune.server import ServeConfig, load

SPINNING = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_clf_dir):
    from slimtune.artifacts import load_model
    from slimtune.export import write as export

    out = tmp_path_factory.mktemp("serve-speed") / "onnx"
    export(*load_model(tiny_clf_dir), "onnx", out)
    return out


def _chosen(options) -> dict:
    return {"intra_op": options.intra_op_num_threads, "inter_op": options.inter_op_num_threads,
            "mode": options.execution_mode, "level": options.graph_optimization_level,
            "spinning": options.get_session_config_entry(SPINNING)}


def test_served_onnx_session_does_not_spin(onnx_dir):
    # a spinning intra-op pool busy-waits between calls on the cores the event loop needs
    served = load(onnx_dir, ServeConfig(max_length=32)).predictors[None]
    assert _chosen(served.session.get_session_options()) == {
        "intra_op": physical_cores(), "inter_op": 1, "mode": ort.ExecutionMode.ORT_SEQUENTIAL,
        "level": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "spinning": "0"}


def test_benchmarked_onnx_session_spins_and_sets_every_option(onnx_dir):
    # `slimtune bench` and evaluation run calls back to back: spinning threads catch the next one sooner
    options = load_predictor(onnx_dir, 32).session.get_session_options()
    assert _chosen(options) == {
        "intra_op": physical_cores(), "inter_op": 1, "mode": ort.ExecutionMode.ORT_SEQUENTIAL,
        "level": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "spinning": "1"}
    assert load_predictor(onnx_dir, 32, threads=1).session.get_session_options().intra_op_num_threads == 1


def test_physical_cores_counts_a_core_once():
    import os

    import psutil

    n = physical_cores()
    assert 1 <= n <= len(os.sched_getaffinity(0)) and n <= (psutil.cpu_count(logical=False) or n)
