"""The prose of ``docs/distributed_dp.md``: the setting (every session with its machine
load), the pilots, the ceiling's noise spread, the membership-inference audit table and the
caveats. Pure functions of the results JSON (and of ``distributed_dp_report``'s summary).
"""

from __future__ import annotations

import statistics
from typing import Any

from common import fmt_opt, md_table
from distributed_dp_report import (
    BUCKETS_2,
    CEILING,
    CENTRAL,
    LOCAL,
    OFF,
    ONE_SUM,
    ORDER,
    epsilons,
    find,
)

#: A classifier that guesses at random reaches TPR = FPR: chance at 1 % FPR is 0.01.
CHANCE_TPR = 0.01


def _session(s: dict[str, Any]) -> str:
    v = s.get("versions", {})
    return (f"* `{s.get('command')}` ({s.get('timestamp')}; "
            f"{s.get('wall-seconds', 0) / 60:.0f} min; load average {s.get('loadavg-start')} "
            f"at the start, {s.get('loadavg-end')} at the end; torch {v.get('torch')}, opacus "
            f"{v.get('opacus')}, flwr {v.get('flwr')}, {v.get('cpus')} CPUs, commit "
            f"`{str(v.get('git-commit'))[:10]}`{' (dirty)' if v.get('git-dirty') else ''})")


def setting(res: dict[str, Any]) -> list[str]:
    p = res["params"]
    return [
        "Sessions (each later one ran only the cells the JSON did not have yet; load "
        "averages are 1, 5, 15 min, of a 2-core machine shared with other work):", "",
        *(_session(s) for s in res.get("sessions", [])), "",
        f"Real `flwr run` simulations: digits, {p['nodes']} nodes, dirichlet alpha 0.5 "
        "(run-config defaults), `fraction-evaluate=0` (only the server evaluates, on its 360 "
        "held-out rows), `anomaly-detection='off'` in every row, `tracking=false`. "
        "delta = 1e-5, C = 1.", "",
        "**Model: the run-config default `model='auto'`, which for digits (8x8 images) is "
        "fedapp's small CNN** (two 3x3 conv layers with GroupNorm, 16 and 32 channels, and a "
        "linear head; `fedapp.task.build_model`), in every row, the ceiling included. The "
        "first version of this page said \"the default MLP\": that was wrong, the runs never "
        "set `model` (the saved `model.pt` has `features.0.weight`, a conv kernel). The new "
        "cells keep the same configuration so that they extend the first runs.", "",
        f"* **distributed** rows: one DP-SGD step per round, q = {p['q']:g}, "
        f"{p['rounds']} rounds, lr = {fmt_opt(p['lr'], 'g')}, `secagg-bits=32`; one sum = "
        "`secagg-bucket-size=10 secagg-threshold=1.0` (t = 10); buckets of 2 = "
        "`secagg-bucket-size=2` (t = 2, five bucket sums, each with the full `z C`).",
        f"* **local DP-SGD**: `dp='local'`, {p['local-rounds']} rounds x 4 local epochs, "
        "batch 64, lr 0.1 (benchmarks/privacy.py's local setting), each node calibrated to "
        "the epsilon over its own steps; `dp-epsilon reported` is the worst node's.",
        "* **client-level central DP**: `dp='central'` (fedapp.privacy.central: each node's "
        "whole update clipped to `dp-clip` = 1, Gaussian noise `z C / n` on the mean at the "
        "server), the run-config defaults for everything else: 10 rounds x 3 local epochs, "
        "batch 32, lr 0.05, `fraction-train=1.0` (all 10 nodes each round, q = 1: no "
        "amplification), z calibrated by fedapp for the epsilon over the 10 rounds. Its unit "
        "of privacy is a whole hospital, not a record: a stronger guarantee than the other "
        "rows' at the same epsilon.",
        "* **centralized ceiling**: in process, the union of the 10 nodes' training rows, "
        "`clipped_gradient_sum` + N(0, (z C)^2), step -lr sum / (q N), the same q, z, lr "
        "and number of steps as the one-sum row.",
        "* **non-private**: `dp='off'`, FedAvg, the run-config defaults (10 rounds x 3 local "
        "epochs, batch 32, lr 0.05); shown under each epsilon."]


