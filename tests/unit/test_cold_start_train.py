"""``task.train``'s dynamo-free SGD equals ``torch.optim.SGD``; the ClientApp stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedapp import task
from fedapp.data import DATASET_SPECS, Split

REPO = Path(__file__).resolve().parents[2]


def _data(spec_name: str, rows: int, seed: int) -> Split:
    spec = DATASET_SPECS[spec_name]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, spec.num_features)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, rows).astype(np.int64)
    return Split(x, y)


def optim_train(model: torch.nn.Module, data: Split, epochs: int, batch_size: int, lr: float,
                seed: int) -> tuple[float, float]:
    """The reference: the same loop with ``torch.optim.SGD(momentum=0.9)``."""
    x, y = torch.from_numpy(np.ascontiguousarray(data.x)), torch.from_numpy(data.y)
    gen = task.set_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    model.train()
    total_loss, correct = 0.0, 0
    for _ in range(epochs):
        total_loss, correct = 0.0, 0
        for idx in torch.randperm(len(y), generator=gen).split(batch_size):
            opt.zero_grad()
            out = model(x[idx])
            loss = loss_fn(out, y[idx])
            (loss / len(idx)).backward()
            opt.step()
            total_loss += loss.item()
            correct += int((out.argmax(1) == y[idx]).sum())
    return total_loss / len(y), correct / len(y)


@pytest.mark.parametrize(("dataset", "kind", "rows", "epochs", "batch"), [
    ("breast-cancer", "mlp", 152, 3, 32),
    ("digits", "cnn", 97, 2, 16),
    ("digits", "mlp", 64, 1, 64),
])
def test_task_train_matches_torch_optim_sgd_bit_for_bit(dataset: str, kind: str, rows: int,
                                                  epochs: int, batch: int) -> None:
    spec = DATASET_SPECS[dataset]
    data = _data(dataset, rows, 3)
    torch.manual_seed(0)
    reference = task.build_model(kind, spec)
    ours = task.build_model(kind, spec)
    ours.load_state_dict(reference.state_dict())
    expected = optim_train(reference, data, epochs, batch, 0.05, 11)
    got = task.train(ours, data, epochs, batch, 0.05, 11)
    assert got == expected
    for (name, a), (_, b) in zip(reference.state_dict().items(), ours.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name


def test_train_message_does_not_import_dynamo(tmp_path: Path) -> None:
    """A TRAIN message through the ClientApp (compression and attacks off) imports neither
    torch._dynamo (torch.optim's lazy import) nor a dataset or tracking library."""
    csv = tmp_path / "hospital.csv"
    spec = DATASET_SPECS["breast-cancer"]
    data = _data("breast-cancer", 40, 5)
    header = ",".join([*spec.feature_names, "label"])
    rows = [",".join([*map(str, np.abs(r)), str(label)]) for r, label in zip(data.x, data.y,
                                                                             strict=True)]
    csv.write_text("\n".join([header, *rows]) + "\n")
    child = f"""
import sys
import fedapp.client_app as ca
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from fedapp import task
from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS
TaskIdentity.run_id = TaskIdentity.node_id = TaskIdentity.task_id = 1
cfg = RunConfig(dataset="breast-cancer", tracking=False)
model = task.build_model(cfg.model, DATASET_SPECS["breast-cancer"], cfg.hidden_units)
content = RecordDict({{"arrays": ArrayRecord(model.state_dict()),
                      "config": ConfigRecord({{"server-round": 1}})}})
msg = Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)
ctx = Context(run_id=1, node_id=1, node_config={{"data-path": {str(csv)!r}}}, state=RecordDict(),
              run_config=cfg.to_flower())
reply = ca.app(msg, ctx)
assert not reply.has_error(), reply.error
heavy = ("torch._dynamo", "sympy", "sklearn", "mlflow", "opacus", "datasets")
print(",".join(m for m in heavy if m in sys.modules))
"""
    env = {"PYTHONPATH": str(REPO), "FEDAPP_DATA_CACHE": "off", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1:] in ([], [""]), result.stdout


@pytest.mark.parametrize(("env", "expected"), [
    ({}, 1),
    ({"FEDAPP_TORCH_THREADS": "2"}, 2),
    ({"OMP_NUM_THREADS": "3"}, None),  # left to torch
    ({"FEDAPP_TORCH_THREADS": "auto"}, None),
])
def test_torch_threads_default_to_one_unless_configured(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: int | None
) -> None:
    from fedapp import client_app

    before = torch.get_num_threads()
    monkeypatch.delenv("FEDAPP_TORCH_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        torch.set_num_threads(4)
        client_app._limit_torch_threads()
        assert torch.get_num_threads() == (4 if expected is None else expected)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_bad_torch_threads_value_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    from fedapp import client_app

    monkeypatch.setenv("FEDAPP_TORCH_THREADS", value)
    with pytest.raises(ValueError, match="FEDAPP_TORCH_THREADS"):
        client_app._limit_torch_threads()
