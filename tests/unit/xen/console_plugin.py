"""A stand-in for the plugin's console side, run as a process the tests SIGKILL.

``--mode keeper``: what the plugin does now — ask the FIFO keeper to copy the console log into
the FIFO (``FifoKeeperClient.copy``) and do nothing else with it.
``--mode self``: what the plugin did before — copy the log into the FIFO itself with a
``ConsolePump`` and commit the offset to ``console.offset`` after each write.

With ``--announce-agent`` (as the driver does) the keeper is told that this process's parent is
the Nomad agent.  Either way it prints ``ready`` once the copy is set up and then waits to be killed.  With
``XEN_DRIVER_TEST_COMMIT_GATE`` in the environment, the copier (this process in ``self`` mode,
the keeper it starts in ``keeper`` mode) stops after a write and before its commit while the gate
file exists: the window in which a crash makes a successor copy the same bytes again.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys


async def main(args: argparse.Namespace) -> None:
    if args.mode == "keeper":
        from xen_driver.xen.keeperclient import FifoKeeperClient

        client = FifoKeeperClient(args.state_dir, idle_exit_s=2.0, announce_agent=args.announce_agent)
        resp = await client.copy(args.key, args.fifo, args.log, offset=0, offset_file=args.offset_file)
        assert resp.get("ok"), resp
    else:
        from xen_driver.xen.console import ConsolePump, FifoSink
        from xen_driver.xen.fifokeeper import commit_gate, read_offset, write_offset

        pump = ConsolePump(tick_s=0.02)
        pump.start()
        stream = pump.add(
            args.key,
            args.log,
            FifoSink(args.fifo),
            offset=read_offset(args.offset_file) or 0,
            on_commit=lambda pos: write_offset(args.offset_file, pos),
        )
        if gate := os.environ.get("XEN_DRIVER_TEST_COMMIT_GATE"):
            stream.before_commit = commit_gate(gate)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("keeper", "self"), required=True)
    for opt in ("--state-dir", "--key", "--fifo", "--log", "--offset-file"):
        ap.add_argument(opt, required=True)
    ap.add_argument("--announce-agent", action="store_true", help="tell the keeper our parent is the Nomad agent")
    asyncio.run(main(ap.parse_args(sys.argv[1:])))
