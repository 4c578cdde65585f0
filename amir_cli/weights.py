"""The weights registry: the one place where a name or a file becomes a model.

Shipped entries live in the package's `weights/` folder, user entries (trained or imported) in the
platformdirs user data folder (or `$AMIR_HOME`). Each entry is a `.safetensors` file listed in a
`manifest.json` with its sha256, which is checked before every load.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import WeightsError, one_line
from .files import atomic_write
from .tasks import TASKS

# The repository's weights/ folder, reached through the link amir_cli/shipped_weights -> ../weights;
# in a wheel (or `pip install .`) the files themselves are package data in that place.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped_weights"
MANIFEST = "manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    sha256: str
    info: dict  # the manifest record: config, tasks, recipe, scores, ...
    shipped: bool


def user_dir() -> Path:
    if os.environ.get("AMIR_HOME"):
        return Path(os.environ["AMIR_HOME"]) / "weights"
    from platformdirs import user_data_dir

    return Path(user_data_dir("amir")) / "weights"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        return {"entries": []}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"weights manifest {path} is unreadable: {exc}") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise WeightsError(f"weights manifest {path} is not a valid amir manifest: {problem}")
    return manifest


def _manifest_problem(manifest) -> str | None:
    """What makes a manifest invalid: every entry a record with a valid name, its own file (a bare
    file name, so that it lies in the manifest's folder) and a sha256."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("entries"), list):
        return "no list of entries"
    names = set()
    for i, rec in enumerate(manifest["entries"]):
        if not isinstance(rec, dict):
            return f"entry {i + 1} is not a record"
        name, file = rec.get("name"), rec.get("file")
        if not isinstance(name, str) or not _NAME.match(name) or name in names:
            return f"entry {i + 1} has an invalid or repeated name {name!r}"
        if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file or "\\" in file:
            return f"entry {name!r} names a file outside its folder ({file!r})"
        if not isinstance(rec.get("sha256"), str):
            return f"entry {name!r} has no sha256"
        names.add(name)
    return None


def _entries_of(folder: Path, shipped: bool) -> list[Entry]:
    return [Entry(rec["name"], folder / rec["file"], rec["sha256"], rec, shipped) for rec in _read_manifest(folder)["entries"]]


def entries() -> list[Entry]:
    """All registry entries, shipped first; a user entry may not take a shipped entry's name."""
    shipped = _entries_of(SHIPPED_DIR, True)
    user = _entries_of(user_dir(), False)
    taken = {e.name for e in shipped} & {e.name for e in user}
    if taken:
        raise WeightsError(f"weights manifest {user_dir() / MANIFEST} is not a valid amir manifest: entry "
                           f"{sorted(taken)[0]!r} takes the name of weights shipped with amir (rename it there)")
    return shipped + user


def default_name() -> str | None:
    return _read_manifest(SHIPPED_DIR).get("default")


def find(name: str) -> Entry:
    """The registry entry ``name`` (shipped entries without reading the user's manifest)."""
    for entry in _entries_of(SHIPPED_DIR, True):
        if entry.name == name:
            return entry
    for entry in entries():
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in entries()) or "none"
    raise WeightsError(f"no weights named {name!r} (known: {known}); pass a registry name or a .safetensors/.pth path")


def verify(entry: Entry) -> None:
    """Raise unless the entry's file exists and matches its recorded sha256."""
    if not entry.path.is_file():
        raise WeightsError(f"weights file for {entry.name!r} is missing: {entry.path}")
    actual = sha256_of(entry.path)
    if actual != entry.sha256:
        raise WeightsError(
            f"weights {entry.name!r} failed verification: sha256 {actual[:12]}... does not match the "
            f"manifest's {entry.sha256[:12]}... (file changed or corrupt); refusing to load"
        )


def read_state_dict(path: Path) -> dict:
    """Tensors of a `.safetensors` file or a published `.pth` state_dict (never unpickles objects)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding failure is a bad weights file
        raise WeightsError(f"cannot read weights {path}: {_read_failure(path, exc)}") from None
    # common training-checkpoint wrappers; an averaged copy first: `amir train` validates and
    # exports its EMA ("ema" beside "model" in last.pt), so scoring a run's last.pt scores that
    for key in ("state_dict", "params_ema", "ema", "params", "model"):
        if isinstance(tensors, dict) and isinstance(tensors.get(key), dict):
            tensors = tensors[key]
    if not isinstance(tensors, dict) or not tensors:
        raise WeightsError(f"{path} holds no state_dict")
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    bad = next((k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if bad is not None:
        raise WeightsError(f"{path}: tensor {bad} holds NaN or infinite values; the weights are corrupt")
    return _strip_prefixes(tensors)


def _read_failure(path: Path, exc: Exception) -> str:
    """Why a weights file did not decode, in words (a text file named .pth, a truncated archive, a
    pickle of objects), never cut mid-sentence."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())  # torch colours its advice
    if path.suffix == ".safetensors":
        return f"not a complete safetensors file ({text or type(exc).__name__})"
    with open(path, "rb") as f:
        head = f.read(512)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):
        return "not a PyTorch checkpoint (neither a zip archive nor a pickle; a text file or another format?)"
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        held = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects{held} besides tensors, which amir never unpickles; save the model's state_dict"
    return f"a truncated or corrupt PyTorch checkpoint ({text or type(exc).__name__})"


