"""The ``nomad-driver-xen breakdown`` subcommand: its arguments (xen_driver/cli.py adds them to
the command line) and the run that collects, draws and prints, exiting 1 with one line on a
:class:`BreakdownError`.
"""

from __future__ import annotations

import argparse
import json
import sys

from xen_driver.breakdown.collect import collect
from xen_driver.breakdown.model import BreakdownError
from xen_driver.breakdown.nomad_api import NomadAPI
from xen_driver.breakdown.render import plot_stacked, render_table, report_bars


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "breakdown",
        help="where a job's instantiation time went: server, scheduling, client, driver phases, guest boot",
        description=(
            "Reads Nomad's HTTP API and prints, per allocation, the time from the job's submission to the"
            " task's start, phase by phase, and the clock each phase was measured on."
        ),
    )
    p.add_argument("target", help="job id, or allocation id (or an even-length prefix of one)")
    p.add_argument(
        "-address", "--address", default=None, help="Nomad HTTP address (default: $NOMAD_ADDR or http://127.0.0.1:4646)"
    )
    p.add_argument("-namespace", "--namespace", default=None, help="namespace (default: $NOMAD_NAMESPACE or default)")
    p.add_argument("--driver", default="xen", help='the task driver whose tasks to break down (default "xen")')
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--png", metavar="FILE", default=None, help="also draw a stacked-bar figure (needs the [plot] extra)"
    )
    p.add_argument(
        "--synced-clocks",
        action="store_true",
        help="trust that server and client clocks agree (NTP), so dispatch and total are computed across hosts",
    )
    return p


def run(args: argparse.Namespace, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    api = NomadAPI(address=args.address, namespace=args.namespace)
    try:
        report = collect(api, args.target, driver=args.driver, synced_clocks=args.synced_clocks)
        if args.png:
            what = f"job {report.job_id}" if report.kind == "job" else f"allocation {report.target}"
            plot_stacked(
                report_bars(report),
                args.png,
                title=f"Instantiation breakdown of {what} ({report.driver})",
                subtitle=f"{sum(1 for r in report.rows if r.started)} started task(s); Nomad at {report.address}",
                phases=report.phases,
            )
    except BreakdownError as exc:
        err.write(f"nomad-driver-xen breakdown: {exc}\n")
        return 1
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(render_table(report))
    return 0
