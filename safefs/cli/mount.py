"""``safefs mount|umount|status|sync``: the FUSE file system and its daemon."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from safefs.fs import UPLOAD_DELAY

from .common import QuietError, progress_bar

#: How long ``mount`` waits for a background daemon to answer.
MOUNT_TIMEOUT = 120.0
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?$", re.IGNORECASE)


def register(subparsers: argparse._SubParsersAction) -> None:
    mount = subparsers.add_parser(
        "mount", help="mount the drive",
        description="Mount the account's drive at MOUNTPOINT. Without --gateway it uses the "
        "running (or configured) gateway, else starts one on the local store; the account is "
        "created on first use.")
    mount.add_argument("mountpoint", metavar="MOUNTPOINT")
    mount.add_argument("--foreground", "-f", action="store_true",
                       help="stay in the foreground (for systemd and debugging)")
    mount.add_argument("--gateway", metavar="URL", help="gateway URL")
    mount.add_argument("--cache-size", metavar="SIZE", type=parse_size, default="10G",
                       help="local cache size, e.g. 512M or 20G (default 10G); changes not "
                       "uploaded yet are never evicted")
    mount.add_argument("--upload-delay", metavar="SECONDS", type=float, default=UPLOAD_DELAY,
                       help="upload a closed file once it has not changed for this long, "
                       "and publish a directory after 2.5 times as long (default %(default)s)")
    mount.add_argument("--poll-interval", metavar="SECONDS", type=float, default=15.0,
                       help="how often to look for changes made by other devices "
                       "(default %(default)s)")
    mount.set_defaults(func=_mount)

    umount = subparsers.add_parser(
        "umount", help="upload pending changes, then unmount",
        description="Upload pending changes (with progress), unmount and wait for the daemon "
        "to exit. If the gateway is unreachable, the changes stay in the local cache and are "
        "uploaded at the next mount.")
    umount.add_argument("mountpoint", metavar="MOUNTPOINT")
    umount.set_defaults(func=_umount)

    status = subparsers.add_parser(
        "status", help="gateway, pending uploads, last sync and conflicts of the mounts")
    status.add_argument("mountpoint", metavar="MOUNTPOINT", nargs="?",
                        help="one mount (default: all)")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)

    sync = subparsers.add_parser(
        "sync", help="wait until everything has reached the gateway",
        description="Upload and publish every pending change of the mount holding PATH (default: "
        "every mount) and pull changes made elsewhere; returns when done.")
    sync.add_argument("path", metavar="PATH", nargs="?")
    sync.set_defaults(func=_sync)


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512M or 20G)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** " kmgt".index(unit.lower() or " "))


# -- mount -----------------------------------------------------------------------------------

def _mount(args: argparse.Namespace) -> None:
    mountpoint = Path(args.mountpoint).expanduser()
    if not mountpoint.is_dir():
        raise QuietError(f"{mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise QuietError(f"{mountpoint} is already a mount point")
    from safefs.fs.cache import MIN_CACHE_SIZE

    if args.cache_size < MIN_CACHE_SIZE:
        raise QuietError(f"--cache-size must be at least {MIN_CACHE_SIZE >> 20}M")
    if args.foreground:
        _run_foreground(args, mountpoint)
    else:
        _start_daemon(args, mountpoint)


def _run_foreground(args: argparse.Namespace, mountpoint: Path) -> None:
    from safefs.fs.mount import MountError, MountOptions, run

    if args.verbose == 0:
        logging.getLogger("safefs").setLevel(logging.INFO)
    options = MountOptions(mountpoint, args.gateway, args.cache_size, args.upload_delay,
                           args.poll_interval)
    try:
        run(options)
    except MountError as exc:
        raise QuietError(str(exc)) from None
    except BaseExceptionGroup as group:  # a MountError raised inside the daemon's nursery
        errors = group.subgroup(MountError)
        if errors is None:
            raise
        raise QuietError(str(_leaf(errors))) from None


def _leaf(group: BaseException) -> BaseException:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    return group


def _start_daemon(args: argparse.Namespace, mountpoint: Path) -> None:
    """Start ``mount --foreground`` detached and return once it answers (its READY=1)."""
    from safefs import paths
    from safefs.fs.mount import cache_dir_for

    log_path = paths.ensure_private_dir(cache_dir_for(mountpoint)) / "mount.log"
    command = [sys.executable, "-m", "safefs", *["-v"] * args.verbose, "mount",
               str(mountpoint), "--foreground", "--cache-size", str(args.cache_size),
               "--upload-delay", str(args.upload_delay),
               "--poll-interval", str(args.poll_interval)]
    if args.gateway:
        command += ["--gateway", args.gateway]
    address = f"\0safefs-mount-{os.getpid()}-{secrets.token_hex(4)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(0.2)
        env = dict(os.environ, NOTIFY_SOCKET="@" + address[1:])
        with open(log_path, "ab") as log:
            log_start = log.tell()
            daemon = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                      stderr=log, start_new_session=True)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if b"READY=1" in notify.recv(4096).split(b"\n"):
                    return
            except TimeoutError:
                pass
            if daemon.poll() is not None:
                raise QuietError(_last_error(log_path, log_start) or
                                 f"the mount daemon exited with {daemon.returncode}")
        daemon.terminate()
        raise QuietError(f"the mount did not come up within {MOUNT_TIMEOUT:.0f} s "
                         f"(log: {log_path})")


def _last_error(log_path: Path, start: int) -> str:
    """The daemon's one-line error among what it logged from ``start`` on."""
    with open(log_path, "rb") as log:
        log.seek(start)
        lines = log.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        if line.startswith("safefs: "):
            return line.removeprefix("safefs: ")
    return lines[-1] if lines else ""