def pilot_lines(res: dict[str, Any]) -> list[str]:
    p = res["params"]
    lines: list[str] = []
    if res.get("pilot-lr"):
        lines += ["", f"**Pilot: learning rate** (first session; eps 8, seed 0, "
                  f"{p['pilot-rounds']} rounds, q = {p['q']:g}); the best federated one-sum "
                  f"accuracy chose lr = {p['lr']:g}.", "",
                  *md_table(["lr", "row", "final acc", "wall s"], [
                      [f"{r.get('lr', '?'):g}", r["row"],
                       fmt_opt(r.get("final-accuracy"), ".4f"),
                       fmt_opt(r.get("wall-seconds"), ".0f")] for r in res["pilot-lr"]])]
    if res.get("pilot-local"):
        lines += ["", "**Pilot: local DP-SGD rounds** (first session; eps 8, seed 0, 4 local "
                  f"epochs each); chose {p['local-rounds']} rounds.", "",
                  *md_table(["rounds", "final acc", "wall s"], [
                      [str(r.get("rounds", "?")), fmt_opt(r.get("final-accuracy"), ".4f"),
                       fmt_opt(r.get("wall-seconds"), ".0f")] for r in res["pilot-local"]])]
    return lines


def spread_lines(res: dict[str, Any]) -> list[str]:
    """The ceiling over noise draws alone (seed 0's rows and initial model)."""
    draws = res.get("ceiling-spread") or []
    rows = []
    for eps in epsilons(res):
        accs = [r["final-accuracy"] for r in draws if r["epsilon"] == eps]
        if len(accs) > 1:
            rows.append([f"{eps:g}", str(len(accs)), f"{statistics.fmean(accs):.4f}",
                         f"{statistics.stdev(accs):.4f}", f"{min(accs):.4f} - {max(accs):.4f}"])
    if not rows:
        return []
    return ["", "**The ceiling's spread over noise alone** (seed 0's rows and initial model; "
            "sampling and noise seeds 1000, 1001, ...): how far apart two runs of the same "
            "DP-SGD can land, hence how much a few seeds of a federated row can say.", "",
            *md_table(["epsilon", "draws", "mean acc", "std", "min - max"], rows)]


def few_seeds(summary: list[dict[str, Any]]) -> list[str]:
    """Every cell with fewer than 3 seeds, said in so many words."""
    short = [f"{s['row']} at eps {s['epsilon']:g} (n = {len(s['seeds'])}"
             f"{': not run' if not s['seeds'] else ''})" for s in summary
             if len(s["seeds"]) < 3 and (s["row"] != OFF or s is next(
                 t for t in summary if t["row"] == OFF))]
    if not short:
        return ["Every cell has 3 seeds (0, 1, 2)."]
    return ["**Cells with fewer than 3 seeds** (their std is missing or rests on 2 values): "
            + "; ".join(short) + "."]


def _audited_run(res: dict[str, Any], a: dict[str, Any]) -> str:
    in_table = any(r.get("run-id") == a.get("run-id") for r in res["runs"])
    return "the table's run" if in_table else "re-run (not in the table)"


ATTACKS = ("loss", "lira-online", "lira-offline")


def _audit_row(res: dict[str, Any], a: dict[str, Any]) -> list[str]:
    att = a["attacks"]
    best = max(v["tpr@1%fpr"] for v in att.values())
    return [a["row"], _audited_run(res, a), f"{a['final-accuracy']:.4f}",
            f"{a['member-accuracy']:.3f} / {a['nonmember-accuracy']:.3f}",
            str(a["shadow-models"]),
            *(f"{att[k]['auc']:.3f} / {att[k]['tpr@1%fpr']:.4f}" if k in att else "n/a"
              for k in ATTACKS),
            f"{best / CHANCE_TPR:.1f}x", f"{a['audit-seconds']:.0f}"]


