"""Shared by the two pytest wrappers of the Go conformance suite (host part and dom0 part).

The Go tests are compiled once into a static binary (build.sh) and run with ``-test.v``; this
module builds it, reads its ``-test.v`` output and answers "did test X pass, and if not, what
did it print". The wrappers turn every named Go test into one pytest item, so ``pytest -v``
prints the list of conformance tests and their results.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

#: Every top-level Go test of the suite. The Xen ones need a dom0 (run by tests/xen/).
HOST_TESTS = (
    "TestBuiltAgainstPinnedNomad",
    "TestHandshake",
    "TestPluginInfo",
    "TestConfigSchema",
    "TestSetConfigAcceptsDefaults",
    "TestSetConfigRejectsBadConfig",
    "TestTaskConfigSchema",
    "TestCapabilities",
    "TestFingerprint",
    "TestTaskEventsStreamStaysOpen",
    "TestReattach",
    "TestUnknownTaskIDs",
    "TestShutdownExitsPromptly",
)
XEN_TESTS = (
    "TestXenLifecycle",
    "TestXenSelfTerminatingGuest",
    "TestXenStopTaskForcesStubbornGuest",
    "TestXenSignalTask",
    "TestXenConcurrentWaitTask",
    "TestXenRecoverTaskAfterPluginCrash",
    "TestXenShutdownLeavesGuestsRunning",
)
XEN_PREFIX = "TestXen"
#: Host tests that launch many plugin processes (each loader start is two launches) and do not
#: depend on the host: not repeated in dom0, where a launch takes tens of seconds under TCG.
LAUNCH_HEAVY = (
    "TestHandshake",
    "TestPluginInfo",
    "TestSetConfigAcceptsDefaults",
    "TestSetConfigRejectsBadConfig",
    "TestShutdownExitsPromptly",  # in dom0: TestXenShutdownLeavesGuestsRunning, with a guest
    "TestConfigSchema",  # the schema the plugin serves, whatever the host: about a minute in dom0
)
#: What runs in dom0: the lifecycle tests, and the host tests again on a real Xen host
#: (healthy fingerprint with real attributes, schema, capabilities, unknown ids).
DOM0_TESTS = XEN_TESTS + tuple(n for n in HOST_TESTS if n not in LAUNCH_HEAVY)

_RESULT = re.compile(r"^(\s*)--- (PASS|FAIL|SKIP): (\S+) \(([\d.]+)s\)")


def nomad_version() -> str:
    return (REPO / "tools" / "nomad" / "VERSION").read_text().strip()


def build() -> Path:
    """The compiled suite (tests/conformance/build.sh; cached, so usually instant)."""
    proc = subprocess.run(
        ["bash", str(HERE / "build.sh")], capture_output=True, text=True, timeout=3600, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise RuntimeError(f"compiling the conformance suite failed:\n{proc.stderr[-6000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def run_pattern(names) -> str:
    """A -test.run pattern selecting exactly these top-level tests (and their subtests)."""
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def listed_tests(binary: Path) -> list[str]:
    """Top-level tests compiled into the binary (``-test.list``)."""
    out = subprocess.run([str(binary), "-test.list", ".*"], capture_output=True, text=True, timeout=120, check=True)
    return [line for line in out.stdout.split() if line.startswith("Test")]


@dataclass
class Outcome:
    status: str  # PASS, FAIL, SKIP
    seconds: float
    subtests: dict[str, str] = field(default_factory=dict)


@dataclass
class Run:
    """A finished ``-test.v`` run."""

    output: str
    returncode: int
    seconds: float
    results: dict[str, Outcome] = field(default_factory=dict)

    @classmethod
    def parse(cls, output: str, returncode: int, seconds: float) -> Run:
        run = cls(output=output, returncode=returncode, seconds=seconds)
        for line in output.splitlines():
            m = _RESULT.match(line)
            if not m:
                continue
            indent, status, name, secs = m.groups()
            if "/" not in name:
                run.results[name] = Outcome(status, float(secs))
            else:
                top = name.split("/", 1)[0]
                run.results.setdefault(top, Outcome("?", 0.0)).subtests[name] = status
        return run

    def excerpt(self, name: str, limit: int = 200) -> str:
        """What the run printed for test ``name`` (from its RUN line to its result line)."""
        lines = self.output.splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith(f"=== RUN   {name}")), None)
        if start is None:
            return "\n".join(lines[-limit:])
        end = next(
            (i for i in range(start, len(lines)) if re.match(rf"^--- (PASS|FAIL|SKIP): {re.escape(name)} ", lines[i])),
            len(lines) - 1,
        )
        chunk = lines[start : end + 1]
        if len(chunk) > limit:
            chunk = chunk[:20] + [f"... ({len(chunk) - limit} lines) ..."] + chunk[-(limit - 20) :]
        return "\n".join(chunk)

    def check(self, name: str) -> Outcome:
        """Assert that ``name`` ran and passed; the assertion message carries its output."""
        outcome = self.results.get(name)
        if outcome is None:
            tail = "\n".join(self.output.splitlines()[-60:])
            raise AssertionError(
                f"{name} did not run to a result (exit status {self.returncode}); end of output:\n{tail}"
            )
        if outcome.status != "PASS":
            raise AssertionError(f"{name}: {outcome.status}\n{self.excerpt(name)}")
        return outcome

    def summary(self, names) -> list[str]:
        lines = []
        for name in names:
            o = self.results.get(name)
            if o is None:
                lines.append(f"  {name:40s} NOT RUN")
                continue
            subs = f"  ({len(o.subtests)} subtests)" if o.subtests else ""
            lines.append(f"  {name:40s} {o.status} {o.seconds:7.2f}s{subs}")
        return lines


def report(config, title: str, lines: list[str]) -> None:
    """Print lines on pytest's terminal right away (also from inside a captured fixture)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        return
    with capture.global_and_fixture_disabled() if capture is not None else _nothing():
        reporter.write_line("")
        reporter.write_line(title)
        for line in lines:
            reporter.write_line(line)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