# -- umount, status, sync --------------------------------------------------------------------

def safefs_mounts() -> list[Path]:
    """Mount points of safefs file systems, from /proc/self/mounts."""
    mounts = []
    with open("/proc/self/mounts") as table:
        for line in table:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "fuse.safefs":
                mounts.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)),
                                          fields[1])))
    return mounts


def _mount_of(path: str | None) -> Path:
    """The safefs mount holding ``path``."""
    here = Path(path or ".").resolve()
    mounts = safefs_mounts()
    for candidate in [here, *here.parents]:
        if candidate in mounts:
            return candidate
    raise QuietError(f"{path or here} is not inside a safefs mount")


def _flush(mountpoint: Path, label: str, pull: bool) -> dict:
    """Ask the daemon for a flush and wait for it, with progress; returns the final status."""
    from safefs import osutil
    from safefs.fs.ctrl import read_status, request_flush, wait_progress

    fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        osutil.syncfs(fd)  # the kernel writes its cached pages back to the daemon
    finally:
        os.close(fd)
    start = read_status(mountpoint)
    target = request_flush(mountpoint, pull)
    with progress_bar(start["pending_bytes"], label) as progress:
        done = start["uploaded_bytes"]
        while True:
            now = wait_progress(mountpoint)  # at the flush's end, or soon for the bar
            progress(now["uploaded_bytes"] - done)
            done = now["uploaded_bytes"]
            if max(now["flush_done"], now["flush_failed"]) >= target:
                return read_status(mountpoint)


def _umount(args: argparse.Namespace) -> None:
    from safefs.fs.ctrl import read_status

    mountpoint = Path(args.mountpoint).expanduser().resolve()
    if mountpoint not in safefs_mounts():
        raise QuietError(f"{mountpoint} is not a safefs mount")
    try:
        pid = read_status(mountpoint)["pid"]
    except OSError:  # the daemon is gone (ENOTCONN): only the kernel's side is left
        _fusermount(mountpoint, "-uz")
        print(f"safefs: the daemon of {mountpoint} was not running; unmounted", file=sys.stderr)
        return
    status = _flush(mountpoint, "uploading", pull=False)
    if status["flush_failed"] > status["flush_done"]:
        print(f"safefs: gateway unreachable ({status['flush_error']}): "
              f"{status['pending_files']} files stay in the local cache and are uploaded at "
              "the next mount", file=sys.stderr)
    _fusermount(mountpoint, "-u")
    while _alive(pid):
        time.sleep(0.1)


def _fusermount(mountpoint: Path, flags: str) -> None:
    result = subprocess.run(["fusermount3", flags, str(mountpoint)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        message = result.stderr.strip().removeprefix("fusermount3: ")
        raise QuietError(f"cannot unmount {mountpoint}: {message or 'fusermount3 failed'}")


def _alive(pid: int) -> bool:
    """Whether the process still runs (a zombie waiting to be reaped has finished)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(") ")[2][:1] != "Z"
    except FileNotFoundError:
        return False


def _status(args: argparse.Namespace) -> None:
    from safefs.fs.ctrl import read_status

    mounts = [Path(args.mountpoint).resolve()] if args.mountpoint else safefs_mounts()
    report = []
    for mountpoint in mounts:
        try:
            report.append(read_status(mountpoint))
        except OSError as exc:
            if args.mountpoint:
                raise QuietError(f"{mountpoint} does not answer as a safefs mount: "
                                 f"{exc.strerror}") from None
    if args.json:
        print(json.dumps(report[0] if args.mountpoint else report, indent=2, sort_keys=True))
        return
    if not report:
        print("no safefs mount")
    for status in report:
        print(_describe(status))


def _describe(status: dict) -> str:
    from safefs.cli.common import _human

    if status["last_sync"]:
        ago = time.time() - status["last_sync"]
        last = f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(status['last_sync']))} " \
               f"({ago:.0f} s ago)"
    else:
        last = "not yet"
    reach = "reachable" if status["online"] else "UNREACHABLE"
    return "\n".join([
        status["mountpoint"],
        f"  gateway    {status['gateway']} ({reach})",
        f"  pending    {status['pending_files']} files ({_human(status['pending_bytes'])}), "
        f"{status['pending_dirs']} directories",
        f"  last sync  {last}",
        f"  conflicts  {status['conflicts']}",
        f"  cache      {_human(status['cache_bytes'])} of {_human(status['cache_limit'])} "
        f"in {status['cache_dir']}",
    ])


def _sync(args: argparse.Namespace) -> None:
    mounts = [_mount_of(args.path)] if args.path else safefs_mounts()
    if not mounts:
        raise QuietError("no safefs mount")
    for mountpoint in mounts:
        try:
            status = _flush(mountpoint, f"syncing {mountpoint}", pull=True)
        except OSError as exc:
            raise QuietError(f"{mountpoint} does not answer: {exc.strerror}") from None
        if status["flush_failed"] > status["flush_done"]:
            raise QuietError(f"{mountpoint}: {status['flush_error']}")
