"""``docs/deployment_scale.md`` from the results of ``deployment_scale.py`` (the plot is
``deployment_scale_plot``)."""

from __future__ import annotations

from typing import Any

from common import md_table

SOURCES = ("Both waits are Flower's: an idle SuperNode asks the SuperLink for a message every "
           "3 s (`time.sleep(3)` in `flwr/supernode/start_client_internal.py`), and the "
           "ServerApp's `HttpGrid.send_and_receive` pulls the replies every 3 s "
           "(`flwr/superlink/grid/http_grid.py`).")


EARLIER_RUNS = (
    "**Without nice, 20 nodes broke the deployment here.** With every process at the same "
    "priority and other jobs on the machine, earlier runs of this benchmark (results "
    "replaced) stalled or failed at 20 nodes. The SuperLink's SQLite state answered HTTP "
    "500 (`sqlite3.OperationalError: database is locked`; Flower waits 5 s for a lock) to "
    "reply pushes, object pushes, pulls, heartbeats and its own `flower-superexec`'s "
    "`acquire-task` (an unhandled error that ended that process). A SuperNode drops a "
    "reply it failed to send (`Failed to send message`, no retry): the round lasted until "
    "round-timeout (601 s; 600 s is the run config's default) and, with "
    "min-train-nodes=20, kept the previous model. One reply's objects expired before the "
    "ServerApp pulled them (`failed (unreachable)`). A SuperNode whose pull got a 500 "
    "quit; the run then ended `finished:failed` 300 s (wait-timeout) after its last "
    "round, as when the ServerApp waits for 20 nodes and 19 are left. Two rounds of 233 s "
    "and 242 s in the first run have no logs. Hence the nodes run under nice here (in a "
    "real deployment the SuperLink has a machine of its own), and rounds a node did not "
    "finish are listed and left out of the medians.")


def _cell(summary: dict[str, Any], key: str, spread: bool = False) -> str:
    if key not in summary:
        return "n/a"
    s = summary[key]
    med = f"{s['median']:.2f}"
    return f"{med} ({s['min']:.2f}-{s['max']:.2f})" if spread else med


def table(result: dict[str, Any]) -> list[str]:
    """One row per N: rounds 2+ medians (range), round 1 apart."""
    rows = []
    for n in result["setup"]["nodes"]:
        entry = result["by-nodes"][str(n)]
        steady, first = entry["rounds-2+"], entry["round-1"]
        rows.append([n, steady.get("round-s", {}).get("n", 0),
                     _cell(steady, "round-s", True),
                     _cell(steady, "slowest-node-s", True),
                     f"**{_cell(steady, 'overhead-s', True)}**",
                     _cell(steady, "slowest-node-sent-s", True),
                     f"**{_cell(steady, 'overhead-sent-s', True)}**",
                     _cell(steady, "median-node-s"),
                     f"{_cell(first, 'round-s')} / {_cell(first, 'overhead-s')}"])
    return md_table(["SuperNodes", "rounds counted", "round s",
                     "slowest node s (Receiving -> Sending)", "overhead s (round - slowest node)",
                     "slowest node with its reply's upload s (Receiving -> Sent successfully)",
                     "overhead beyond that s", "median node s",
                     "round 1: round / overhead s"], rows, numeric=True)


def split_table(result: dict[str, Any]) -> list[str]:
    """The overhead's parts and what bounds them (medians of rounds 2+)."""
    rows = []
    for n in result["setup"]["nodes"]:
        steady = result["by-nodes"][str(n)]["rounds-2+"]
        rows.append([n, *(_cell(steady, key) for key in (
            "skew-s", "push-tail-s", "server-side-s", "pickup-spread-s", "slowest-push-s",
            "aggregation-s", "slowest-handler-s", "median-to-handler-s"))])
    return md_table(["SuperNodes", "skew s", "last reply's upload s", "server side s",
                     "pickup spread s", "slowest reply upload s", "aggregation s",
                     "slowest train handler s", "median process start -> handler s"],
                    rows, numeric=True)


def ratio_line(result: dict[str, Any]) -> str:
    nodes = result["setup"]["nodes"]
    key = f"{max(nodes)}-vs-{min(nodes)}"
    parts = []
    for name, what in (("overhead-s", "overhead"),
                       ("overhead-sent-s", "overhead beyond the node with its upload"),
                       ("round-s", "round"), ("slowest-node-s", "slowest node"),
                       ("median-node-s", "median node")):
        if name not in result[key]:
            continue
        r = result[key][name]
        x = "n/a" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        parts.append(f"{what} {x} ({r['difference-s']:+.2f} s)")
    return f"**{max(nodes)} SuperNodes against {min(nodes)}** (medians of rounds 2+): " + \
        "; ".join(parts) + "."


