"""Is there a screen? If not, a virtual one (Xvfb) so the demo still runs the real scene.

No Qt here: this decides *before* Qt starts (a Qt application without a display aborts).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def has_display() -> bool:
    """True when a window can be shown: macOS and Windows always; X11 or Wayland elsewhere."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def xvfb_path() -> str | None:
    return shutil.which("Xvfb")


@contextmanager
def virtual_display(width: int = 1600, height: int = 1000, timeout_s: float = 20.0) -> Iterator[str]:
    """Start Xvfb on a free display number, point ``DISPLAY`` at it, stop it afterwards.

    Yields the display name (``":99"``). Raises ``RuntimeError`` when Xvfb is missing or does
    not start.
    """
    exe = xvfb_path()
    if exe is None:
        raise RuntimeError("Xvfb is not installed")
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [exe, "-displayfd", str(write_fd), "-screen", "0", f"{width}x{height}x24", "-nolisten", "tcp"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    previous = os.environ.get("DISPLAY")
    try:
        ready, _, _ = select.select([read_fd], [], [], timeout_s)
        number = os.read(read_fd, 64).decode().strip() if ready else ""
        if not number:
            raise RuntimeError(f"Xvfb did not start within {timeout_s:g} s")
        display = f":{number}"
        os.environ["DISPLAY"] = display
        yield display
    finally:
        os.close(read_fd)
        if previous is None:
            os.environ.pop("DISPLAY", None)
        else:
            os.environ["DISPLAY"] = previous
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - Xvfb ignores SIGTERM only if wedged
            proc.kill()
            proc.wait()
