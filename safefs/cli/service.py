"""``safefs service install|uninstall``: the systemd user units of the gateway and of the mount.

The unit text has one home, ``systemd/*.service`` (shipped inside the package as
``safefs/units``). Its Exec lines name plain ``safefs``, which systemd looks for only in
/usr/local/bin and /usr/bin; ``install`` writes the units into the user's unit directory with
the absolute path of this installation's ``safefs`` instead (a virtual environment, ~/.local),
and another mount point than ``%h/safe`` if asked.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import resources
from pathlib import Path

from safefs import paths

from .common import QuietError

GATEWAY_UNIT = "safefs-gateway.service"
MOUNT_UNIT = "safefs.service"
UNITS = (GATEWAY_UNIT, MOUNT_UNIT)
#: The mount point as ``safefs.service`` writes it.
UNIT_MOUNTPOINT = "%h/safe"

_EXEC_SAFEFS = re.compile(r"^(Exec\w*=[-@:+!]*)safefs(?= )", re.MULTILINE)
_PLAIN_WORD = re.compile(r"[\w@+=:,./-]+")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "service", help="install the systemd user services (gateway and ~/safe mount)",
        description="Install or remove the systemd user units safefs-gateway.service and "
        "safefs.service (the mount of ~/safe), for the current user.")
    actions = parser.add_subparsers(title="actions", metavar="ACTION", required=True)

    install = actions.add_parser(
        "install", help="write the units, then enable and start them",
        description="Write the units into $XDG_CONFIG_HOME/systemd/user, pointing at this "
        "installation's safefs, then reload the user manager and enable and start them (or "
        "print the systemctl commands when no user manager is reachable).")
    install.add_argument("--no-enable", action="store_true",
                         help="only write the units and reload the user manager")
    install.add_argument("--mountpoint", metavar="PATH", type=Path,
                         help="mount the drive here instead of ~/safe")
    install.set_defaults(func=_install)

    uninstall = actions.add_parser(
        "uninstall", help="stop and disable the units, then remove them",
        description="Stop the services (the mount uploads its pending changes first), disable "
        "them and remove their unit files.")
    uninstall.set_defaults(func=_uninstall)


def unit_dir() -> Path:
    """Where the user manager reads the units an administrator (here: the user) installs."""
    return paths.config_dir().parent / "systemd" / "user"


def render(name: str, executable: Path, mountpoint: Path | None = None) -> str:
    """The text of unit ``name`` running ``executable``, mounting ``mountpoint`` if given."""
    text = (resources.files("safefs") / "units" / name).read_text()
    text = _EXEC_SAFEFS.sub(lambda match: match[1] + exec_word(str(executable)), text)
    if mountpoint is not None:
        text = text.replace(UNIT_MOUNTPOINT, exec_word(str(mountpoint)))
    return text


def exec_word(text: str) -> str:
    """``text`` as one word of an Exec line: specifiers, variables and quotes escaped."""
    escaped = text.replace("%", "%%").replace("$", "$$")
    if _PLAIN_WORD.fullmatch(text):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def safefs_executable() -> Path:
    """The ``safefs`` script of this installation, not whichever comes first on PATH."""
    invoked = Path(sys.argv[0])
    candidates = [invoked] if invoked.name == "safefs" else []
    candidates += [Path(sysconfig.get_path("scripts")) / "safefs",
                   Path(sysconfig.get_path("scripts", sysconfig.get_preferred_scheme("user")))
                   / "safefs"]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    raise QuietError("cannot find the safefs executable of this installation; run "
                     "`safefs service install` with the safefs you want the services to run")


def _install(args: argparse.Namespace) -> None:
    executable = safefs_executable()
    mountpoint = args.mountpoint.expanduser().absolute() if args.mountpoint else None
    directory = unit_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        (directory / name).write_text(render(name, executable, mountpoint))
    print(f"installed {' and '.join(UNITS)} in {directory}")
    commands = [["daemon-reload"]]
    if not args.no_enable:
        target = mountpoint or Path.home() / "safe"
        if os.path.ismount(target):
            # Starting now would fail on the busy mount point (and its gateway's data lock).
            print(f"{target} is mounted already: the services start at the next login, or now "
                  f"after `safefs umount {target}` and `systemctl --user start {MOUNT_UNIT}`")
            commands.append(["enable", *UNITS])
        else:
            commands.append(["enable", "--now", *UNITS])
    if _user_manager_reachable():
        for command in commands:
            _systemctl(command)
    else:
        _print_commands(commands)


def _uninstall(args: argparse.Namespace) -> None:
    directory = unit_dir()
    installed = [name for name in UNITS if (directory / name).exists()]
    if not installed:
        raise QuietError(f"no safefs units in {directory}")
    # systemd stops the mount (ExecStop uploads its pending changes) before the gateway it is
    # After=, and `disable` also clears links whose unit file is gone.
    stop = ["disable", "--now", *installed]
    reachable = _user_manager_reachable()
    if reachable:
        _systemctl(stop)
    for name in installed:
        (directory / name).unlink()
    print(f"removed {' and '.join(installed)} from {directory}")
    if reachable:
        _systemctl(["daemon-reload"])
    else:
        _print_commands([stop, ["daemon-reload"]])


def _user_manager_reachable() -> bool:
    """True when ``systemctl --user`` can talk to a running user manager (its private socket)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (bool(runtime) and shutil.which("systemctl") is not None
            and (Path(runtime) / "systemd" / "private").exists())


def _systemctl(command: list[str]) -> None:
    result = subprocess.run(["systemctl", "--user", *command], capture_output=True, text=True)
    if result.returncode != 0:
        raise QuietError(f"systemctl --user {' '.join(command)}: "
                         f"{result.stderr.strip() or f'exit status {result.returncode}'}")


def _print_commands(commands: list[list[str]]) -> None:
    print("no systemd user manager is reachable from here; in your session, run:")
    for command in commands:
        print("  systemctl --user " + " ".join(command))
