"""Bad checkpoints get an error naming the file and the problem; the real one loads."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from gallery.errors import CheckpointError
from gallery.models.checkpoint import read_checkpoint
from gallery.models.policy import load_policy, policy_from_checkpoint
from tests.reference.checkpoints import make_checkpoint


def _write(tmp_path, data, name="m.jd"):
    path = tmp_path / name
    joblib.dump(data, path)
    return path


def _fails(path, match):
    with pytest.raises(CheckpointError, match=match) as err:
        load_policy(path)
    assert str(path) in str(err.value)


def test_missing_params_and_args(tmp_path):
    _fails(_write(tmp_path, {"nothing": 1}), "missing 'params' and 'args'")
    _fails(_write(tmp_path, {"args": {"cnn": "clear"}}), "missing 'params'")
    _fails(_write(tmp_path, [1, 2]), "top level is a list")


def test_unknown_cnn_and_lstm(tmp_path):
    ckpt = make_checkpoint("clear")
    ckpt["args"]["cnn"] = "resnet"
    _fails(_write(tmp_path, ckpt), "args.cnn is 'resnet'")
    ckpt = make_checkpoint("clear")
    ckpt["args"]["use_lstm"] = 1
    _fails(_write(tmp_path, ckpt), "use_lstm")


def test_unknown_environment(tmp_path):
    ckpt = make_checkpoint("clear")
    ckpt["args"]["env_name"] = "pacman"
    _fails(_write(tmp_path, ckpt), "not a known Procgen game")
    ckpt["args"]["env_kind"] = "mujoco"
    _fails(_write(tmp_path, ckpt), "env_kind is 'mujoco'")


def test_wrong_shapes_are_named(tmp_path):
    ckpt = make_checkpoint("clear")
    ckpt["params"]["ppo2_model/pi/2b/conv2d/kernel:0"] = np.zeros((3, 3, 32, 32), np.float32)
    _fails(_write(tmp_path, ckpt), r"2b/conv2d/kernel:0 has shape \(3, 3, 32, 32\)")
    ckpt = make_checkpoint("impala")
    del ckpt["params"]["ppo2_model/pi/layer_7/bias:0"]
    _fails(_write(tmp_path, ckpt), "missing variable ppo2_model/pi/layer_7/bias:0")


def test_architecture_mismatch(tmp_path):
    ckpt = make_checkpoint("nature", env_kind="atari")
    ckpt["args"]["cnn"] = "clear"
    _fails(_write(tmp_path, ckpt), "does not match the clear architecture")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights(tmp_path, bad):
    ckpt = make_checkpoint("clear")
    ckpt["params"]["ppo2_model/pi/dense/bias:0"][3] = bad
    _fails(_write(tmp_path, ckpt), r"dense/bias:0.*1 NaN/inf")


def test_non_float_params(tmp_path):
    ckpt = make_checkpoint("clear")
    ckpt["params"]["ppo2_model/pi/b:0"] = np.arange(15)
    _fails(_write(tmp_path, ckpt), "dtype int64")


def test_deeply_nested_containers_refused(tmp_path):
    ckpt = make_checkpoint("clear")
    nested: list = []
    for _ in range(100):
        nested = [nested]
    ckpt["extra"] = {"deep": nested}
    _fails(_write(tmp_path, ckpt), "nested deeper")


def test_defaults_filled_and_none_args(tmp_path):
    ckpt = make_checkpoint("clear")
    del ckpt["args"]["gamma"]
    ckpt["args"]["lambda"] = None
    read = read_checkpoint(_write(tmp_path, ckpt))
    assert read.args["gamma"] == 0.999 and read.args["lambda"] == 0.95
    assert policy_from_checkpoint(read).gamma == 0.999


def test_official_coinrun_checkpoint(coinrun_path):
    ckpt = read_checkpoint(coinrun_path)
    assert ckpt.sha256 == "18818904a32842cc177dd3c666b0229a657d0e96b9a7f2be197d6c7f4431a1ac"
    assert ckpt.arch == "clear" and ckpt.env_name == "coinrun"
    assert ckpt.extra["_rewmean_"] == pytest.approx(9.9, abs=1e-3)
    policy = policy_from_checkpoint(ckpt)
    assert policy.num_actions == 15
    assert policy.layer_shapes == {"1a": (64, 64, 16), "2a": (32, 32, 32), "2b": (32, 32, 32),
                                   "3a": (16, 16, 32), "4a": (8, 8, 32)}