def _audit_finding(audits: list[dict[str, Any]]) -> list[str]:
    """The largest TPR at 1 % FPR at the most shadows, and the non-private model's."""
    most = max(a["shadow-models"] for a in audits)
    top = [(v["tpr@1%fpr"], v["auc"], a["row"], k) for a in audits
           if a["shadow-models"] == most for k, v in a["attacks"].items()]
    tpr, auc, row, attack = max(top)
    off = [t for t in top if t[2] == OFF]
    line = (f"With {most} shadows the largest TPR at 1 % FPR is {tpr:.4f} ({tpr / CHANCE_TPR:.1f}x"
            f" chance; {row}, {attack}, AUC {auc:.3f}); every AUC is within "
            f"{max(abs(t[1] - 0.5) for t in top):.3f} of 0.5.")
    if off:
        line += (f" The non-private model's best is {max(off)[0]:.4f}: this well-generalising "
                 "CNN (~1150 members) leaks little to these attacks even without DP, so the "
                 "audit does not separate the modes here; 1 % FPR is ~6 of the non-members, "
                 "so TPR differences of ~0.01 are noise (docs/privacy.md: an attack at "
                 "chance measures 0.0108 +- 0.0051 on a similar split). Its overfit audit (a "
                 "wide MLP memorising 400 digits) is where these attacks were shown to find "
                 "members (TPR 0.0725 at 1 % FPR).")
    return ["", line]


def audit_lines(res: dict[str, Any]) -> list[str]:
    """The membership-inference audit per mode (eps 3, seed 0): one row per model and S."""
    audits = res.get("audit") or []
    if not audits:
        return ["## Membership-inference audit", "", "Not run.", ""]
    p, a0 = res["params"], audits[0]
    shadows = sorted({a["shadow-models"] for a in audits})
    rows = [_audit_row(res, a) for a in sorted(
        audits, key=lambda a: (-a["shadow-models"], ORDER.index(a["row"])))]
    missing = [r for r in (ONE_SUM, BUCKETS_2, LOCAL, CENTRAL, OFF)
               if not any(a["row"] == r for a in audits)]
    return [
        "## Membership-inference audit (eps 3, seed 0; non-private: seed 0)", "",
        "`python -m fedapp.privacy.audit --model RUN/model.pt --num-partitions 10 "
        f"--shadow-models S --epochs {p['audit-epochs']} --seed 0` on the final "
        "model of each mode's eps-3 seed-0 run (`distributed_dp_runs.audit`). Members: the "
        f"10 nodes' training rows ({a0['members']}); non-members: the server's test rows and "
        f"the nodes' validation rows ({a0['nonmembers']}; FPR resolution "
        f"{a0['fpr-resolution']:.4f}). Attacks: the loss threshold and LiRA (online, offline) "
        f"with S = {' and '.join(str(k) for k in shadows)} shadow models (below 32, "
        "LiRA pools the variances over examples: a weaker attack); the same models were "
        "audited at each S. Shadows are trained centrally for "
        f"{p['audit-epochs']} epochs: DP-SGD at the run's epsilon (lr 0.1, batch 64) for "
        "local DP-SGD, plain SGD (batch 32, lr 0.05) for the others; for the distributed "
        "rows lr 0.05 replaces the run's lr 1 (one full DP-SGD step per round, not a "
        "minibatch recipe). Shadows only approximate federated training.", "",
        f"**Chance: AUC 0.5, TPR at 1 % FPR = {CHANCE_TPR}** (a random guess); "
        "'best x chance' is the largest of the three TPRs at 1 % FPR over 0.01. The "
        "first session's models were not kept (its output directory was temporary): "
        "those cells were re-run once for the audit, same configuration and seed, with the "
        "nodes' unseeded noise, so a re-run's accuracy differs from the table's seed 0.", "",
        *md_table(["mode", "audited model", "final acc", "member / non-member acc",
                   "shadows", "loss AUC / TPR@1%FPR", "LiRA online AUC / TPR@1%FPR",
                   "LiRA offline AUC / TPR@1%FPR", "best x chance", "audit s"], rows),
        *_audit_finding(audits),
        *(["", f"Not audited (time): {', '.join(missing)}."] if missing else []), ""]


