"""Test-only: a fault planted at an exact step of a run's publish (tests/test_publish_cli.py puts this folder
first on ``PYTHONPATH`` of a child CLI; nothing in the project imports it).

``LPOSS_CRASH="ACTION:N:FUNC:TEXT"``: at the N-th call of ``os.FUNC`` (``replace``, ``rename``, ``unlink`` or
``rmdir``) whose arguments contain TEXT, instead of the call: ``kill`` SIGKILLs the process; ``eio`` raises an
EIO error, and SIGINT is sent to the process at the next call of any of them (the rollback's first step), with a
thread besides the main one to take it, as OpenMP, gloo and loader pin threads do in a real run.
"""

import errno
import os
import signal
import threading
import time

_SPEC = os.environ.get("LPOSS_CRASH")


def _paths(args: tuple, kwargs: dict) -> str:
    """The call's paths as text; a name relative to ``dir_fd`` (``shutil.rmtree``) made whole."""
    if kwargs.get("dir_fd") is not None:
        folder = os.readlink(f"/proc/self/fd/{kwargs['dir_fd']}")
        return " ".join(os.path.join(folder, str(arg)) for arg in args)
    return " ".join(str(arg) for arg in args)


def _wrap(name: str, action: str, nth: int, func: str, text: str, state: dict) -> None:
    real = getattr(os, name)

    def step(*args, **kwargs):
        paths = _paths(args, kwargs)
        if state["interrupt"]:
            state["interrupt"] = False
            os.kill(os.getpid(), signal.SIGINT)
        elif name == func and text in paths and "lposs-probe" not in paths:
            state["seen"] += 1
            if state["seen"] == nth:
                if action == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                state["interrupt"] = True
                raise OSError(errno.EIO, "Input/output error", str(args[-1]))
        return real(*args, **kwargs)

    setattr(os, name, step)
    if real in os.supports_dir_fd:  # shutil.rmtree keeps its dir_fd way of working (it checks this set)
        os.supports_dir_fd.add(step)


if _SPEC:
    _action, _nth, _func, _text = _SPEC.split(":", 3)
    _state = {"seen": 0, "interrupt": False}
    for _name in ("replace", "rename", "unlink", "rmdir"):
        _wrap(_name, _action, int(_nth), _func, _text, _state)
    if _action == "eio":
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
