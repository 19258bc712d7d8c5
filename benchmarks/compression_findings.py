"""The data-driven sentences of ``docs/compression.md``'s Findings and the recommended
preset: a re-run rewrites them from its own numbers."""

from __future__ import annotations

from typing import Any

from fedapp.sweep import flwr_cli as runner


def recommend(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The big model's highest-ratio preset that stays within 0.5 pt of 'off' (final
    accuracy) on every model measured; if none does, the big model's best one."""
    big = [r for r in runs if r["model"] == "big" and r["codec"] != "off"
           and r["uplink-ratio"] is not None]
    if not big:
        return None
    worst = {r["codec"]: min(x["delta-final-pt"] for x in runs if x["codec"] == r["codec"])
             for r in big}
    ok = [r for r in big if worst[r["codec"]] >= -0.5]
    best = max(ok or big, key=lambda r: (r["uplink-ratio"] if ok else r["final-accuracy"]))
    return {**best, "_ok": bool(ok)}


def preset(r: dict[str, Any]) -> str:
    """A run's codec settings as run-config ``key=value`` pairs."""
    c = r["run-config"]
    keys = ["compression", *(k for k in ("compression-topk", "compression-bits") if k in c),
            "compression-feedback"]
    return " ".join(f"{k}={runner.format_run_config({k: c[k]}).split('=', 1)[1]}"
                    for k in keys).replace('"', "'")


def _lag(off: dict[str, Any], r: dict[str, Any]) -> int:
    """The first round at which 'off' had reached ``r``'s final accuracy."""
    return next((int(x["round"]) for x in off["rounds"]
                 if x["server-accuracy"] >= r["final-accuracy"]), len(off["rounds"]))


def _big_model(results: dict[str, Any], off: dict[str, Any], big: list[dict[str, Any]],
               ) -> list[str]:
    """Does any preset reach >= 100x at <= 0.5 pt on the big MLP; its curve; EF's gain."""
    out, rows, params = [], results["test-rows"], results["models"]["big"]["parameters"]
    hits = [r for r in big if r["uplink-ratio"] >= 100 and r["delta-final-pt"] >= -0.5]
    high = [r for r in big if r["uplink-ratio"] >= 100]
    if hits:
        names = ", ".join(f"`{r['codec']}` ({r['uplink-ratio']:.0f}x, "
                          f"{r['delta-final-pt']:+.2f} pt)" for r in hits)
        out.append(f"On the {params:,}-parameter MLP "
                   f"{names} reach >= 100x less uplink at <= 0.5 pt final-accuracy loss.")
    elif high:
        c = max(high, key=lambda r: r["final-accuracy"])
        lost = round(-c["delta-final-pt"] * rows / 100)
        rising = c["rounds"][-1]["server-accuracy"] > c["rounds"][-2]["server-accuracy"]
        out.append(
            f"On the {params:,}-parameter MLP no preset "
            f"reaches >= 100x less uplink at <= 0.5 pt loss: the closest, `{c['codec']}` "
            f"({c['uplink-ratio']:.0f}x), ends {-c['delta-final-pt']:.2f} pt ({lost} of "
            f"{rows} test rows) below 'off', at the accuracy 'off' had after round "
            f"{_lag(off, c)} of {results['rounds']}: top-k sends the largest "
            "coordinates now and error feedback delivers the rest rounds later, so a short "
            "run ends behind"
            + (" (its curve is still rising at the last round)." if rising else "."))
    curve = ", ".join(f"{r['codec']} {r['uplink-ratio']:.0f}x / {r['delta-final-pt']:+.1f}"
                      for r in sorted(big, key=lambda r: r["uplink-ratio"]))
    acc = {r["codec"]: r["final-accuracy"] for r in big}
    gains = ", ".join(f"{100 * (acc[c] - acc[c[:-3]]):+.1f} pt ({c[:-3]})" for c in acc
                      if c.endswith("-ef") and c[:-3] in acc)
    out.append(f"The big model's curve (uplink ratio / final-accuracy pt vs 'off'): {curve}"
               + (f"; error feedback changes final accuracy by {gains}." if gains else "."))
    return out