def _mismatch(model, state: dict, exc: Exception, shown: int = 3) -> str:
    """The first mismatching keys (missing, unexpected, other shapes) in one line."""
    own = model.state_dict()
    parts = []
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
        if keys:
            more = f" (+{len(keys) - shown} more)" if len(keys) > shown else ""
            parts.append(f"{label}: {', '.join(keys[:shown])}{more}")
    return "; ".join(parts) or " ".join(str(exc).split())


def _strip_prefixes(state: dict) -> dict:
    """Drop wrapper prefixes (`model.`, DDP's `module.`) and non-model tensors."""
    for prefix in ("model.", "module."):
        if any(k.startswith(prefix + "patch_embed.") for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def infer_config(state: dict):
    """The AmirConfig whose parameters have exactly these names and shapes: the configuration of a bare
    weights file given by path, which records none (a registry entry's manifest records it). The
    experts mixed per pixel (``top_k``) hold no parameter, so it is the published default."""
    from .network import AmirConfig

    def count(prefix):
        return len({k.split(".")[1] for k in state if k.startswith(prefix + ".")})

    try:
        embed = state["patch_embed.proj.weight"]
        dim = embed.shape[0]
        levels = ["encoder_level1", "encoder_level2", "encoder_level3", "latent"]
        heads = tuple(int(state[f"{lv}.0.attn.temperature"].shape[0]) for lv in levels)
        hidden = state["encoder_level1.0.ffn.project_in.weight"].shape[0] // 2
        atoms = state["dict_generator.dictionary"]
        config = AmirConfig(
            dim=int(dim),
            num_blocks=tuple(count(lv) for lv in levels),
            num_refinement_blocks=count("refinement"),
            heads=heads,
            ffn_expansion_factor=_expansion(dim, hidden),
            bias="encoder_level1.0.attn.qkv.bias" in state,
            layernorm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in state else "BiasFree",
            in_channels=int(embed.shape[1]),
            out_channels=int(state["output.weight"].shape[0]),
            atom_num=int(atoms.shape[0]),
            atom_dim=int(atoms.shape[1]),
            num_experts=int(state["spatial_routing_encoder_level1.moe.w_gate"].shape[1]),
        )
    except KeyError as exc:
        raise WeightsError(f"these weights are not an AMIR network: they hold no tensor {exc}") from None
    except (IndexError, ValueError) as exc:
        raise WeightsError(f"these weights are not an AMIR network: the configuration cannot be inferred ({exc})") from None
    return config


def _expansion(dim: int, hidden: int) -> float:
    """The FFN factor f with int(dim * f) == hidden; the published 2.66 when it fits."""
    for f in (2.66, round(hidden / dim, 2), hidden / dim):
        if int(dim * f) == hidden:
            return f
    return (hidden + 0.5) / dim


def build_from_state(state: dict, device="cpu", entry: Entry | None = None):
    """An eval-mode AMIR with `state` loaded strictly: of the configuration ``entry``'s manifest
    records, checked against the tensors, or inferred from the tensors without an entry."""
    from .network import AMIR

    model = AMIR(infer_config(state) if entry is None else recorded_config(entry))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        fit = "the inferred AMIR configuration" if entry is None else "the configuration their manifest records (file or manifest altered?)"
        named = "weights" if entry is None else f"weights {entry.name!r}"
        raise WeightsError(f"{named} do not fit {fit}: {_mismatch(model, state, exc)}") from None
    return model.to(device).eval()


def recorded_config(entry: Entry):
    """The AmirConfig that a registry entry's manifest records."""
    from .network import AmirConfig

    try:
        return AmirConfig.from_dict(entry.info["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"the manifest of weights {entry.name!r} records no valid configuration ({one_line(exc)})") from None


WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


def is_path(source: str | os.PathLike) -> bool:
    """A path is a path (a folder separator or a weights suffix); anything else is a registry name,
    never a file that happens to sit in the working folder."""
    text = os.fspath(source)
    return isinstance(source, os.PathLike) or "/" in text or os.sep in text or Path(text).suffix.lower() in WEIGHTS_SUFFIXES


def resolve(source: str | os.PathLike | None) -> tuple[Path, Entry | None]:
    """A registry name (verified) or a file path; None means the shipped default."""
    if source is None:
        source = default_name()
        if source is None:
            raise WeightsError("no default weights are installed; pass --weights NAME|PATH")
    if is_path(source):
        return Path(source), None
    entry = find(str(source))
    verify(entry)
    return entry.path, entry


def load_model(source=None, device="cpu"):
    """The eval-mode AMIR for a registry name, a `.safetensors` file or a published `.pth`."""
    path, entry = resolve(source)
    return build_from_state(read_state_dict(path), device, entry)


def check_name(name: str) -> None:
    """A registry name: up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit, and
    not ending as a weights file does (such a name is read as a path)."""
    if not _NAME.match(name):
        raise WeightsError(f"invalid weights name {name!r}: use up to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if Path(name).suffix.lower() in WEIGHTS_SUFFIXES:
        raise WeightsError(f"invalid weights name {name!r}: a name ending in {Path(name).suffix} is read as a file path")


def check_free_name(name: str) -> None:
    """A valid registry name that no weights hold yet."""
    check_name(name)
    taken = next((e for e in entries() if e.name == name), None)
    if taken is not None and taken.shipped:
        raise WeightsError(f"{name!r} names weights shipped with amir; choose another name")
    if taken is not None:
        raise WeightsError(f"weights named {name!r} already exist; choose another name, or remove them first with amir weights remove {name}")
    file = user_dir() / f"{name}.safetensors"
    if file.exists() or file.is_symlink():
        raise WeightsError(f"{file}: exists, and no registry entry holds it; move it away or choose another name")


def save_entry(name: str, state: dict, info: dict, config=None) -> Entry:
    """Write `state` as a user registry entry `name` with the manifest record `info` and the network's
    AmirConfig `config` (inferred from the tensors when not given)."""
    from safetensors.torch import save_file

    config = infer_config(state) if config is None else config
    folder = user_dir()
    file = folder / f"{name}.safetensors"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _manifest_lock(folder):  # another add or import between our read and write would be lost
            check_free_name(name)
            try:
                atomic_write(file, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp)))
                record = {"name": name, "file": file.name, "sha256": sha256_of(file), "config": config.to_dict(), **info}
                manifest = _read_manifest(folder)
                manifest["entries"].append(record)
                _write_manifest(folder, manifest)
            except BaseException:
                file.unlink(missing_ok=True)  # never a file without its record (the manifest is written last)
                raise
    except WeightsError:
        raise
    except Exception as exc:  # a full disk: an OSError, or safetensors' own error
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(exc)
        raise WeightsError(f"cannot write weights to {folder}: {reason}") from None
    return Entry(name, file, record["sha256"], record, False)


@contextlib.contextmanager
def _manifest_lock(folder: Path):
    """Hold the registry's lock file (an advisory lock: one read-modify-write of the manifest at a time)."""
    import fcntl

    with open(folder / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def remove_entry(name: str) -> Entry:
    """Delete user entry ``name``: its manifest record, then its file (a failure in between leaves
    a stray file, never a record without one). Shipped entries are never removed."""
    entry = find(name)
    if entry.shipped:
        raise WeightsError(f"{name!r} names weights shipped with amir, which are never removed; only user entries can be")
    folder = user_dir()
    try:
        with _manifest_lock(folder):
            manifest = _read_manifest(folder)
            manifest["entries"] = [rec for rec in manifest["entries"] if rec["name"] != name]
            _write_manifest(folder, manifest)
            entry.path.unlink(missing_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot remove weights {name!r} from {folder}: {exc.strerror or exc}") from None
    return entry


def _write_manifest(folder: Path, manifest: dict) -> None:
    atomic_write(folder / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2) + "\n"))


def import_official(path: Path, name: str) -> Entry:
    """Register a published `.pth` state_dict under `name` after checking that it loads."""
    state = read_state_dict(path)
    build_from_state(state)
    return save_entry(name, state, {"source": f"imported from {Path(path).name}", "tasks": list(TASKS)})


@dataclass
class LoadedWeights:
    """An eval-mode network with where it came from (for reports)."""

    model: object
    name: str
    path: Path
    sha256: str
    config: dict
    tasks: list = field(default_factory=list)
    registered: bool = True  # False: a file given by path (its sha256 is recorded, not checked)

    def record(self) -> dict:
        """Which weights these are, for reports."""
        return {"name": self.name, "file": str(self.path), "sha256": self.sha256, "registered": self.registered}


def load_weights(source: str | None, device) -> LoadedWeights:
    """The eval-mode network for a registry name or a file (sha256 verified for registry entries)."""
    path, entry = resolve(source)
    model = build_from_state(read_state_dict(path), device, entry)
    tasks = list((entry.info.get("tasks") or []) if entry is not None else [])
    return LoadedWeights(model=model, config=model.config.to_dict(), tasks=tasks, **_identity(path, entry))


def describe(source: str | None) -> dict:
    """:meth:`LoadedWeights.record` of the weights ``source`` names, without loading them."""
    return LoadedWeights(model=None, config={}, **_identity(*resolve(source))).record()


def _identity(path, entry: Entry | None) -> dict:
    if entry is None:  # a file given by path
        return {"name": str(path), "path": Path(path), "sha256": sha256_of(path), "registered": False}
    return {"name": entry.name, "path": Path(path), "sha256": entry.sha256, "registered": True}
