"""Writing a large output file so that it appears only when complete: into `.<name>.<pid>.<random>.part`
beside it, fsynced, then renamed into place. An error, Ctrl-C or SIGTERM (raised as an exception by the
command-line tools) removes the part file; one left by SIGKILL or a power cut is removed by the next run
writing the same name once its writer's pid is gone."""
from __future__ import annotations

import glob
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)


@contextmanager
def atomic_output(outfile: Path, force: bool, error: Callable[[str], Exception]) -> Iterator[Path]:
    """Yields the temporary path to write; on normal exit it replaces `outfile`. `error(message)` makes the
    exception raised when `outfile` exists and `force` is off (checked before and after writing)."""
    if outfile.exists() and not force:
        raise error(f"{outfile}: already exists; pass --force to overwrite it")
    if not outfile.parent.is_dir():
        raise error(f"{outfile.parent}: output directory does not exist")
    remove_stale_parts(outfile)
    prefix = f".{outfile.name}.{os.getpid()}."
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".part", dir=outfile.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the output is an ordinary new file
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if outfile.exists() and not force:  # appeared while we were writing
            raise error(f"{outfile}: already exists; pass --force to overwrite it")
        os.replace(tmp, outfile)
    except BaseException:
        # by pattern, not by `tmp`: a signal can land between mkstemp and the assignment
        for part in outfile.parent.glob(f"{glob.escape(prefix)}*.part"):
            part.unlink(missing_ok=True)
        raise


def remove_stale_parts(outfile: Path) -> None:
    """Removes the part files of `outfile` whose writer is gone."""
    for part in outfile.parent.glob(f".{glob.escape(outfile.name)}.*.part"):
        pid = part.name[len(outfile.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            part.unlink()
            logger.info("removed %s, left by an interrupted run", part)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # someone else's process (EPERM): leave its file
    return True


def _umask() -> int:
    try:  # Linux >= 4.7 reports it without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (and put it straight back)
    os.umask(mask)
    return mask