def _small_model(results: dict[str, Any], small: list[dict[str, Any]]) -> str:
    """The small CNN against the fixed per-message floor."""
    w = results["wire"]["small"]
    dense = w["off"]["message-bytes"]
    fixed = min(v["fixed-bytes"] for k, v in w.items() if k != "off")
    fixed_arrays = min(v["array-bytes"] - v["payload-bytes"] for k, v in w.items()
                       if k != "off")
    topk = ", ".join(f"{r['codec']} {r['uplink-ratio']:.0f}x / "
                     f"{r.get('ratio-incl-framing') or float('nan'):.0f}x"
                     for r in small if r["codec"].startswith("topk") and
                     r["codec"].endswith("-ef"))
    return (
        f"The small CNN ({results['models']['small']['parameters']:,} parameters in "
        f"{results['models']['small']['arrays']} arrays, {dense:,} B per dense reply on "
        f"the wire) hits the fixed per-message floor: every compressed reply costs {fixed} B "
        f"before its payload (Flower's framing, metrics, codec header, and {fixed_arrays} B "
        f"of .npy header and key that `bytes-up` counts), which caps any codec at "
        f"{dense / fixed:.0f}x on the wire and {w['off']['array-bytes'] / fixed_arrays:.0f}x "
        f"in counted array bytes; measured (array bytes / with framing): {topk}.")


def _codec_cost(cost: list[dict[str, Any]]) -> str:
    """Encode plus decode time relative to local training; error feedback's slowdown."""
    parts = []
    for key in ("big", "small"):
        c = [100 * r["codec-cost-vs-local-train"] for r in cost if r["model"] == key]
        if c:
            span = f"{min(c):.1f}" if f"{min(c):.1f}" == f"{max(c):.1f}" else (
                f"{min(c):.1f}-{max(c):.1f}")
            parts.append(f"{span}% on the {key} model")
    enc = {(r["model"], r["codec"]): r["encode-seconds-mean"] for r in cost}
    slow = [enc[m, c] / enc[m, c[:-3]] for m, c in enc if c.endswith("-ef")
            and enc.get((m, c[:-3]))]
    extra = (f"; error feedback makes encoding {min(slow):.1f}-{max(slow):.1f}x slower "
             "(it also decodes, to update the residual)" if slow else "")
    return ("Encode (on the node) plus decode (per reply, on the server) cost "
            f"{' and '.join(parts)} relative to one node's local training{extra}.")


def _recommendation(results: dict[str, Any], rec: dict[str, Any],
                    big: list[dict[str, Any]]) -> str:
    """The recommended preset, why, and the aggressive alternative on the big MLP."""
    runs, c = results["runs"], rec["run-config"]
    per_model = "; ".join(f"{r['model']} {r['uplink-ratio']:.0f}x, "
                          f"{r['delta-final-pt']:+.2f} pt" for r in runs
                          if r["codec"] == rec["codec"])
    aggressive = [r for r in big if r["uplink-ratio"] >= 100]
    alt = ""
    a = max(aggressive, key=lambda r: r["final-accuracy"]) if aggressive else None
    if a is not None and a["codec"] != rec["codec"]:
        alt = (f" Where uplink dominates and ~{-a['delta-final-pt']:.1f} pt at "
               f"{results['rounds']} rounds is acceptable, `{preset(a)}` gives "
               f"{a['uplink-ratio']:.0f}x on the big MLP, but not on small models (floor).")
    why = ("the highest-ratio preset within 0.5 pt of 'off' on every model" if rec["_ok"]
           else "the big model's most accurate one (none stays within 0.5 pt everywhere)")
    unused = f"; compression-topk is unused by {c['compression']}" if (
        "compression-topk" not in c) else ""
    return f"Recommended preset: `{preset(rec)}`, {why} ({per_model}{unused})." + alt


def findings(results: dict[str, Any]) -> list[str]:
    """The sentences under Findings (after ``run_table`` filled the derived columns)."""
    runs, out = results["runs"], []
    off = {r["model"]: r for r in runs if r["codec"] == "off"}
    big = [r for r in runs if r["model"] == "big" and r["codec"] != "off"]
    small = [r for r in runs if r["model"] == "small" and r["codec"] != "off"]
    if big and "big" in off:
        out += _big_model(results, off["big"], big)
    if small and "small" in results["wire"]:
        out.append(_small_model(results, small))
    cost = [r for r in runs if r.get("codec-cost-vs-local-train") is not None]
    if cost:
        out.append(_codec_cost(cost))
    rec = recommend(runs)
    if rec is not None:
        out.append(_recommendation(results, rec, big))
    return out
