"""`amir train` in a child process with a test seam injected (``python tests/train_seams.py MODE ARG -- CLI ARGS``).

MODE ``kill``: SIGKILL this process right after iteration ARG; MODE ``hash``: each rank writes its
final weights' hash to ARG/rank<R>.txt. Runs under ``torch.distributed.run`` too.
"""

import functools
import hashlib
import os
import signal
import sys
from pathlib import Path

import amir_cli.training as T
from amir_cli.cli import main
from amir_cli.training import Hooks


def _kill_after(target: int, it: int) -> None:
    if it == target:
        os.kill(os.getpid(), signal.SIGKILL)


def state_hash(state: dict) -> str:
    """sha256 over a state_dict's names and tensor bytes (to compare weights across processes)."""
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_hash(folder: str, model, rank: int) -> None:
    Path(folder, f"rank{rank}.txt").write_text(state_hash(model.state_dict()))


if __name__ == "__main__":
    mode, arg, sep, *cli_args = sys.argv[1:]
    assert sep == "--", sys.argv
    if mode == "kill":
        hooks = Hooks(after_step=functools.partial(_kill_after, int(arg)))
    else:
        hooks = Hooks(at_end=functools.partial(_write_hash, arg))
    T.train = functools.partial(T.train, hooks=hooks)
    sys.argv = [sys.argv[0], *cli_args]
    main(cli_args)
