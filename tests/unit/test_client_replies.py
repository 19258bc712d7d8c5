"""The ClientApp's replies: deliberate refusals as one-line error replies with fedapp's codes
(fedapp.node_errors), and what a train reply's metrics hold under ``train-metrics``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedapp import client_app, task
from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS
from fedapp.node_errors import BUDGET_REFUSED, DATA_ERROR, kind_of

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPEC = DATASET_SPECS["breast-cancer"]
FEATURES = list(getattr(SPEC, "feature_names", None) or
                (f"f{i}" for i in range(SPEC.num_features)))
HEADER = [*FEATURES, "label"]


def hospital_csv(path: Path, rows: int = 48, seed: int = 5) -> Path:
    """A valid breast-cancer-shaped hospital file."""
    rng = np.random.default_rng(seed)
    x = np.abs(rng.normal(size=(rows, SPEC.num_features)))
    y = rng.integers(0, SPEC.num_classes, rows)
    lines = [",".join([*map(str, r), str(label)]) for r, label in zip(x, y, strict=True)]
    path.write_text("\n".join([",".join(f'"{h}"' for h in HEADER), *lines]) + "\n")
    return path


def config(**overrides: object) -> RunConfig:
    base: dict[str, object] = {"dataset": "breast-cancer", "tracking": False, "local_epochs": 1,
                               "batch_size": 16, "hidden_units": 8}
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def message(cfg: RunConfig, kind: str = MessageType.TRAIN, server_round: int = 1) -> Message:
    model = task.build_model(cfg.model, SPEC, cfg.hidden_units)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=1, message_type=kind)


def context(cfg: RunConfig, data_path: Path, state: RecordDict | None = None) -> Context:
    return Context(run_id=1, node_id=1, node_config={"data-path": str(data_path)},
                   state=state if state is not None else RecordDict(),
                   run_config=cfg.to_flower())


def assert_refused(reply: Message, code: int, *fragments: str) -> None:
    assert reply.has_error(), "expected an error reply"
    assert reply.error.code == code
    assert "\n" not in reply.error.reason and "Traceback" not in reply.error.reason
    for fragment in fragments:
        assert fragment in reply.error.reason


def bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Unusable data files and a fragment their error must name."""
    missing = tmp_path / "absent.csv"
    no_label = tmp_path / "no_label.csv"
    hospital_csv(no_label)
    text = no_label.read_text().replace(',"label"\n', ',"diagnosis"\n', 1)
    assert '"diagnosis"' in text
    no_label.write_text(text)
    few = tmp_path / "few_columns.csv"
    few.write_text("a,b,label\n1,2,0\n3,4,1\n")
    return {"missing": (missing, "absent.csv"), "no label column": (no_label, "no_label.csv"),
            "wrong width": (few, "few_columns.csv")}


@pytest.mark.parametrize("case", ["missing", "no label column", "wrong width"])
@pytest.mark.parametrize("handler", ["train", "evaluate"])
def test_unusable_data_file_is_a_one_line_data_error(tmp_path: Path, handler: str,
                                                     case: str) -> None:
    path, fragment = bad_files(tmp_path)[case]
    cfg = config()
    kind = MessageType.TRAIN if handler == "train" else MessageType.EVALUATE
    reply = getattr(client_app, handler)(message(cfg, kind), context(cfg, path))
    assert_refused(reply, DATA_ERROR, fragment)
    assert kind_of(reply.error.code) == "data"


def test_data_error_passes_the_mods_as_a_reply(tmp_path: Path) -> None:
    """Through the whole ClientApp (compression on, so its mod sees the error reply)."""
    cfg = config(compression="qsgd")
    path, fragment = bad_files(tmp_path)["missing"]
    reply = client_app.app(message(cfg), context(cfg, path))
    assert_refused(reply, DATA_ERROR, fragment)


def test_spent_dp_budget_is_a_one_line_refusal(tmp_path: Path) -> None:
    """dp='local' over one planned round: round 1 trains and reports its epsilon; round 2
    would exceed the budget and is refused with BUDGET_REFUSED, before any training, and
    the node's accountant state stays as it was."""
    cfg = config(dp="local", dp_epsilon=2.0, num_server_rounds=1)
    ctx = context(cfg, hospital_csv(tmp_path / "h.csv"))
    first = client_app.train(message(cfg, server_round=1), ctx)
    assert not first.has_error(), first.error
    assert 0 < first.content["metrics"]["dp-epsilon"] <= cfg.dp_epsilon * 1.01
    state_before = {k: dict(v) for k, v in ctx.state.items()}

    second = client_app.train(message(cfg, server_round=2), ctx)
    assert_refused(second, BUDGET_REFUSED, "dp-epsilon=2.0")
    assert kind_of(second.error.code) == "dp-refused"
    assert {k: dict(v) for k, v in ctx.state.items()} == state_before


@pytest.mark.parametrize(("train_metrics", "dp", "expected"), [
    ("send", "off", {"num-examples", "train-loss", "train-accuracy"}),
    ("none", "off", {"num-examples"}),
    ("send", "local", {"num-examples", "dp-epsilon", "train-loss", "train-accuracy"}),
    ("none", "local", {"num-examples", "dp-epsilon"}),
])
def test_train_metrics_choose_what_a_train_reply_reports(tmp_path: Path, train_metrics: str,
                                                         dp: str, expected: set[str]) -> None:
    """Through the whole ClientApp: train-metrics='none' leaves num-examples (the server's
    weight) and, under dp='local', dp-epsilon; the weights are sent either way."""
    cfg = config(train_metrics=train_metrics, dp=dp)
    reply = client_app.app(message(cfg), context(cfg, hospital_csv(tmp_path / "h.csv")))
    assert not reply.has_error(), reply.error
    assert set(reply.content["metrics"]) == expected
    assert reply.content["metrics"]["num-examples"] > 0
    assert list(reply.content.array_records) == ["arrays"]


def test_train_metrics_none_keeps_evaluate_metrics(tmp_path: Path) -> None:
    """train-metrics is about train replies; an evaluate reply still reports its metrics."""
    cfg = config(train_metrics="none")
    reply = client_app.app(message(cfg, MessageType.EVALUATE),
                           context(cfg, hospital_csv(tmp_path / "h.csv")))
    assert set(reply.content["metrics"]) == {"num-examples", "eval-loss", "eval-accuracy"}
