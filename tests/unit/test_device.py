"""Run config ``device``: resolution (``fedapp.device``), the CPU path unchanged bit for bit,
``cuda`` refused clearly without CUDA, and one local round on CUDA where there is a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedapp import client_app, task
from fedapp.config import ConfigError, RunConfig
from fedapp.data import DATASET_SPECS, Split
from fedapp.device import DeviceUnavailable, device_of, resolve_device
from fedapp.privacy.budget import DPState
from fedapp.privacy.dp_sgd import dp_train

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = DATASET_SPECS["breast-cancer"]
NO_CUDA = "no CUDA device on this machine (torch.cuda.is_available() is False)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)


def _cuda_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any question to torch.cuda fails the test."""
    def forbidden(*_: object, **__: object) -> None:
        raise AssertionError("device='cpu' touched torch.cuda")

    for name in ("is_available", "device_count", "init", "_lazy_init", "current_device"):
        monkeypatch.setattr(torch.cuda, name, forbidden)


def _data(rows: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, SPEC.num_features)).astype(np.float32)
    return Split(x, rng.integers(0, SPEC.num_classes, rows).astype(np.int64))


def test_cpu_never_consults_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda_forbidden(monkeypatch)
    assert resolve_device("cpu") == torch.device("cpu")


def test_cuda_without_cuda_fails_naming_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable) as err:
        resolve_device("cuda")
    message = str(err.value)
    assert message.startswith("device='cuda' (run config key `device`) but ")
    assert "set device='auto'" in message and "device='cpu'" in message
    assert isinstance(err.value, ConfigError)


def test_cuda_refusal_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(DeviceUnavailable, match="is built without CUDA"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(DeviceUnavailable, match="client-resources-num-gpus > 0"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_auto_resolves_to_cpu_here() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert RunConfig().device == "auto"


def test_auto_follows_availability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_bad_device_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="device='gpu' is not one of: auto, cpu, cuda"):
        RunConfig(device="gpu")


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_training_on_the_resolved_device_equals_the_cpu_path_bit_for_bit(kind: str) -> None:
    """Here 'auto' resolves to the CPU: the results equal the call without a device (the
    path before ``device`` existed, which ``test_cold_start_train`` checks against
    ``torch.optim.SGD`` bit for bit), weights included."""
    spec = DATASET_SPECS["digits"] if kind == "cnn" else SPEC
    rng = np.random.default_rng(3)
    data = Split(rng.normal(size=(90, spec.num_features)).astype(np.float32),
                 rng.integers(0, spec.num_classes, 90).astype(np.int64))
    torch.manual_seed(0)
    before, resolved = task.build_model(kind, spec), task.build_model(kind, spec)
    resolved.load_state_dict(before.state_dict())
    device = resolve_device("auto")
    assert task.train(resolved, data, 2, 16, 0.05, 11, device) == task.train(
        before, data, 2, 16, 0.05, 11)
    assert task.evaluate(resolved, data, device=device) == task.evaluate(before, data)
    for (name, a), (_, b) in zip(before.state_dict().items(), resolved.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_dp_sgd_on_the_resolved_device_equals_the_cpu_path_bit_for_bit() -> None:
    data = _data(64, 4)
    state = DPState.plan(target_epsilon=3.0, delta=1e-5, num_examples=64, batch_size=16,
                         local_epochs=1, num_rounds=2)
    torch.manual_seed(0)
    before, resolved = task.build_model("mlp", SPEC, 8), task.build_model("mlp", SPEC, 8)
    resolved.load_state_dict(before.state_dict())
    args = (data, 1, 16, 0.05, 7, 1.0, state.noise_multiplier, 1e-5, state)
    expected = dp_train(before, *args, deterministic_noise=True)
    got = dp_train(resolved, *args, deterministic_noise=True, device=resolve_device("auto"))
    assert got == expected
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(),
                                                 resolved.state_dict().values(), strict=True))


def _train_message(cfg: RunConfig, tmp_path: Path) -> tuple[Message, Context]:
    rng = np.random.default_rng(5)
    x, y = np.abs(rng.normal(size=(40, SPEC.num_features))), rng.integers(0, 2, 40)
    csv = tmp_path / "hospital.csv"
    csv.write_text("\n".join([",".join([*SPEC.feature_names, "label"]), *(
        ",".join([*map(str, r), str(label)]) for r, label in zip(x, y, strict=True))]) + "\n")
    model = task.build_model(cfg.model, SPEC, cfg.hidden_units)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": 1})})
    msg = Message(content, dst_node_id=1, message_type=MessageType.TRAIN)
    ctx = Context(run_id=1, node_id=1, node_config={"data-path": str(csv)}, state=RecordDict(),
                  run_config=cfg.to_flower())
    return msg, ctx


@pytest.mark.parametrize("dp", ["off", "local"])
def test_clientapp_on_cpu_never_touches_cuda(dp: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig(dataset="breast-cancer", tracking=False, local_epochs=1, hidden_units=8,
                    device="cpu", dp=dp, dp_epsilon=8.0)
    msg, ctx = _train_message(cfg, tmp_path)
    _cuda_forbidden(monkeypatch)
    reply = client_app.app(msg, ctx)
    assert not reply.has_error(), reply.error
    assert reply.content["metrics"]["num-examples"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_clientapp_with_cuda_and_no_cuda_fails_naming_the_key(tmp_path: Path) -> None:
    cfg = RunConfig(dataset="breast-cancer", tracking=False, local_epochs=1, device="cuda")
    msg, ctx = _train_message(cfg, tmp_path)
    with pytest.raises(Exception, match=r"device='cuda' \(run config key `device`\)"):
        client_app.app(msg, ctx)


@needs_cuda
def test_one_local_round_on_cuda() -> None:
    """task.train, DP-SGD (Opacus) and evaluation on CUDA: the model comes back on the CPU,
    and the results are close to the CPU's (not bit-identical: other kernels)."""
    data = _data(96, 6)
    cuda = resolve_device("cuda")
    torch.manual_seed(0)
    on_cpu, on_gpu = task.build_model("mlp", SPEC, 16), task.build_model("mlp", SPEC, 16)
    on_gpu.load_state_dict(on_cpu.state_dict())
    cpu_loss, _ = task.train(on_cpu, data, 2, 16, 0.05, 3)
    gpu_loss, _ = task.train(on_gpu, data, 2, 16, 0.05, 3, cuda)
    assert device_of(on_gpu) == torch.device("cpu")
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-3)
    for a, b in zip(on_cpu.state_dict().values(), on_gpu.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert task.evaluate(on_gpu, data, device=cuda)[1] == pytest.approx(
        task.evaluate(on_cpu, data)[1], abs=0.03)
    state = DPState.plan(target_epsilon=3.0, delta=1e-5, num_examples=96, batch_size=16,
                         local_epochs=1, num_rounds=1)
    loss, _, eps, _ = dp_train(on_gpu, data, 1, 16, 0.05, 7, 1.0, state.noise_multiplier, 1e-5,
                               state, device=cuda)
    assert np.isfinite(loss) and 0 < eps <= 3.0 * 1.01
    assert device_of(on_gpu) == torch.device("cpu")
