"""Xen backends: xl and libvirt toolstacks, XenStore, ClickOS config push, console and stats.

This layer is usable and testable without Nomad and knows nothing of the layers above it.
"""
