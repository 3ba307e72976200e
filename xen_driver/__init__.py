"""nomad-driver-xen: a Nomad task driver that runs Xen PV unikernels."""

__version__ = "0.1.0"
