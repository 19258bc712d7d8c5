"""The privacy benchmark's numbers judged against the issue's targets.

Pure functions of the results JSON (``benchmarks/privacy.py`` writes it): the accuracy
table (federated vs central, mean over seeds), the spread of an attack at chance
(:func:`chance_tpr`), one markdown row per target (:func:`target_rows`) and the verdict.
Targets: federated within 3 pt of the central ceiling at epsilon 3 and 8; a DP epoch
at most 1.6x a non-private one; TPR at 1 % FPR at most 1.5 % at epsilon <= 3; the
non-private audit visibly above chance.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from privacy_runs import SETTING


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def accuracy_table(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per epsilon: federated and central accuracy (mean over seeds, and each seed), gap."""
    rows = []
    for e in result["params"]["epsilons"]:
        fed = [r for r in result["federated"] if r["epsilon"] == e]
        cen = [r for r in result["central"] if r["epsilon"] == e]
        f_acc, c_acc = [r["final-accuracy"] for r in fed], [r["accuracy"] for r in cen]
        spent = [r["epsilon-spent-max"] for r in fed if r["epsilon-spent-max"] is not None]
        rows.append({"epsilon": e, "federated": _mean(f_acc), "central": _mean(c_acc),
                     "federated-seeds": f_acc, "central-seeds": c_acc,
                     "gap-pt": 100 * (_mean(c_acc) - _mean(f_acc)),
                     "epsilon-spent-max": max(spent) if spent else None})
    return rows


def target_rows(result: dict[str, Any]) -> list[str]:
    """The issue's targets, one markdown table row each."""
    rows = []
    by_eps = {r["epsilon"]: r for r in accuracy_table(result)}
    for e in ("3", "8"):
        if e in by_eps:
            gap = by_eps[e]["gap-pt"]
            rows.append(f"| federated within 3 pt of central, epsilon {e} | gap {gap:+.1f} pt "
                        f"(mean of {len(by_eps[e]['federated-seeds'])} seeds) | "
                        f"{'met' if gap <= 3 else 'NOT met'} |")
    bs = SETTING["batch-size"]
    for t in result["timing"]:
        for e in t["by-batch"]:
            if e["batch-size"] in (bs, 128):
                ratio = e["ratio"][e["auto-mode"]]
                rows.append(f"| DP epoch <= 1.6x non-private, {t['case']}, batch "
                            f"{e['batch-size']} | {ratio:.2f}x (`{e['auto-mode']}`) | "
                            f"{'met' if ratio <= 1.6 else 'NOT met'} |")
    audits = [("federated model", r["epsilon"], r["audit"]) for r in result["federated"]
              if "audit" in r]
    audits += [("overfit audit", r["epsilon"], r) for r in result.get("overfit-audit", [])]
    for name, eps, a in audits:
        best = max(a["attacks"].items(), key=lambda kv: kv[1]["tpr@1%fpr"])
        mean, std = chance_tpr(a["members"], a["nonmembers"])
        measured = (f"{best[1]['tpr@1%fpr']:.4f} ({best[0]}); chance {mean:.4f} +- {std:.4f}")
        if eps != "inf" and float(eps) <= 3:
            ok = "met" if best[1]["tpr@1%fpr"] <= 0.015 else "NOT met"
            rows.append(f"| TPR @ 1% FPR <= 1.5%, {name}, epsilon {eps} | {measured} | {ok} |")
        elif eps == "inf":
            tpr = best[1]["tpr@1%fpr"]
            ok = ("met" if tpr > mean + 3 * std else
                  "marginal (best of 3 attacks, 2-3 std)" if tpr > mean + 2 * std else "NOT met")
            rows.append(f"| non-private audit visibly above chance (> chance + 3 std), {name} "
                        f"| {measured}, AUC {best[1]['auc']:.3f} | {ok} |")
    return rows


def chance_tpr(members: int, nonmembers: int, fpr: float = 0.01) -> tuple[float, float]:
    """Mean and std of the measured TPR at ``fpr`` for an attack at chance (random scores).

    ``AttackResult.tpr_at`` keeps the best threshold with at most ``k = floor(fpr m)``
    false positives: the members ranked above the ``(k+1)``-th non-member of a random
    order, about negative binomial with ``r = k + 1`` and ``p = m / (n + m)``.
    """
    r = math.floor(fpr * nonmembers) + 1
    p = nonmembers / (members + nonmembers)
    return r * (1 - p) / p / members, math.sqrt(r * (1 - p)) / p / members


def verdict(result: dict[str, Any]) -> str:
    parts = []
    by_eps = {r["epsilon"]: r for r in accuracy_table(result)}
    for e in ("3", "8"):
        r = by_eps.get(e)
        if r is None:
            parts.append(f"epsilon {e}: not measured in this run.")
            continue
        parts.append(f"Accuracy at epsilon {e}: federated {r['federated']:.4f} vs central "
                     f"{r['central']:.4f} (mean of {len(r['federated-seeds'])} seeds), gap "
                     f"{r['gap-pt']:+.1f} pt: target (<= 3 pt) "
                     f"{'met' if r['gap-pt'] <= 3 else 'NOT met'}.")
    default_bs = SETTING["batch-size"]
    for t in result["timing"]:
        for e in t["by-batch"]:
            if e["batch-size"] == default_bs:
                ratio = e["ratio"][e["auto-mode"]]
                parts.append(f"Epoch time {t['case']} at batch {default_bs}: dp_train "
                             f"({e['auto-mode']}) / task.train = {ratio:.2f}x, target <= 1.6x "
                             f"{'met' if ratio <= 1.6 else 'NOT met'}.")
    for name, audits in (("federated model", [r for r in result["federated"] if "audit" in r]),
                         ("overfit audit", result.get("overfit-audit", []))):
        for r in audits:
            a = r.get("audit", r)
            best = max(a["attacks"].items(), key=lambda kv: kv[1]["tpr@1%fpr"])
            tpr = best[1]["tpr@1%fpr"]
            eps = r["epsilon"]
            mean, std = chance_tpr(a["members"], a["nonmembers"])
            if eps != "inf" and float(eps) <= 3:
                ok = "met" if tpr <= 0.015 else "NOT met"
                parts.append(f"MIA {name} eps {eps}: best TPR@1%FPR {tpr:.4f} ({best[0]}, AUC "
                             f"{best[1]['auc']:.3f}), target <= 0.015 {ok} (an attack at chance "
                             f"measures {mean:.4f} +- {std:.4f} on this split).")
            elif eps == "inf":
                parts.append(f"MIA {name} non-private: best TPR@1%FPR {tpr:.4f} ({best[0]}, "
                             f"AUC {best[1]['auc']:.3f}; chance {mean:.4f} +- {std:.4f}).")
    return " ".join(parts)