def header(result: dict[str, Any]) -> list[str]:
    setup = result["setup"]
    nodes = setup["nodes"]
    return [
        f"# Deployment at scale: per-round overhead with {max(nodes)} SuperNodes against "
        f"{min(nodes)}", "",
        f"Generated by `{result['command']}` ({result['seconds']:.0f} s); load average "
        f"{result['load-avg-start']} at start, {result['load-avg-end']} at the end "
        f"({result['versions']['cpus']} shared cores: other engineers' jobs count). Raw "
        "numbers: `benchmarks/results/deployment_scale.json`.", "",
        "Setting: a real deployment on loopback, `flower-superlink --insecure` and N "
        "`flower-supernode --insecure` processes on one machine (each its own port, "
        "`FLWR_HOME`, data cache"
        + (f"; the SuperNodes and their ClientApps under `nice -n {setup['node-nice']}`"
           if setup.get("node-nice") else "")
        + "), driven by `flwr run --stream`; every node trains every "
        f"round (`{setup['run-config']}`; the rest is the product's defaults). Data: "
        f"{setup['data']}, so a node's work is the same at every N. "
        f"{setup['rounds']} rounds per run, {setup['repeats']} fresh deployment(s) per N; "
        "round 1 (each node installs the app and fills its data cache) is reported apart, "
        "the medians are over rounds 2+.", "",
        "Per round: **round** is the server's own time (`seconds` in `rounds.json`: "
        "`configure_train` to the end of `aggregate_train`); a node's time is its "
        "SuperNode's `Receiving: train message` -> `Sending: train message` (a fresh "
        "`flwr-clientapp` process per message: start-up, imports, local data, training, "
        "reply); **overhead** = round - slowest node's time. All node stamps are read by "
        "one process (one clock), so the overhead splits into *skew* (first node's "
        "`Receiving` to last node's `Sending`, minus the slowest node: the nodes do not "
        "start together), *the last reply's upload* (last `Sending` to last `Sent "
        "successfully`) and *server side* (the rest: from the round's start to the first "
        "pickup, and from the last upload to the round's end). *Pickup spread*: first to "
        "last `Receiving`.", ""]


NEEDED = ("overhead-s", "overhead-sent-s", "slowest-node-s", "push-tail-s", "skew-s",
          "server-side-s", "pickup-spread-s", "slowest-push-s", "median-to-handler-s",
          "slowest-handler-s", "aggregation-s")  # what the findings compare


def _pair(hi: dict[str, Any], lo: dict[str, Any], key: str, scale: float = 1.0,
          unit: str = "s", fmt: str = ".1f") -> str:
    return (f"{format(hi[key]['median'] * scale, fmt)} {unit} against "
            f"{format(lo[key]['median'] * scale, fmt)} {unit}")


def _times(ratios: dict[str, Any], key: str) -> str:
    r = ratios[key]["ratio"]
    return "n/a" if r is None else f"{r:.1f}x"


def between_rounds(result: dict[str, Any], n: int) -> list[float]:
    """From a round's last ``Sent successfully`` to the next round's first ``Receiving``
    (seconds), over consecutive rounds every node finished, in every run of ``n`` nodes."""
    gaps = []
    for run in result["runs"]:
        nodes = run["node-spans"]["nodes"] if run["nodes"] == n else []
        for k in range(min((len(s) for s in nodes), default=0) - 1):
            if all(s[k][2] is not None for s in nodes):
                gaps.append(min(s[k + 1][0] for s in nodes) - max(s[k][2] for s in nodes))
    return gaps


