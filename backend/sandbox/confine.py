"""Confining a model process before it opens a user's file: rlimits, no capabilities, Landlock, seccomp.

Runs inside the model process (``backend.sandbox.child``) after its own imports and before it
deserialises anything it was sent. Every layer is the kernel's, applied to this process and all it
may start, and none can be lifted afterwards:

- rlimits: memory (``RLIMIT_DATA``: heap and private mappings, so a CUDA context's address-space
  reservations do not count), CPU time, file size, no core files;
- every capability dropped and ``no_new_privs`` set, so not even root inside can mount, load
  modules or gain privileges through a setuid program;
- Landlock (ABI 1+; net and scope rules from ABI 4 and 6): files may be read and executed only
  below the interpreter's own folders and the few system paths named, written only in the
  process's scratch folder; no TCP bind or connect; no signals to, or abstract sockets of,
  processes outside the sandbox;
- seccomp (libseccomp through ``pyseccomp``): no sockets at all, no ptrace or reading other
  processes' memory, no kill of other processes, no io_uring (it can open files without the
  syscalls above), no raising its own limits, no mount, bpf, perf or keyring calls.

Landlock is the only layer that knows paths; seccomp cannot see them, and a denylist alone would
leave ``open`` to whatever the process's user may read. ``available()`` says whether both work here.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import os
import resource
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# Landlock's syscalls (the same numbers on every architecture that has them)
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_DUMPABLE = 38, 24, 4

# filesystem rights by Landlock ABI: (bit, first ABI that knows it)
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_DIR_ONLY = [(1 << bit, 1) for bit in range(4, 13)] + [(1 << 13, 2)]  # remove/make entries, refer
_TRUNCATE, _IOCTL_DEV = 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1

# denied with EPERM whatever their arguments
DENIED_SYSCALLS = (
    "socket", "connect", "bind", "listen", "accept", "accept4",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd", "pidfd_send_signal",
    "process_madvise", "kill", "tkill", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "setrlimit", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "mount_setattr", "fsopen", "fsmount",
    "fsconfig", "move_mount", "open_tree", "open_by_handle_at", "name_to_handle_at", "init_module",
    "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff",
    "quotactl", "acct", "settimeofday", "clock_settime", "adjtimex", "sethostname", "setdomainname",
    "iopl", "ioperm", "syslog", "vhangup", "fanotify_init", "personality",
)


class SandboxUnavailable(RuntimeError):
    """This machine cannot confine a model process (no Landlock, or no seccomp library)."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    cpu_seconds: int | None
    file_bytes: int = 1 << 30


@dataclass
class Paths:
    """What the confined process may touch; everything else is out of reach."""

    read: list[Path] = field(default_factory=list)  # read and execute, recursively
    write: list[Path] = field(default_factory=list)  # anything, recursively (the scratch folder)
    devices: list[Path] = field(default_factory=list)  # read, write and ioctl (GPUs, /dev/null)


# -- Landlock -------------------------------------------------------------------------------------

class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(number: int, *args: object) -> int:
    result = _libc.syscall(ctypes.c_long(number), *args)
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return result


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when Landlock is absent or disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return _syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_RULESET_VERSION))
    except OSError:
        return 0


def _fs_rights(abi: int) -> tuple[int, int]:
    """(every right this ABI handles, the rights that apply to files as well as folders)."""
    files = _EXECUTE | _WRITE_FILE | _READ_FILE | (_TRUNCATE if abi >= 3 else 0) | (_IOCTL_DEV if abi >= 5 else 0)
    return files | _READ_DIR | sum(bit for bit, since in _DIR_ONLY if abi >= since), files


