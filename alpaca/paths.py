"""Where the config file is, as the original decided it (wiki "File Path").

1. ``-c``/``-C PATH`` given: that path, as is (an empty one is an error).
2. The executable is in ``/usr/bin/``: ``/etc/alpaca-tunnel.d/config.json``.
3. The executable is in ``/usr/local/bin/``: ``/usr/local/etc/alpaca-tunnel.d/config.json``.
4. Otherwise: ``<directory of the executable>/alpaca-tunnel.d/config.json``.

Files named inside the config (``secret_file``, ``chnroute.data``, ``state_file``) are
relative to the config file's directory, never to the executable or the working directory.
Pure functions; the only input from the process is :func:`executable_path`.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

from alpaca.errors import ConfigError

CONFIG_NAME = "config.json"
CONFIG_DIR_NAME = "alpaca-tunnel.d"

#: Executable directory -> config directory, for the two installed locations.
INSTALLED_CONFIG_DIRS: dict[Path, Path] = {
    Path("/usr/bin"): Path("/etc") / CONFIG_DIR_NAME,
    Path("/usr/local/bin"): Path("/usr/local/etc") / CONFIG_DIR_NAME,
}


def executable_path(argv0: str | None = None) -> Path:
    """The running executable, symlinks resolved (``sys.argv[0]`` unless ``argv0`` is given).

    A bare name (started through ``$PATH``) is looked up in ``$PATH`` first.
    """
    name = sys.argv[0] if argv0 is None else argv0
    if "/" not in name:
        found = shutil.which(name)
        if found is not None:
            name = found
    return Path(name).resolve()


def default_config_path(executable: Path) -> Path:
    """The config path used when none is given, from the executable's location."""
    directory = executable.parent
    installed = INSTALLED_CONFIG_DIRS.get(directory)
    if installed is not None:
        return installed / CONFIG_NAME
    return directory / CONFIG_DIR_NAME / CONFIG_NAME


def resolve_config_path(given: str | None, executable: Path | None = None) -> Path:
    """The config file to read: ``given`` (from ``-c``) if set, else the default.

    Args:
        given: the ``-c``/``-C`` argument, or None.
        executable: the executable's path; :func:`executable_path` when None (tests inject it).

    Raises:
        ConfigError: ``given`` is empty (``-c ""``: a variable left unset, say), which named
            the working directory.
    """
    if given:
        return Path(given)
    default = default_config_path(executable_path() if executable is None else executable)
    if given == "":
        raise ConfigError([f"-c is empty: give the path of the config file, or leave -c out for"
                           f" the default {default}"])
    return default


def relative_to_config(config_path: Path, value: str) -> Path:
    """A path named in the config: absolute as is, relative to the config's directory otherwise."""
    candidate = Path(value)
    if candidate.is_absolute():
        return candidate
    return config_path.parent / candidate


#: What changes when a file's content is replaced: (device, inode, size, mtime, ctime), or
#: None when it is absent.
FileIdentity = tuple[int, int, int, int, int] | None


def file_identity(path: Path) -> FileIdentity:
    """The identity of the file behind ``path`` (symlinks followed); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def socket_path_fault(path: Path) -> str | None:
    """What makes ``path`` unusable as the control socket (a directory such as ``/``, a file
    that is not a socket: the journal and the lock go beside it, named after it); None if
    usable (absent, or a socket)."""
    if not path.name:
        return "names no file (give a path such as /run/alpaca-tunnel/alpaca0.sock)"
    try:
        mode = path.lstat().st_mode
    except OSError:
        return None  # absent (created at start), or a directory we cannot look into: said then
    if not stat.S_ISSOCK(mode):
        return "exists and is not a socket (remove it or choose another path)"
    return None