def findings(result: dict[str, Any]) -> list[str]:
    nodes = result["setup"]["nodes"]
    lo_n, hi_n, cpus = min(nodes), max(nodes), result["versions"]["cpus"]
    lo, hi = (result["by-nodes"][str(n)]["rounds-2+"] for n in (lo_n, hi_n))
    ratios = result[f"{hi_n}-vs-{lo_n}"]
    if not all(k in lo and k in hi for k in NEEDED) or "overhead-sent-s" not in ratios:
        return ["## Findings", "", "- Too few complete rounds to compare.",
                *lost_replies(result), f"- {EARLIER_RUNS}", ""]

    def pair(key: str, scale: float = 1.0, unit: str = "s", fmt: str = ".1f") -> str:
        return _pair(hi, lo, key, scale, unit, fmt)

    first = {n: result["by-nodes"][str(n)]["round-1"].get("round-s", {}).get("median", 0.0)
             for n in nodes}
    sent_ratio = ratios["overhead-sent-s"]["ratio"] or 0.0
    gap_lo, gap_hi = between_rounds(result, lo_n), between_rounds(result, hi_n)
    return [
        "## Findings", "",
        f"- **As the issue asks (round - slowest node's `Receiving` -> `Sending`)** the "
        f"overhead is {pair('overhead-s')} ({_times(ratios, 'overhead-s')}) at {hi_n} "
        f"SuperNodes against {lo_n}, while the slowest node itself takes "
        f"{pair('slowest-node-s')}. On {cpus} cores, {hi_n} `flwr-clientapp` processes "
        "start at once (interpreter, Flower, torch: process start -> handler "
        f"{pair('median-to-handler-s')}, medians) and contend for the CPU; training itself "
        f"takes {hi['slowest-handler-s']['median']:.2f} s at most. That growth is the "
        "machine, not the federation.",
        f"- **Where the extra overhead goes** (medians): skew {pair('skew-s')} (the "
        f"pickups spread over {pair('pickup-spread-s')}), the last reply's upload "
        f"{pair('push-tail-s')} (the slowest single upload {pair('slowest-push-s')}), the "
        f"server side {pair('server-side-s')}; the server's decoding, screening and "
        f"aggregation of the replies {pair('aggregation-s', 1e3, 'ms', '.0f')}.",
        "- **With the reply's upload counted as the node's time** (`Receiving` -> `Sent "
        "successfully`: a SuperNode logs `Sending` once the reply's message has reached "
        "it, while its arrays may still be on their way from the ClientApp process) the "
        f"overhead beyond the slowest node is {pair('overhead-sent-s')} "
        f"({_times(ratios, 'overhead-sent-s')}). " + (
            "What the SuperLink and the ServerApp add hardly depends on the number of "
            "nodes here." if sent_ratio <= 1.3 else
            f"So the SuperLink and the ServerApp add more at {hi_n} nodes too; here they "
            f"share {cpus} cores with {hi_n} ClientApps and {2 * hi_n} SuperNode and "
            "SuperExec processes (niced, but all polling, starting and exiting at once)."),
        f"- **Flower's polls set the floor.** {SOURCES} Two such polls put 0-6 s into every "
        f"round whatever the number of nodes: at {lo_n} nodes the overhead ranges "
        f"{lo['overhead-s']['min']:.1f}-{lo['overhead-s']['max']:.1f} s with their phase. "
        "From a round's last reply upload to the next round's first pickup: "
        f"{_span(gap_hi)} at {hi_n} nodes against {_span(gap_lo)} at {lo_n}" + (
            "; beyond the two polls, that is the ServerApp's work between rounds (pulling "
            "the replies, screening, aggregation, `rounds.json` and the checkpoint, the "
            "next instructions) and the pickup, on a busy machine."
            if gap_hi and max(gap_hi) > 6.0 else "."),
        f"- Round 1 (every node installs the app and fills its data cache) takes "
        f"{first[hi_n]:.1f} s at {hi_n} nodes against {first[lo_n]:.1f} s at {lo_n}.",
        *lost_replies(result), f"- {EARLIER_RUNS}",
        "- **Not measured here**: a machine per hospital (no CPU contention, real "
        "network latency), TLS and node authentication (the TLS runbook's deployment), "
        "larger models (uploads grow with the model), more nodes than one machine can "
        "run.", ""]


def _span(values: list[float]) -> str:
    return f"{min(values):.1f}-{max(values):.1f} s" if values else "n/a"


def unfinished_lines(result: dict[str, Any]) -> list[str]:
    """The rounds left out of the medians, and the run's failure counts."""
    lines = []
    for n in result["setup"]["nodes"]:
        entry = result["by-nodes"][str(n)]
        for row in entry["unfinished-rounds"]:
            lines.append(f"- {n} SuperNodes, repeat {row['repeat']}, round {row['round']}: "
                         f"{row['round-s']:.0f} s, {row['replies']} replies, "
                         f"{row['failures']} failed, {row['unfinished-nodes']} node(s) did "
                         "not finish")
        for status in entry["status"]:
            if status != "finished:completed":
                lines.append(f"- {n} SuperNodes: a run ended `{status}`")
        errs = entry["errors"]
        if any(errs.values()):
            lines.append(f"- {n} SuperNodes, all runs: the SuperLink logged `database is "
                         f"locked` {errs['superlink-database-locked']} time(s); nodes "
                         f"failed to send {errs['node-reply-send-failed']} reply(ies); "
                         f"{errs['supernodes-exited']} SuperNode(s) quit")
    return ["Rounds not counted (a node did not finish) and failures:", "", *lines, ""] \
        if lines else []


def lost_replies(result: dict[str, Any]) -> list[str]:
    """A finding when this run lost replies."""
    lost = sum(len(result["by-nodes"][str(n)]["unfinished-rounds"])
               for n in result["setup"]["nodes"])
    if not lost:
        return ["- **No round lost a reply in this run**: every node finished every round."]
    return [f"- **{lost} round(s) lost a reply in this run** (listed under the tables): "
            "such a round lasts until round-timeout and keeps the previous model when "
            "fewer than min-train-nodes replied."]


def markdown(result: dict[str, Any], png_name: str | None = None) -> str:
    """The whole page."""
    lines = [*header(result), *table(result), "", ratio_line(result), "",
             "Where the overhead goes (medians of rounds 2+; the parts' medians need not add "
             "up to the overhead's):", "", *split_table(result), "",
             *unfinished_lines(result)]
    if png_name:
        lines += [f"![rounds: slowest node and overhead]({png_name})", ""]
    lines += findings(result)
    return "\n".join(lines)
