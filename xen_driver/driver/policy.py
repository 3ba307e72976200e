"""What a job may make dom0 do: the operator's limits, applied to a task's configuration.

Job authors are trusted less than the operator who configures the plugin (docs/SECURITY.md).
Every value of a job's ``config {}`` that dom0 acts on -- a file it reads, a script it runs as
root, a bridge it plugs a guest into, memory and CPUs it hands out, bytes it writes into
XenStore -- passes one function here.  Each function either returns the host value to use or
raises :class:`ConfigError` naming the job's field, what the plugin allows, and the plugin
setting that would allow more.  The checks look at what the host path *is* (symlinks resolved,
file type), never only at the characters a job wrote.

Nothing here creates anything, so a refusal leaves nothing behind.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xen_driver.driver.config import TASK, PluginConfig
from xen_driver.driver.errors import ConfigError

#: Where Linux lists network interfaces; a bridge a job names must be one of them.
SYSFS_NET = "/sys/class/net"


@dataclass(frozen=True)
class HostLimits:
    """What the host has, as far as it is known (``None``: not learned, checked for syntax only)."""

    nr_cpus: int | None = None
    total_memory_mib: int | None = None


def is_inside(path: str, base: str) -> bool:
    """``path`` is ``base`` or below it (both already resolved)."""
    return path == base or path.startswith(base.rstrip("/") + "/")


def _real(field: str, value: str, path: str) -> str:
    try:
        return os.path.realpath(path)
    except (ValueError, OSError) as exc:  # NUL bytes, a symlink loop on some Pythons
        raise ConfigError(TASK, field, value, f"cannot be resolved to a host path ({exc})") from None


# ---- images -------------------------------------------------------------------------------------


def resolve_image(value: str, *, field: str, task_dir: str | None, image_dirs: Sequence[str]) -> str:
    """The real host path of a kernel or ramdisk a job names.

    A relative path is taken from the task directory (Nomad's ``artifact`` and ``template``
    put files there); an absolute path must lie in one of the plugin's ``image_dirs``.  Both
    are judged after resolving every symlink, so a link planted in the task directory cannot
    point the toolstack at a file elsewhere.  The result must be a regular, readable file.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(TASK, field, value, "must be a path to a PV kernel image")
    if "\x00" in value:
        raise ConfigError(TASK, field, value, "must not contain NUL characters")
    if os.path.isabs(value):
        path = _real(field, value, value)
    else:
        if not task_dir:
            raise ConfigError(TASK, field, value, "must be an absolute path (this task has no task directory)")
        path = _real(field, value, os.path.join(task_dir, value))
    allowed = [os.path.realpath(d) for d in image_dirs]
    if task_dir:
        allowed.append(_real(field, value, task_dir))
    if not any(is_inside(path, d) for d in allowed):
        where = ", ".join(image_dirs) or "(none configured)"
        raise ConfigError(
            TASK,
            field,
            value,
            f"must be inside the task directory or one of the plugin's image_dirs ({where});"
            ' the plugin setting "image_dirs" lists them',
        )
    if not os.path.isfile(path):
        raise ConfigError(TASK, field, value, "must name an existing file (nothing is there)")
    if not os.access(path, os.R_OK):
        raise ConfigError(TASK, field, value, "must be a readable file")
    return path


# ---- network ------------------------------------------------------------------------------------


def allowed_scripts(config: PluginConfig) -> dict[str, str]:
    """Real path -> the allow-list entry it came from, for every hotplug script the operator allows."""
    out: dict[str, str] = {}
    for entry in config.vif_scripts:
        path = entry if entry.startswith("/") else os.path.join(config.vif_scripts_dir, entry)
        out[os.path.realpath(path)] = entry
    return out


def resolve_vif_script(index: int, value: str, config: PluginConfig) -> str:
    """The real path of the hotplug script a job's vif names; dom0 runs it as root.

    A plain name is looked up in ``vif_scripts_dir``; an absolute path is taken as it is.
    Either way, after resolving symlinks it must be one of the scripts ``vif_scripts``
    allows, and an executable regular file.  A script in the task directory never is.
    """
    field = f"vif[{index}].script"
    allow = allowed_scripts(config)
    names = ", ".join(config.vif_scripts) or "none"
    hint = (
        f"must be one of the hotplug scripts the plugin allows ({names}, in {config.vif_scripts_dir});"
        ' an operator allows more with the plugin setting "vif_scripts"'
    )
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigError(TASK, field, value, hint)
    if "/" in value:
        if not value.startswith("/"):
            raise ConfigError(TASK, field, value, hint)
        path = _real(field, value, value)
    else:
        path = _real(field, value, os.path.join(config.vif_scripts_dir, value))
    if path not in allow:
        raise ConfigError(TASK, field, value, hint)
    try:
        st = os.stat(path)
    except OSError:
        raise ConfigError(
            TASK,
            field,
            value,
            f"is allowed by the plugin but {path} does not exist on this host (is Xen's toolstack installed?)",
        ) from None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise ConfigError(TASK, field, value, f"is allowed by the plugin but {path} is not an executable file")
    return path


