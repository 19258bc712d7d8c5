"""A hospital's lifetime privacy ledger (fedapp.privacy.ledger): composed across runs, capped
by the node's own dp-budget, charged before training, atomic, locked, and readable with
``python -m fedapp.privacy ledger``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from opacus.accountants import RDPAccountant

from fedapp import client_app, task
from fedapp.config import ConfigError, NodeConfig, RunConfig
from fedapp.data import DATASET_SPECS, Split
from fedapp.node_errors import BUDGET_REFUSED
from fedapp.privacy import BudgetExhausted, LedgerError, private_round
from fedapp.privacy import local as local_dp
from fedapp.privacy.__main__ import main
from fedapp.privacy.accounting import epsilon_of
from fedapp.privacy.ledger import (
    DONE,
    PENDING,
    NodeBudget,
    PrivacyLedger,
    default_path,
    node_budget,
)

TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPEC = DATASET_SPECS["breast-cancer"]


def hospital_csv(path: Path, rows: int = 48) -> Path:
    rng = np.random.default_rng(5)
    names = list(getattr(SPEC, "feature_names", None) or
                 (f"f{i}" for i in range(SPEC.num_features)))
    x, y = np.abs(rng.normal(size=(rows, SPEC.num_features))), rng.integers(0, 2, rows)
    body = [",".join([*map(str, r), str(label)]) for r, label in zip(x, y, strict=True)]
    path.write_text("\n".join([",".join(f'"{h}"' for h in [*names, "label"]), *body]) + "\n")
    return path


def run_config(**overrides: object) -> RunConfig:
    base: dict[str, object] = {"dataset": "breast-cancer", "tracking": False, "local_epochs": 1,
                               "batch_size": 16, "hidden_units": 8, "dp": "local",
                               "dp_epsilon": 2.0, "num_server_rounds": 1}
    return RunConfig(**{**base, **overrides})  # type: ignore[arg-type]


def train_message(cfg: RunConfig, server_round: int = 1) -> Message:
    model = task.build_model(cfg.model, SPEC, cfg.hidden_units)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "config": ConfigRecord({"server-round": server_round})})
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def fresh_run(cfg: RunConfig, run_id: int, node_config: dict[str, object]) -> Context:
    """A new Flower run on the same node: a fresh context.state, the same node config."""
    return Context(run_id=run_id, node_id=1, node_config=node_config, state=RecordDict(),
                   run_config=cfg.to_flower())


def opacus_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta=delta))


def budget(ledger: Path, cap: float | None = None, run: int = 1, rnd: int = 1,
           dataset: str = "file:sha256:abc") -> NodeBudget:
    return NodeBudget(PrivacyLedger(ledger), dataset, {"kind": "file", "name": "h.csv"}, cap,
                      1e-5, run, rnd)


def test_second_run_is_refused_past_the_hospitals_lifetime_cap(tmp_path: Path) -> None:
    """Two runs (two fresh context.states), one ledger: each run's own plan allows its
    round, but the second would take the data's lifetime epsilon past dp-budget, so the
    real train handler answers BUDGET_REFUSED naming the cap, the spent and the requested
    epsilon; the refused round is not charged."""
    cfg = run_config()
    ledger = tmp_path / "ledger.json"
    node = {"data-path": str(hospital_csv(tmp_path / "h.csv")), "privacy-ledger": str(ledger),
            "dp-budget": 2.5}
    first = client_app.train(train_message(cfg), fresh_run(cfg, 101, node))
    assert not first.has_error(), first.error
    spent = first.content["metrics"]["dp-epsilon"]
    assert 1.9 < spent <= 2.02

    second = client_app.train(train_message(cfg), fresh_run(cfg, 102, node))
    assert second.has_error() and second.error.code == BUDGET_REFUSED
    reason = second.error.reason
    assert "\n" not in reason
    assert "dp-budget=2.5" in reason and f"spent {spent:.3f}" in reason
    assert "dp-epsilon=2" in reason
    rows = json.loads(ledger.read_text())["datasets"]
    assert [e["run"] for r in rows.values() for e in r["entries"]] == [101]


def test_run_config_cannot_raise_the_cap(tmp_path: Path) -> None:
    """dp-budget and dp-delta are node config keys; a larger run dp-epsilon changes the
    plan, not the cap."""
    node = NodeConfig.from_flower({"data-path": "h.csv", "dp-budget": 4, "dp-delta": 1e-6})
    assert (node.dp_budget, node.dp_delta) == (4.0, 1e-6)
    assert NodeConfig.from_flower({"data-path": "h.csv"}).dp_budget is None
    for bad in ({"dp-budget": 0}, {"dp-budget": "8"}, {"dp-delta": 1.0},
                {"privacy-ledger": ""}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            NodeConfig.from_flower({"data-path": "h.csv", **bad})
    assert "dp-budget" not in run_config().to_flower()


def test_crash_after_the_pending_entry_is_still_charged(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The round is written as pending before DP-SGD starts: a node that dies mid-round
    stays charged, and the next run composes it."""
    def crash(*args: object, **kwargs: object) -> None:
        raise SystemExit("node killed mid-round")

    cfg = run_config()
    rng = np.random.default_rng(0)
    data = Split(rng.normal(size=(64, 30)).astype(np.float32),
                 rng.integers(0, 2, 64).astype(np.int64))
    model = task.build_model("mlp", SPEC, 8)
    ledger = tmp_path / "ledger.json"
    monkeypatch.setattr(local_dp, "dp_train", crash)
    with pytest.raises(SystemExit):
        private_round(cfg, model, data, 1, RecordDict(), budget(ledger))
    (entry,) = json.loads(ledger.read_text())["datasets"]["file:sha256:abc"]["entries"]
    assert entry["status"] == PENDING and entry["steps"] == 4
    charged = budget(ledger).spent()
    assert charged == pytest.approx(opacus_epsilon(
        [(entry["noise-multiplier"], entry["sample-rate"], 4)], 1e-5))
    assert 1.9 < charged <= 2.02

    monkeypatch.undo()  # the next run trains: its round settles as done, the crash stays
    private_round(cfg, model, data, 1, RecordDict(), budget(ledger, run=2))
    entries = json.loads(ledger.read_text())["datasets"]["file:sha256:abc"]["entries"]
    assert [e["status"] for e in entries] == [PENDING, DONE]
    assert budget(ledger).spent() > charged


