"""CPU numerics that do not depend on the machine's instruction set (``model.cpu_numerics``).

Float results differ in the last bits between x86-64 machines because torch, oneDNN, MKL and
numpy each pick kernels by the CPU's instruction set (AVX2 or AVX-512: other vector widths, other
summation orders, other exp and log approximations), and one flipped token changes the rest of a
dialog. ``pinned_avx2`` caps all four at AVX2, which every x86-64 CPU of the last decade has, so a
machine with AVX-512 runs the same kernels as one without:

* ``ATEN_CPU_CAPABILITY=avx2``: torch's own vectorised kernels (attention, norms, softmax);
* ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN, the embedded model's linear layers (``model.linear_kernel``);
* ``MKL_CBWR=AVX2,STRICT``: MKL's conditional numerical reproducibility on its AVX2 branch, strict
  (bitwise GEMM results for any thread count), with ``MKL_DYNAMIC``/``OMP_DYNAMIC`` off so the
  thread count stays the one asked for (``resources.threads``). Intel's developer guide promises
  the AVX2 branch on Intel CPUs with AVX2; on others MKL runs its AUTO branch in CNR mode;
* ``NPY_DISABLE_CPU_FEATURES``: numpy's own vectorised loops (its AVX-512 ``exp`` differs from its
  AVX2 one in the last bit: on an AVX-512 machine, MMLU's ``p_correct`` and the theory fit departed
  from an AVX2 machine's until this was set). numpy ignores the names a CPU does not have.

Each library reads its variable once, when it loads, so they are set before torch is imported: the
command line sets them first thing from the config it is given (:func:`pin_from_argv`); each model
job is its own process. ``native`` leaves the environment as it is. On a GPU they change only the
CPU's share of the work. :func:`record` is what provenance and the self-chat's checkpoint
fingerprint store: the mode and the values in force, with torch's capability once it is loaded.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

MODES = ("pinned_avx2", "native")
DEFAULT = "pinned_avx2"
PINNED = {
    "pinned_avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_CBWR": "AVX2,STRICT",
        "MKL_DYNAMIC": "FALSE",
        "OMP_DYNAMIC": "FALSE",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # numpy 2's AVX-512 dispatch targets
    },
}
VARIABLES = tuple(PINNED["pinned_avx2"])
MODE_VARIABLE = "PERSONADRIFT_CPU_NUMERICS"  # the mode in force, for provenance and child processes
X86_64 = ("x86_64", "amd64")


def unpinned_environ() -> dict[str, str]:
    """This process's environment without any numerics variable or mode: for a child process that
    should start from each library's own pick (then pinned, or not, by its own config)."""
    return {k: v for k, v in os.environ.items() if k not in VARIABLES and k != MODE_VARIABLE}


def apply(mode: str) -> bool:
    """Put ``mode``'s variables in the environment (on a CPU that is not x86-64, only the mode's
    name); False (nothing changed) once torch or numpy is loaded, where they would no longer take
    effect."""
    if mode not in MODES:
        raise ValueError(f"cpu numerics mode {mode!r} is not one of {MODES}")
    if "torch" in sys.modules or "numpy" in sys.modules:
        return False
    os.environ[MODE_VARIABLE] = mode
    if mode != "native" and platform.machine().lower() in X86_64:
        os.environ.update(PINNED[mode])  # the config's promise wins over an inherited setting
    return True


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def mode_of_argv(argv: list[str]) -> str | None:
    """``model.cpu_numerics`` of the config a command line names (``--params`` JSON or ``@file``,
    ``--config`` YAML, else ./config.yaml), its default when the config has a model section and
    does not say; None when there is no model section or it cannot be read (the command itself
    then reports the problem)."""
    try:
        params, config = _option(argv, "--params"), _option(argv, "--config")
        if params is not None:
            cfg = json.loads(Path(params[1:]).read_text() if params.startswith("@") else params)
        else:
            from personadrift.overlays import read_config

            path = config or ("config.yaml" if Path("config.yaml").exists() else None)
            if path is None:
                return None
            cfg = read_config(path).config  # an overlay's model section may come from its base
    except Exception:  # noqa: BLE001 - the command's own config check says what is wrong
        return None
    model = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model, dict):
        return None
    mode = model.get("cpu_numerics", DEFAULT)
    return mode if mode in MODES else None


def pin_from_argv(argv: list[str]) -> str | None:
    """The command line's first step: the config's CPU numerics, before anything imports torch."""
    mode = mode_of_argv(argv)
    if mode is not None:
        apply(mode)
    return mode


def record() -> dict:
    """The CPU numerics in force in this process: the mode, each variable's value (None: unset),
    and, once torch is loaded, the capability torch runs its kernels at and its thread count."""
    out = {"mode": os.environ.get(MODE_VARIABLE), "machine": platform.machine(),
           **{k: os.environ.get(k) for k in VARIABLES}}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except (AttributeError, RuntimeError):
            out["cpu_capability"] = None
        out["threads"] = torch.get_num_threads()
    return out
