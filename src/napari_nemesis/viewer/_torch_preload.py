"""Loading torch in a worker thread without freezing the GUI thread.

``import torch`` maps ``libtorch_cpu`` (hundreds of MB, its static initialisers run as it loads)
while holding Python's GIL: 0.25-0.55 s in which the GUI thread cannot run a line of Python (a
frozen window, measured as the scan's opening stall). Mapped first through libc's ``dlopen`` called
with ctypes, which lets go of the GIL around a foreign call, the library is already loaded when
``import torch`` asks for it; what is left of the import is Python code, which hands the GIL back
every few milliseconds. Linux only (elsewhere, and if anything fails, the import is as before).
"""

from __future__ import annotations

import os
import sys
import threading

_lock = threading.Lock()
_handles: list[int] = []  # kept: the libraries stay loaded for the import that follows
_tried = False

#: torch's libraries in the order their dependencies need, the big one the point of it all.
_LIBRARIES = ("libc10.so", "libtorch_cpu.so")


def preload_torch_libraries() -> bool:
    """Map torch's shared libraries without the GIL (once; nothing if torch is imported already).
    True when they are loaded ahead of the import."""
    global _tried
    if "torch" in sys.modules or not sys.platform.startswith("linux"):
        return False
    with _lock:
        if _tried:
            return bool(_handles)
        _tried = True
        try:
            import ctypes
            import importlib.util

            spec = importlib.util.find_spec("torch")
            if spec is None or spec.origin is None:
                return False
            folder = os.path.join(os.path.dirname(spec.origin), "lib")
            libc = ctypes.CDLL(None)
            dlopen = libc.dlopen
            dlopen.restype, dlopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
            for name in _LIBRARIES:
                path = os.path.join(folder, name)
                if not os.path.exists(path):
                    continue
                handle = dlopen(path.encode(), os.RTLD_NOW | os.RTLD_LOCAL)  # GIL released meanwhile
                if handle:
                    _handles.append(handle)
        except (OSError, AttributeError, ImportError, ValueError):
            return False
        return bool(_handles)