@pytest.mark.parametrize("damage", ["torn", "empty", "edited"])
def test_corrupt_ledger_is_refused_never_reset(tmp_path: Path, damage: str) -> None:
    """A torn, empty or hand-edited ledger (its sha256 no longer matches) makes the node
    refuse with BUDGET_REFUSED; the file is left as it was, never reset to zero."""
    ledger = tmp_path / "ledger.json"
    PrivacyLedger(ledger).charge(budget(ledger), 1.0, 0.25, 4, 2.0)
    text = ledger.read_text()
    broken = {"torn": text[: len(text) // 2], "empty": "",
              "edited": text.replace('"steps": 4', '"steps": 1')}[damage]
    assert broken != text
    ledger.write_text(broken)
    with pytest.raises(LedgerError, match="corrupt"):
        PrivacyLedger(ledger).charge(budget(ledger), 1.0, 0.25, 4, 2.0)

    cfg = run_config()
    node = {"data-path": str(hospital_csv(tmp_path / "h.csv")), "privacy-ledger": str(ledger)}
    reply = client_app.train(train_message(cfg), fresh_run(cfg, 7, node))
    assert reply.has_error() and reply.error.code == BUDGET_REFUSED
    assert "corrupt" in reply.error.reason and "\n" not in reply.error.reason
    assert ledger.read_text() == broken
    assert main(["ledger", str(ledger)]) == 1


def _charge_many(path: str, worker: int, count: int) -> None:
    for i in range(count):
        PrivacyLedger(path).charge(budget(Path(path), run=worker, rnd=i,
                                          dataset=f"sim:p={worker % 2}"), 1.0, 0.1, 3, 1.0)


_WRITER = """
import sys
from fedapp.privacy.ledger import NodeBudget, PrivacyLedger
path, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    b = NodeBudget(PrivacyLedger(path), f"sim:p={worker % 2}", {}, None, 1e-5, worker, i)
    b.ledger.charge(b, 1.0, 0.1, 3, 1.0)
"""


def test_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    """Separate processes (SuperNodes on one machine) and threads in this one (simulated
    nodes in one Ray worker) charge the same ledger at once: every entry is kept."""
    ledger = str(tmp_path / "ledger.json")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, ledger, str(w), "12"], env=env)
             for w in range(4, 7)]
    threads = [threading.Thread(target=_charge_many, args=(ledger, w, 12)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0, 0]
    datasets = PrivacyLedger(ledger).read()["datasets"]
    runs = sorted((e["run"], e["round"]) for r in datasets.values() for e in r["entries"])
    assert runs == [(w, i) for w in range(7) for i in range(12)]


def test_ledger_epsilon_is_opacus_rdp_accountant_on_the_same_history(tmp_path: Path) -> None:
    """Rounds of several runs with different (z, q, steps) compose exactly as Opacus's RDP
    accountant does on the same history."""
    ledger = tmp_path / "ledger.json"
    history = [(1.1, 0.25, 4), (1.1, 0.25, 4), (0.9, 0.1, 30), (2.0, 0.5, 2)]
    for i, (z, q, steps) in enumerate(history):
        PrivacyLedger(ledger).charge(budget(ledger, cap=100.0, run=i // 2), z, q, steps, 3.0)
    for delta in (1e-5, 1e-3):
        b = NodeBudget(PrivacyLedger(ledger), "file:sha256:abc", {}, None, delta, 0, 0)
        assert b.spent() == opacus_epsilon(history, delta)


def test_simulated_nodes_sharing_the_default_ledger_are_kept_apart(tmp_path: Path) -> None:
    cfg = run_config(dataset="digits")
    nodes = [NodeConfig.from_flower({"partition-id": p, "num-partitions": 3}) for p in (0, 1)]
    b0, b1 = (node_budget(cfg, n, run=5, server_round=1) for n in nodes)
    assert b0.ledger.path == b1.ledger.path == default_path()
    assert b0.dataset != b1.dataset and "partition-id=0" in b0.dataset
    b0.ledger.charge(b0, 1.0, 0.2, 5, 3.0)
    assert b0.spent() > 0 and b1.spent() == 0
    assert node_budget(run_config(dataset="digits", seed=1), nodes[0], 5, 1).dataset != b0.dataset


def test_file_identity_is_the_content_digest(tmp_path: Path) -> None:
    cfg = run_config()
    a = hospital_csv(tmp_path / "a.csv")
    moved = tmp_path / "elsewhere.csv"
    moved.write_bytes(a.read_bytes())
    ids = [node_budget(cfg, NodeConfig.from_flower({"data-path": str(p)}), 1, 1).dataset
           for p in (a, moved)]
    assert ids[0] == ids[1] and ids[0].startswith("file:sha256:")


def test_cli_shows_spending_per_run_and_in_total(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "ledger.json"
    first = PrivacyLedger(ledger).charge(budget(ledger, cap=9.0, run=11), 1.1, 0.25, 4, 3.0)
    PrivacyLedger(ledger).settle("file:sha256:abc", first, 4)
    PrivacyLedger(ledger).charge(budget(ledger, cap=9.0, run=11, rnd=2), 1.1, 0.25, 4, 3.0)
    PrivacyLedger(ledger).charge(budget(ledger, cap=9.0, run=12), 1.1, 0.25, 8, 3.0)

    assert main(["ledger", str(ledger), "--json"]) == 0
    (ident,) = json.loads(capsys.readouterr().out)["datasets"]
    assert ident["dataset"] == "file:sha256:abc" and ident["cap"] == 9.0
    assert [(r["run"], r["rounds"], r["steps"], r["pending"]) for r in ident["runs"]] == [
        (11, 2, 8, 1), (12, 1, 8, 1)]
    assert ident["runs"][0]["epsilon"] == epsilon_of([(1.1, 0.25, 8)], 1e-5)
    assert ident["total-epsilon"] == opacus_epsilon([(1.1, 0.25, 16)], 1e-5)

    assert main(["ledger", str(ledger)]) == 0
    table = capsys.readouterr().out
    assert "file:sha256:abc" in table and "dp-budget=9" in table
    assert f"{ident['total-epsilon']:.3f}" in table.splitlines()[-2]
    out = subprocess.run([sys.executable, "-m", "fedapp.privacy", "ledger", str(ledger)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    assert "lifetime (composed)" in out and "12" in out


def test_charge_over_cap_raises_and_writes_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.json"
    with pytest.raises(BudgetExhausted, match=r"dp-budget=0\.5 .*spent 0\.000"):
        PrivacyLedger(ledger).charge(budget(ledger, cap=0.5), 1.0, 0.5, 50, 3.0)
    assert PrivacyLedger(ledger).read()["datasets"] == {}
