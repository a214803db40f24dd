"""Safe checkpoint reading and loading into our ViT.

Only tensors are ever read: ``.safetensors`` through safetensors, anything else through
``torch.load(..., weights_only=True)`` (no arbitrary unpickling). timm files hold a bare
state dict; DeiT's own ``.pth`` files hold it under ``"model"`` (also accepted:
``"state_dict"``, ``"model_ema"``), and a DataParallel ``module.`` prefix is stripped.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import torch
from torch import Tensor, nn

from tosa_bench.errors import CheckpointError, first_line
from tosa_bench.models.vit import resize_pos_embed

WRAPPER_KEYS = ("model", "state_dict", "model_ema")
METHOD_PREFIX = "reducer."
MAX_LISTED = 5


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a tensor-only state dict from ``.safetensors``/``.pth``/``.pt``/``.bin``.

    The last file read is kept (keyed by path, size and mtime): one sweep point builds
    the same weights up to three times (measured model, its dense twin, accuracy), and a
    DeiT-B file is 350 MB. Callers get a new dict each time; loading copies the tensors
    into the model, so the cached ones are never changed.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a directory, expected a weights file (.pth, .pt, .bin or .safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        st = path.stat()
    except OSError as err:
        raise CheckpointError(f"checkpoint {path}: cannot be read ({err.strerror or err})") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if _LAST_READ and _LAST_READ[0] == key:
        return dict(_LAST_READ[1])
    state = _read(path)
    _LAST_READ[:] = [key, state]
    return dict(state)


_LAST_READ: list = []  # [key, state] of the last file read


def write_safetensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, object] | None = None) -> Path:
    """Write ``tensors`` (moved to the CPU, contiguous) and string ``metadata`` as
    safetensors at ``path`` through a temporary file renamed into place: a killed run
    never leaves a half-written weights file where a reader would take it."""
    import os

    from safetensors.torch import save_file

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={k: str(v) for k, v in (metadata or {}).items()})
    os.replace(tmp, target)
    return target


def _read(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # objects other than tensors: never unpickled
        raise CheckpointError(f"checkpoint {path}: holds Python objects or code, not only tensors; "
                              f"refused, loading it could run code ({_unpickler_reason(err)})") from None
    except Exception as err:  # unreadable, truncated, not a checkpoint at all
        raise CheckpointError(f"checkpoint {path}: cannot be read as tensors only ({first_line(err)})") from None
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path}: no state dict of tensors found (top-level keys: {_listing(obj)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _unpickler_reason(err: BaseException) -> str:
    """The reason torch's weights-only unpickler gives (e.g. 'Trying to load unsupported
    GLOBAL posix.system ...'), without its advice to load the file unsafely."""
    boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
    text = str(err).replace("WeightsUnpickler error:", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(boilerplate)]
    return lines[0] if lines else type(err).__name__


def _listing(obj) -> str:
    keys = list(obj.keys()) if isinstance(obj, dict) else [type(obj).__name__]
    more = f", ... {len(keys) - MAX_LISTED} more" if len(keys) > MAX_LISTED else ""
    return ", ".join(map(str, keys[:MAX_LISTED])) + more


def _some(items: list[str]) -> str:
    more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def check_fit(own: dict[str, Tensor], state: dict[str, Tensor], what: str) -> None:
    """Raise ``CheckpointError`` unless ``state`` has exactly ``own``'s keys and shapes;
    the message names the first mismatched keys and shapes."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    parts = [f"{label}: {_some(items)}" for label, items in (("shape mismatch", wrong), ("missing", missing), ("unexpected", unexpected)) if items]
    if parts:
        raise CheckpointError(f"{what}: " + " | ".join(parts))


def load_backbone(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint") -> None:
    """Load timm-named backbone weights into ``model`` (a ``VisionTransformer``).

    The position embedding is resampled when the checkpoint's grid differs. Every
    backbone tensor must be present with the right shape, and the checkpoint may hold
    nothing else except method weights under ``reducer.`` (loaded by
    :func:`load_method_weights`); otherwise ``CheckpointError`` names the first
    offending keys and shapes.
    """
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(METHOD_PREFIX)}
    state = dict(state)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape and pos.shape[-1] == own["pos_embed"].shape[-1] and _square(pos.shape[1] - 1):
        state["pos_embed"] = resize_pos_embed(pos, _grid_of(model))  # else check_fit reports it
    method = {k: v for k, v in state.items() if k.startswith(METHOD_PREFIX)}
    backbone = {k: v for k, v in state.items() if not k.startswith(METHOD_PREFIX)}
    check_fit(own, backbone, f"{source} does not fit {getattr(model, 'name', 'the model')}")
    model.load_state_dict(backbone, strict=False)
    if method:
        load_method_weights(model, method, source)


def load_method_weights(model: nn.Module, state: dict[str, Tensor], source: str = "selector weights") -> None:
    """Load a method's own weights (ToSA selectors) into ``model.reducer``.

    Keys may carry the ``reducer.`` prefix or not (``selectors.5.conv1.weight``). All of
    the reducer's tensors must be present: a selector file for another placement, model
    width or head count is refused with the mismatched keys named.
    """
    state = {k.removeprefix(METHOD_PREFIX): v for k, v in state.items()}
    own = model.reducer.state_dict()
    if not own:
        raise CheckpointError(f"{source}: the {model.reducer.variant} variant has no weights of its own to load")
    check_fit(own, state, f"{source} does not fit the {model.reducer.variant} selectors of {getattr(model, 'name', 'the model')}")
    model.reducer.load_state_dict(state)


def _square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _grid_of(model: nn.Module) -> tuple[int, int]:
    g = model.cfg.grid
    return (g, g)


def head_classes(state: dict[str, Tensor]) -> int | None:
    """Number of classes of the checkpoint's classifier (``head.weight`` rows), if any."""
    w = state.get("head.weight")
    return int(w.shape[0]) if w is not None and w.ndim == 2 else None