CAVEATS = [
    "* One machine with 2 cores shared with other work: wall times are indicative only "
    "(load averages above; the sessions ran under different loads); a distributed round is "
    "4 message exchanges per node.",
    "* The nodes of a federated DP run draw their noise (and distributed DP-SGD its Poisson "
    "samples) from the OS's entropy, by design: the seed fixes the partition and the "
    "initial model, not the noise, so a federated run is not reproducible; the ceiling is "
    "(torch generator seeded).",
    "* The accountant check compares the server's last-round `dp-epsilon` (fedapp's "
    "cached computation) with a fresh `opacus.accountants.RDPAccountant` fed (z, q, T); "
    "both are the same RDP analysis, so this checks the bookkeeping (z, q, T, delta), not "
    "the analysis.",
    "* Local DP-SGD calibrates each node's noise to its own ~25-150 rows: the comparison "
    "is the point of distributed DP, not a tuned local baseline; only the number of rounds "
    "was piloted (5 and 10; lr, batch, epochs are privacy.py's).",
    "* Client-level central DP protects a whole hospital (its update clipped to C = 1, "
    "noise z C / 10 on the mean of 10) and was not tuned (run-config defaults): with 10 "
    "hospitals its noise is large next to the signal; docs/privacy-modes.md says it needs "
    "hundreds of hospitals.",
]


def caveats(res: dict[str, Any], summary: list[dict[str, Any]]) -> list[str]:
    """The fixed caveats, then those that depend on the numbers."""
    out = list(CAVEATS)
    p = res["params"]
    again = [r for r in res.get("pilot-local", []) if "error" not in r
             and r.get("rounds") == p.get("local-rounds")]
    local8 = find(summary, LOCAL, 8.0)
    if again and local8 and local8["accuracy"] is not None:
        seeds = ", ".join(f"{a:.4f}" for a in local8["accuracies"])
        out.append(f"* The local pilot's {p['local-rounds']}-round run at eps 8, seed 0 is "
                   "another sample of the table's local eps-8 seed-0 cell (same configuration, "
                   f"unseeded noise): {again[0]['final-accuracy']:.4f} (the table's seeds: "
                   f"{seeds}).")
    for eps in epsilons(res):
        c, one = find(summary, CEILING, eps), find(summary, ONE_SUM, eps)
        if c and one and c["accuracy"] is not None and one["accuracy"] is not None \
                and one["accuracy"] > c["accuracy"]:
            out.append(f"* At eps {eps:g} the one-sum mean is above the ceiling's "
                       f"({one['accuracy']:.4f} vs {c['accuracy']:.4f}; std over seeds "
                       f"{fmt_opt(one['std'], '.4f')} and {fmt_opt(c['std'], '.4f')}): the "
                       "same mechanism with different noise draws and (federated) Poisson "
                       "samples, so the sign of a small gap is noise.")
    failed = [r for r in res["runs"] + res.get("audit-runs", []) if "error" in r]
    if failed:
        out.append(f"* {len(failed)} run(s) failed (kept in the JSON, not in the table): "
                   + "; ".join(f"{r['row']} eps {r['epsilon']} seed {r['seed']}: "
                               f"{r['error'][:200]}" for r in failed))
    return out