def interface_exists(name: str, sysfs: str = SYSFS_NET) -> bool:
    """A network interface (Linux bridge, Open vSwitch bridge, ...) of this name exists."""
    return os.path.exists(os.path.join(sysfs, name))


def check_bridge(
    index: int, bridge: str, config: PluginConfig, exists: Callable[[str], bool] = interface_exists
) -> None:
    """A job may plug a guest only into a bridge the operator allows, and that exists."""
    field = f"vif[{index}].bridge"
    if bridge not in config.vif_bridges:
        allowed = ", ".join(config.vif_bridges) or "none"
        raise ConfigError(
            TASK,
            field,
            bridge,
            f"must be one of the bridges the plugin allows ({allowed});"
            ' an operator allows more with the plugin setting "vif_bridges"',
        )
    if not exists(bridge):
        raise ConfigError(TASK, field, bridge, "is allowed by the plugin but no such bridge exists on this host")


def check_vif_count(count: int, config: PluginConfig) -> None:
    if count > config.max_vifs:
        raise ConfigError(
            TASK,
            "vif",
            f"{count} vif blocks",
            f'at most {config.max_vifs} are allowed (plugin setting "max_vifs")',
        )


# ---- resources ----------------------------------------------------------------------------------


def check_memory(memory_mib: int, field: str, host: HostLimits) -> None:
    if host.total_memory_mib is not None and memory_mib > host.total_memory_mib:
        raise ConfigError(
            TASK, field, memory_mib, f"is more memory than this host has ({host.total_memory_mib} MiB in all)"
        )


def check_vcpus(vcpus: int, host: HostLimits) -> None:
    if host.nr_cpus is not None and vcpus > host.nr_cpus:
        raise ConfigError(TASK, "vcpus", vcpus, f"must be at most the host's {host.nr_cpus} CPUs")


# ---- ClickOS configuration ----------------------------------------------------------------------


def _too_big(field: str, given: object, size: int, limit: int) -> ConfigError:
    return ConfigError(
        TASK,
        field,
        given,
        f'is {size} bytes; at most {limit} bytes are allowed (plugin setting "max_click_config_bytes")',
    )


def check_click_text(text: str, config: PluginConfig) -> str:
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > config.max_click_config_bytes:
        raise _too_big("click_config", f"{text[:40]}...", size, config.max_click_config_bytes)
    return text


def read_click_config_file(rel: str, task_dir: str, config: PluginConfig) -> str:
    """Read a job's Click configuration from its task directory, within the size cap.

    The file must resolve inside the task directory and be a regular file (a FIFO planted there
    would block the read forever; a device could be endless).  The size is checked on the open
    descriptor before reading, so an oversized file is refused at once.
    """
    field = "click_config_file"
    base = os.path.realpath(task_dir)
    path = _real(field, rel, os.path.join(base, rel))
    if not is_inside(path, base) or path == base:
        raise ConfigError(TASK, field, rel, "must stay inside the task directory (symlinks included)")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(
            TASK,
            field,
            rel,
            "must name a file in the task directory (none is there: is the template's destination the same?)",
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(TASK, field, rel, "must not be a symbolic link") from None
        raise ConfigError(TASK, field, rel, f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(TASK, field, rel, "must be a regular file")
        limit = config.max_click_config_bytes
        if st.st_size > limit:
            raise _too_big(field, rel, st.st_size, limit)
        data = fh.read(limit + 1)
    if len(data) > limit:  # grew while we looked
        raise _too_big(field, rel, len(data), limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(TASK, field, rel, "must be a UTF-8 text file") from None


# ---- files the driver writes into a task directory ---------------------------------------------


def copy_into_task_dir(src: str, task_dir: str, filename: str) -> str:
    """Copy ``src`` (a file the driver made in its own state directory) to ``task_dir/filename``.

    The task directory's contents belong to the job, which may have planted a symlink where we
    are about to write.  The directory is opened without following a final symlink and the file
    is created relative to it with ``O_EXCL | O_NOFOLLOW``: an existing entry, link or not, is
    never written through.  Returns the path written.
    """
    if "/" in filename or filename in ("", ".", ".."):
        raise ValueError(f"not a plain file name: {filename!r}")
    dfd = os.open(task_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        out = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            with open(src, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view) :]
        finally:
            os.close(out)
    finally:
        os.close(dfd)
    return os.path.join(task_dir, filename)
