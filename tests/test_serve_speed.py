"""`slimtune serve` speed settings that do not depend on timing: the served ONNX session's options."""

from __future__ import annotations

import pytest

from slimtune.artifacts import load_predictor
from slimtune.server import ServeConfig, load

SPINNING = "session.intra_op.allow_spinning"


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory, tiny_clf_dir):
    from slimtune.artifacts import load_model
    from slimtune.export import write as export

    out = tmp_path_factory.mktemp("serve-speed") / "onnx"
    export(*load_model(tiny_clf_dir), "onnx", out)
    return out


def test_served_onnx_session_does_not_spin(onnx_dir):
    # a spinning intra-op pool busy-waits between calls on the cores the event loop needs
    served = load(onnx_dir, ServeConfig(max_length=32)).predictors[None]
    assert served.session.get_session_options().get_session_config_entry(SPINNING) == "0"


def test_other_onnx_predictors_keep_the_runtime_default(onnx_dir):
    # `slimtune bench` and evaluation measure ONNX Runtime as it comes (spinning on)
    options = load_predictor(onnx_dir, 32).session.get_session_options()
    with pytest.raises(Exception):  # no entry set: ORT's default applies
        options.get_session_config_entry(SPINNING)
