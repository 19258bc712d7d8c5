"""Privacy benchmark (issue 6): utility, membership inference and cost of DP-SGD.

Setting (chosen so that federated local DP can approach the central ceiling; see
docs/privacy.md): digits, the 64-64-10 MLP, 2 simulated hospitals with an iid split,
5 rounds x 4 local epochs, batch 64, lr 0.1, clip norm C = 1, delta 1e-5. Federated and
central runs use exactly these hyperparameters; only the data layout differs.

1. Federated runs (real `flwr run`, private managed SuperLink) for each epsilon and seed:
   ``dp='local' dp-epsilon=E`` or ``dp='off'`` (inf). Final server accuracy, the largest
   epsilon any node spent (``dp-epsilon-max`` in ``rounds.json``); for the first seed the
   membership-inference audit of the final model (:mod:`fedapp.privacy.audit`: loss
   threshold, LiRA online/offline; members = the nodes' training rows, non-members = the
   server's test rows).
2. Central DP-SGD ceiling: the same model trained centrally with ``dp_train`` on the union
   of the nodes' training rows for ``rounds x local-epochs`` epochs, same epsilon, delta,
   C, batch size, learning rate and seed; evaluated on the same server test rows.
3. Overfit audit: ``python -m fedapp.privacy.audit --train-fresh`` targets (half of digits
   as members, the other half non-members, a wide MLP trained for many epochs, DP-SGD at
   each epsilon, LiRA shadows with the same recipe): shows the audit has power where there
   is something to find.
4. Local-epoch time, DP-SGD vs non-private, in this process (torch threads = 1), median of
   interleaved repeats, both models: ``dp_train`` (``grad_sample_mode='auto'``, what the
   ClientApp runs) vs ``task.train``, per epoch of a ``local-epochs`` call; and each Opacus
   ``grad_sample_mode`` through ``dp_train`` at several batch sizes.

    python benchmarks/privacy.py [--quick] [--out benchmarks/results/privacy.json]

This file is the CLI: the measurements are in ``privacy_runs.py``, the judgments against
the targets in ``privacy_targets.py``, the docs page in ``privacy_report.py``.

Benchmarks are not tests; numbers depend on the (shared) machine: load averages recorded.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import privacy_runs as runs
import torch
from common import REPO, command_line, loadavg, versions, write_json
from privacy_report import write_markdown, write_plot
from privacy_targets import accuracy_table, verdict

SECTIONS = ("timing", "central", "federated", "overfit-audit")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 epsilons, 1 seed, fewer repeats")
    ap.add_argument("--seeds", default=None, help="comma list of seeds (federated and central)")
    ap.add_argument("--epsilons", default=None, help="comma list, 'inf' = dp off")
    ap.add_argument("--shadows", type=int, default=None)
    ap.add_argument("--shadow-epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: "
                    "timing, central, overfit-audit, federated")
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--out", default=str(REPO / "benchmarks/results/privacy.json"))
    ap.add_argument("--docs", default=str(REPO / "docs"), help="where privacy.md/.png go")
    ap.add_argument("--from-json", action="store_true",
                    help="only rewrite the docs from an existing --out JSON")
    ap.add_argument("--timing-from", help="with --from-json: take the timing section from "
                    "this JSON (a later `--skip central,federated,overfit-audit` run)")
    return ap.parse_args()


def make_params(args: argparse.Namespace) -> dict[str, Any]:
    """The run's parameters (recorded under ``params``): defaults, ``--quick`` or the flags."""
    q = args.quick
    setting = runs.SETTING
    return {
        "seeds": [int(v) for v in (args.seeds or ("42" if q else "42,43,44")).split(",")],
        "epsilons": [float(e) for e in (args.epsilons or ("3,inf" if q else "1,3,8,inf"))
                     .split(",")],
        "shadows": args.shadows or (4 if q else 8),
        "shadow-epochs": args.shadow_epochs or setting["num-server-rounds"] * setting[
            "local-epochs"],
        "repeats": args.repeats or (2 if q else 3),
        "batch-sizes": [32, 64] if q else [32, 64, 128],
        "modes": ["hooks", "ew", "ghost"],
        "timing-epochs": 2,
        "overfit": {"members": 400, "hidden": 128, "epochs": 40, "shadows": 4 if q else 8},
        "setting": setting,
    }


def measure(result: dict[str, Any], params: dict[str, Any], skip: set[str], timeout: float,
            dump: Callable[[], None]) -> None:
    """Run every section not in ``skip`` into ``result``, dumping after each."""
    eps = params["epsilons"]
    result["noise"] = runs.node_noise(eps)
    if "timing" not in skip:
        result["timing"] = runs.timing(params["repeats"], params["batch-sizes"],
                                       params["modes"], params["timing-epochs"])
        dump()
    if "central" not in skip:
        result["central"] = runs.central(eps, params["seeds"])
        dump()
    if "federated" not in skip:
        result["federated"] = runs.federated(eps, params["seeds"], params["shadows"],
                                             params["shadow-epochs"], timeout)
        dump()
    if "overfit-audit" not in skip:
        o = params["overfit"]
        result["overfit-audit"] = runs.overfit_audit(eps, o["members"], o["hidden"],
                                                     o["epochs"], o["shadows"])


def from_json(out: Path, timing_from: str | None) -> dict[str, Any]:
    """The results of an earlier run, with the timing section of another when given."""
    result = json.loads(out.read_text())
    if timing_from:
        other = json.loads(Path(timing_from).read_text())
        result["timing"] = other["timing"]
        result["timing-run"] = {k: other[k] for k in (
            "command", "timestamp", "loadavg-start", "loadavg-end", "wall-seconds")}
        result["params"]["repeats"] = other["params"]["repeats"]
        result["params"]["timing-epochs"] = other["params"]["timing-epochs"]
    return result


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    params = make_params(args)
    skip = set(filter(None, args.skip.split(",")))
    start, t0 = loadavg(), time.perf_counter()
    result: dict[str, Any] = {
        "command": command_line("privacy.py"),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions("torch", "opacus", "flwr"), "params": {**params, "epsilons": [
            runs.eps_label(e) for e in params["epsilons"]]},
        "loadavg-start": start, "torch-threads": torch.get_num_threads(),
        **{section: [] for section in SECTIONS},
    }
    out = Path(args.out)

    def dump() -> None:  # after every section: a partial result survives an interruption
        write_json(out, result)

    if args.from_json:  # regenerate the docs only
        result = from_json(out, args.timing_from)
    else:
        measure(result, params, skip, args.timeout, dump)
        result["wall-seconds"] = time.perf_counter() - t0
        result["loadavg-end"] = loadavg()
    result["accuracy"] = accuracy_table(result)
    result["verdict"] = verdict(result)
    dump()
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    write_markdown(result, docs / "privacy.md")
    write_plot(result, docs / "privacy.png")
    print(result["verdict"])
    print(f"wrote {out}, {docs / 'privacy.md'}, {docs / 'privacy.png'} "
          f"in {result['wall-seconds']:.0f}s")


if __name__ == "__main__":
    main()
