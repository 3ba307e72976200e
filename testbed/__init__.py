"""The real-Xen testbed: Xen 4.17 and a Debian dom0 booted under QEMU.

``testbed/build.sh`` builds (and caches) the images, ``testbed/run.sh`` runs one script in dom0,
and :class:`testbed.vm.Testbed` is the API for tests.
"""

from testbed.vm import AgentError, CommandError, Result, Testbed, TestbedError, locate_images, run_oneshot

__all__ = ["AgentError", "CommandError", "Result", "Testbed", "TestbedError", "locate_images", "run_oneshot"]