def _add_path(ruleset: int, path: Path, access: int, file_rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        allowed = access if os.path.isdir(path) else access & file_rights
        rule = _PathBeneath(allowed_access=allowed, parent_fd=fd)
        _syscall(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                 ctypes.c_uint32(0))
    finally:
        os.close(fd)


def apply_landlock(paths: Paths) -> int:
    """Restrict this process (and its future children) to ``paths``; returns the ABI used."""
    abi = landlock_abi()
    if abi < 1:
        raise SandboxUnavailable("the kernel has no Landlock (Linux 5.13+ with landlock in its LSM list)")
    handled, file_rights = _fs_rights(abi)
    attr = _RulesetAttr(handled_access_fs=handled,
                        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
                        scoped=(_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = _syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        read = _READ_FILE | _READ_DIR | _EXECUTE
        for path in paths.read:
            _add_path(ruleset, path, read, file_rights)
        for path in paths.write:
            _add_path(ruleset, path, handled, file_rights)
        device = _READ_FILE | _WRITE_FILE | (_IOCTL_DEV if abi >= 5 else 0)
        for path in paths.devices:
            _add_path(ruleset, path, device, file_rights)
        _syscall(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    return abi


# -- seccomp --------------------------------------------------------------------------------------

def _seccomp_module():
    try:
        import pyseccomp
    except (ImportError, OSError) as error:  # the package, or libseccomp.so.2 under it, is missing
        raise SandboxUnavailable(f"seccomp is unavailable ({error}); install libseccomp2 and pyseccomp") from None
    return pyseccomp


def apply_seccomp() -> None:
    """Deny the syscalls of ``DENIED_SYSCALLS`` with EPERM; tgkill only within this process; prlimit64
    may read limits but not set them."""
    seccomp = _seccomp_module()
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    deny = seccomp.ERRNO(errno.EPERM)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(deny, name)
        except (OSError, ValueError, RuntimeError):  # not a syscall on this architecture
            continue
    rules.add_rule(deny, "tgkill", seccomp.Arg(0, seccomp.NE, os.getpid()))
    rules.add_rule(deny, "prlimit64", seccomp.Arg(2, seccomp.NE, 0))
    rules.load()


# -- rlimits and capabilities ---------------------------------------------------------------------

def apply_rlimits(limits: Limits) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (limits.memory_bytes, limits.memory_bytes))
    if limits.cpu_seconds is not None:  # SIGXCPU at the soft limit; the parent may move it (prlimit)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, resource.RLIM_INFINITY))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_capabilities() -> None:
    """Empty the bounding, effective, permitted and inheritable sets (root inside keeps its uid only)."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # past the last capability this kernel knows
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(_CapHeader(version=0x20080522, pid=0)), data) != 0:  # _LINUX_CAPABILITY_VERSION_3
        code = ctypes.get_errno()
        raise OSError(code, f"capset: {os.strerror(code)}")


def set_no_new_privs() -> None:
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(code)}")
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # no core dumps, and no ptrace attach from outside either


# -- the whole ------------------------------------------------------------------------------------

def interpreter_paths() -> list[Path]:
    """Folders the interpreter and its packages load from, lazily imported modules included."""
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    roots |= {Path(p) for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()}
    return sorted(roots)


SYSTEM_READ = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
               "/etc/localtime", "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/sys/devices/system/cpu",
               "/sys/fs/cgroup/cpu.max", "/dev/urandom", "/dev/random")
SYSTEM_DEVICES = ("/dev/null", "/dev/zero", "/dev/full")


def default_paths(scratch: Path, code: Iterable[Path] = ()) -> Paths:
    """Read: the interpreter, its packages, ``code`` (the project's own packages, never its data folder)
    and a few system files; write: ``scratch`` only; devices: the null devices and any NVIDIA GPU."""
    read = [*interpreter_paths(), *(Path(p) for p in SYSTEM_READ), Path(f"/proc/{os.getpid()}"), *code]
    gpus = [Path(p) for p in glob.glob("/dev/nvidia*")] + [Path("/proc/driver/nvidia")]
    return Paths(read=read, write=[scratch], devices=[Path(p) for p in SYSTEM_DEVICES] + gpus)


def confine(limits: Limits, paths: Paths) -> None:
    """All of the module's layers, in the order the kernel allows them; raises SandboxUnavailable or
    OSError when one cannot be applied (the caller must then not go on)."""
    _seccomp_module()  # fail before anything is half-applied
    apply_rlimits(limits)
    if os.geteuid() == 0 or _has_capabilities():
        drop_capabilities()
    set_no_new_privs()
    apply_landlock(paths)
    apply_seccomp()


def _has_capabilities() -> bool:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return True
    effective = next((line.split()[1] for line in status.splitlines() if line.startswith("CapEff:")), "0")
    return int(effective, 16) != 0


def available() -> str | None:
    """None when this machine can confine model processes, else why not."""
    if landlock_abi() < 1:
        return "the kernel has no Landlock (Linux 5.13+ with landlock among its LSMs)"
    try:
        _seccomp_module()
    except SandboxUnavailable as error:
        return str(error)
    return None
