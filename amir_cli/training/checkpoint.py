"""Run-folder files written atomically: checkpoints (tensors and plain containers only, so they load
with ``torch.load(weights_only=True)``), JSON, the metrics log and the training-curve figure."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from amir_cli.errors import AmirError
from amir_cli.files import atomic_write, json_default

LAST = "last.pt"
BEST = "best.pt"
RUN_JSON = "run.json"
METRICS = "metrics.jsonl"
CURVES = "curves.png"


class RunFolderError(AmirError):
    """The run folder cannot be written (permissions, disk full) or read back."""


class TrainingStopped(AmirError):
    """SIGINT or SIGTERM stopped the run after its last.pt was written; ``signum`` says which."""

    def __init__(self, signum: int, iteration: int, run_dir: Path):
        self.signum = int(signum)
        super().__init__(f"training stopped by {signal.Signals(signum).name} at iteration {iteration}; "
                         f"last.pt holds it: continue with amir train --resume {run_dir}")


class CheckpointSchedule:
    """When last.pt is due: every ``every`` iterations, every ``minutes`` of wall time (0: never by
    time), at the last iteration, and at once when SIGINT or SIGTERM asks the run to stop.

    Used as a context manager around the training loop: the signals only set :attr:`stop` (the step
    under way finishes, is saved, and the run ends); a second signal acts as it did before."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, every: int, minutes: float, total: int, clock=time.monotonic):
        self.every, self.seconds, self.total, self.clock = int(every), float(minutes) * 60.0, int(total), clock
        self.saved_at = clock()
        self.stop: int | None = None  # the signal that asked the run to stop
        self._previous: dict = {}

    def __enter__(self) -> "CheckpointSchedule":
        if threading.current_thread() is threading.main_thread():  # Python's signals reach the main thread only
            self._previous = {s: signal.signal(s, self._ask_stop) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _ask_stop(self, signum, _frame) -> None:
        self.stop = signum
        self._restore()

    def _restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def due(self, iteration: int) -> bool:
        by_time = self.seconds > 0 and self.clock() - self.saved_at >= self.seconds
        return iteration % self.every == 0 or iteration == self.total or by_time or self.stop is not None

    def saved(self) -> None:
        self.saved_at = self.clock()


def atomic_file(path: Path, write) -> None:
    """write(tmp_path) then os.replace: a reader (or a kill -9) sees the old file or the new one."""
    path = Path(path)
    try:
        atomic_write(path, write, fsync=True)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        reason = (exc.strerror or exc) if isinstance(exc, OSError) else "disk full?"
        kept = "the previous one is intact" if path.exists() else "nothing was written under its name"
        raise RunFolderError(f"cannot write {path.name} in run folder {path.parent} ({reason}); {kept}") from None


def save_torch(obj: dict, path: Path) -> None:
    atomic_file(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: Path) -> dict:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunFolderError(f"no checkpoint {path}") from None
    except OSError as exc:
        raise RunFolderError(f"checkpoint {path} is unreadable ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated/corrupt file
        raise RunFolderError(f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def read_json(path: Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise RunFolderError(f"{path.parent}: no such folder") from None
        raise RunFolderError(f"{path.parent}: not an amir train run folder (it has no {path.name})") from None
    except OSError as exc:
        raise RunFolderError(f"cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise RunFolderError(f"{path} is not valid JSON ({exc})") from None


# ------------------------------------------------------------------------------ RNG states
def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) generator states as tensors/lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):  # a different number of GPUs: keep the fresh states
            pass


# ------------------------------------------------------------------------------ metrics log
class MetricsLog:
    """``metrics.jsonl``: one JSON record per line, appended; kept in memory for the curves."""

    def __init__(self, path: Path, records: list | None = None):
        self.path = Path(path)
        self.records = list(records or [])

    @staticmethod
    def read(path: Path) -> list[dict]:
        """The records of ``path`` (none if it does not exist), without a line torn by a kill."""
        records = []
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    @classmethod
    def resume(cls, path: Path, iteration: int) -> "MetricsLog":
        """Keep the records up to the checkpoint's iteration (later ones are replayed) and drop a
        line torn by a kill."""
        records = [rec for rec in cls.read(path) if rec.get("iteration", 0) <= iteration]
        log = cls(path, records)
        atomic_file(log.path, lambda tmp: Path(tmp).write_text("".join(json.dumps(r, default=json_default) + "\n" for r in records)))
        return log

    def append(self, record: dict) -> None:
        self.records.append(record)
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=json_default) + "\n")
        except OSError as exc:
            raise RunFolderError(f"cannot write {self.path} ({exc.strerror or exc})") from None


def plot_curves(records: list, path: Path) -> None:
    """Training loss and validation PSNR per task over iterations (PNG on matplotlib's Agg canvas;
    no pyplot, so the process's backend is left alone)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    if train:
        it = [r["iteration"] for r in train]
        ax1.plot(it, [r["l1"] for r in train], label="L1")
        ax1.plot(it, [r["load_loss"] * 0.001 for r in train], label="0.001 x load loss")
        ax1.set_yscale("log")
        ax1.legend()
    ax1.set_xlabel("iteration")
    ax1.set_title("training loss")
    for task in sorted({t for r in val for t in r.get("psnr", {})}):
        pts = [(r["iteration"], r["psnr"][task]) for r in val if task in r.get("psnr", {})]
        line = ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{task}")[0]
        inp = val[-1].get("input_psnr", {}).get(task)
        if inp is not None:
            ax2.axhline(inp, color=line.get_color(), linestyle=":", linewidth=1)
    if val:
        ax2.legend(title="dotted: input")
    ax2.set_xlabel("iteration")
    ax2.set_ylabel("PSNR (dB)")
    ax2.set_title("validation (docs/protocol.md)")
    fig.tight_layout()

    def w(tmp):
        fig.savefig(tmp, format="png", dpi=90)

    atomic_file(path, w)
