"""Throughput options for the forward passes the robustness check spends its time on.

CERTIFY at Cohen et al.'s ``n = 100,000`` draws per image and PGD's 20 forward+backward
passes per ε are nearly all base-model work, so how each forward pass runs decides the
wall time. Three options change *how* the base model runs, never what the check computes
with its outputs; each is off by default, each is recorded in the result's params:

* ``channels_last``: the input batch in NHWC memory order. Conv layers then pick their
  channels-last kernels (oneDNN on CPU, cuDNN on GPU) and pass the layout on; the weights
  are left as they are, so the caller's model is not changed.
* ``compile``: ``torch.compile`` (inductor) over the normalization and the network,
  dynamic in the batch size so a short last batch does not recompile. Inductor needs a C++
  compiler on CPU and Triton on CUDA; without one the option is refused in one line, and a
  model it cannot compile is refused when it is wrapped, not after an hour of attacks.
* ``bf16``: bfloat16 autocast, logits returned as float32. Allowed on CUDA devices with
  bf16 and on CPUs with native bf16 arithmetic (AVX512-BF16 or AMX); elsewhere bf16 is
  emulated and slower than float32, so it is refused.

bf16 changes the base classifier ``f`` (its logits are rounded): a certificate then holds
for the smoothing of the bf16 ``f``, which agrees with the float32 one up to the votes of
noise draws that lie within rounding distance of a decision boundary; the tests hold the
certified radii to the Clopper-Pearson interval of the float32 run.

``autotune_batch_size`` picks the number of noisy images per forward pass from the memory
there is: on CUDA the largest power of two whose measured peak fits a fraction of the
free memory, on CPU from the measured per-sample bytes of a forward pass against the
available RAM (cgroup limit included), capped.

>>> import torch
>>> from raigate import wrap
>>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(8, 2))
>>> model = wrap(net, class_names=["a", "b"], input_shape=(1, 4, 4))
>>> fast = accelerate(model, Throughput(channels_last=True))
>>> bool(torch.allclose(fast.logits(torch.ones(3, 1, 4, 4)), model.logits(torch.ones(3, 1, 4, 4))))
True
>>> choice = autotune_batch_size(model, device="cpu", cap=64)
>>> choice.size in (8, 16, 32, 64)
True
"""

from __future__ import annotations

import itertools
import math
import shutil
import time
import types
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from raigate.errors import ConfigError
from raigate.models.base import Model, require_white_box

__all__ = [
    "AUTOTUNE_CAP",
    "AUTOTUNE_FRACTION",
    "BatchChoice",
    "FastModel",
    "Throughput",
    "accelerate",
    "autotune_batch_size",
    "available_memory",
    "cpu_has_native_bf16",
    "resolve_batch_size",
]

AUTOTUNE_CAP = 4096
"""Largest autotuned batch: at thousands of images per forward pass the per-call overhead is
a small share of the pass even on a GPU, and a bigger batch only holds memory (on a CPU the
fastest size is far smaller: :func:`autotune_batch_size`)."""

AUTOTUNE_FRACTION = 0.25
"""Share of the free memory one noise batch may take: the model, the attack batches, the
data loader and other processes need the rest."""


@dataclass(frozen=True)
class Throughput:
    """How the base model's forward passes run (see the module docstring); all off: the
    plain float32 eager model."""

    channels_last: bool = False
    compile: bool = False
    bf16: bool = False

    @classmethod
    def of(cls, params: Any) -> Throughput:
        """The options of a params object with fields of the same names (RobustnessParams)."""
        names = ("channels_last", "compile", "bf16")
        return cls(**{k: bool(getattr(params, k, False)) for k in names})

    @property
    def active(self) -> bool:
        return self.channels_last or self.compile or self.bf16

    @property
    def flags(self) -> str:
        """The options as the CLI flags that set them, for one-line messages."""
        on = [k for k, v in asdict(self).items() if v]
        return " ".join("--" + k.replace("_", "-") for k in on) or "(none)"

    def check(self, device: str | torch.device) -> None:
        """ConfigError (one line) for an option this machine cannot run as asked."""
        dev = torch.device(device)
        if self.bf16:
            _check_bf16(dev)
        if self.compile:
            _check_compiler(dev)

    def as_dict(self) -> dict[str, bool]:
        return asdict(self)


def _check_bf16(dev: torch.device) -> None:
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--bf16 on {dev}: no CUDA device is available")
        if not torch.cuda.is_bf16_supported():
            raise ConfigError(f"--bf16: {torch.cuda.get_device_name(dev)} has no bf16 support")
        return
    if dev.type == "cpu":
        if not cpu_has_native_bf16():
            raise ConfigError(
                "--bf16 needs a CUDA device or a CPU with native bf16 (AVX512-BF16 or AMX); "
                "on this CPU bf16 is emulated and slower than float32"
            )
        return
    raise ConfigError(f"--bf16 supports cuda and cpu devices, not {dev.type}")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX tiles: the x86 CPUs where oneDNN runs bf16 natively (measured
    here, AVX512-BF16: bf16 autocast 1.5x faster on small_cnn, 2.9x on ResNet-20; without
    them it emulates bf16 in float32 and is slower)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        if probe is not None and bool(probe()):
            return True
    return False


def _cxx_compiler() -> str | None:
    """The C++ compiler inductor will use on CPU, or None when there is none."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return str(get_cpp_compiler())
    except Exception:  # private API, or InvalidCxxCompiler when none is found
        return next((c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except Exception:
        return False


def _check_compiler(dev: torch.device) -> None:
    if dev.type == "cpu" and _cxx_compiler() is None:
        raise ConfigError(
            "--compile needs a C++ compiler for torch.compile's CPU backend (inductor) and "
            "none was found: install g++ (or set CXX), or drop --compile"
        )
    if dev.type == "cuda" and not _has_triton():
        raise ConfigError(
            "--compile needs Triton for torch.compile on CUDA (inductor) and it is not "
            "installed: pip install triton, or drop --compile"
        )


def _fast_forward(fast: _Fast, x: Tensor) -> Tensor:
    """``fast.model(x)`` with the input in channels-last order and under bf16 autocast, as
    asked: what ``torch.compile`` sees, so normalization and network fuse together."""
    if fast.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not fast.bf16:
        return fast.model(x)  # type: ignore[no-any-return]
    with torch.autocast(device_type=fast.device_type, dtype=torch.bfloat16):
        out = fast.model(x)
    return out.float()  # callers (argmax, softmax, losses) keep float32 semantics


_COPIES = itertools.count()


def _own_code(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with a code object of its own. Dynamo keeps compiled graphs, and its budget of
    8 recompiles, per code object; each wrapper needs about three graphs (inference, with
    gradients, without), so wrappers sharing one code object would exhaust the budget from
    the third on and silently run eager (seen in bench/throughput.py)."""
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{next(_COPIES)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


class _Fast(nn.Module):
    """Holds the wrapped model and the options :func:`_fast_forward` reads."""

    def __init__(self, model: Model, options: Throughput, device_type: str) -> None:
        super().__init__()
        self.model = model
        self.channels_last = options.channels_last
        self.bf16 = options.bf16
        self.device_type = device_type
        self._run: Callable[[_Fast, Tensor], Tensor] = _fast_forward
        if options.compile:  # dynamic batch dimension: a short last batch does not recompile
            self._run = torch.compile(_own_code(_fast_forward), dynamic=True)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(self, x)


class FastModel(Model):
    """``model`` with its forward passes run under ``options``; the same classes, input
    shape, spec, digest and capabilities (STYLE: a wrapper answers with the interface it
    wrapped), so a result names the audited model, not the wrapper."""

    def __init__(self, model: Model, options: Throughput) -> None:
        dev = model.device
        super().__init__(
            _Fast(model, options, dev.type),
            class_names=model.class_names,
            input_shape=model.input_shape,
            spec=model.spec,
            digest=model.digest,
            files=model.files,
            capabilities=model.capabilities,
            source=model.source,
            random_init=model.random_init,
            details=model.details,
        )
        self.warnings = list(model.warnings)
        self.options = options
        self._base = [model]  # a list: not a second registered submodule

    @property
    def base(self) -> Model:
        """The wrapped model, run plainly."""
        return self._base[0]

    def forward(self, x: Tensor) -> Tensor:
        # the wrapped model normalizes; this adapter's own (identity) transform is skipped
        return self.net(x)  # type: ignore[no-any-return]

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "throughput": self.options.as_dict()}


def accelerate(model: Model, options: Throughput, *, device: str | None = None) -> Model:
    """``model`` run under ``options`` (the same object when none is on).

    ConfigError (one line) when an option cannot run here (:meth:`Throughput.check`), on a
    black-box model (its forward pass is not a torch network these options act on), or
    when ``torch.compile`` fails on the model: compilation is tried at once, with and
    without gradients when the model has them, so a failure surfaces before any work."""
    if not options.active:
        return model
    if isinstance(model, FastModel):
        if model.options == options:
            return model
        model = model.base
    require_white_box(model, options.flags)
    dev = torch.device(device) if device is not None else model.device
    options.check(dev)
    fast = FastModel(model, options)
    if options.compile:
        _probe_compile(fast, dev)
    return fast


def _probe_compile(fast: FastModel, dev: torch.device) -> None:
    try:
        with torch.inference_mode():  # an inference tensor, as CERTIFY's noise batches are
            fast.logits(torch.rand(2, *fast.input_shape, device=dev))
        if fast.capabilities.gradients:
            x = torch.rand(2, *fast.input_shape, device=dev, requires_grad=True)
            torch.autograd.grad(fast.logits(x).sum(), x)
    except Exception as exc:  # dynamo/inductor raise many kinds; all mean "cannot compile"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(
            f"--compile: torch.compile failed on {fast.display_name}: {first}; drop --compile"
        ) from None


# -- batch-size autotuning -------------------------------------------------------------------


@dataclass(frozen=True)
class BatchChoice:
    """The noise batch size and how it was found, for the result's params."""

    size: int
    how: str
    per_sample_bytes: int | None = None
    budget_bytes: int | None = None
    available_bytes: int | None = None
    memory_source: str | None = None
    measured: list[dict[str, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def available_memory() -> tuple[int | None, str]:
    """Bytes of RAM this process may still take, and where that number came from: the
    smaller of ``MemAvailable`` (/proc/meminfo) and the cgroup's limit minus its usage (a
    container sees the host's MemAvailable, not its own limit). ``(None, why)`` when
    neither can be read (not Linux)."""
    found: list[tuple[int, str]] = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "/proc/meminfo MemAvailable"))
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit_text = Path(limit_file).read_text().strip()
            if limit_text == "max":
                continue
            left = int(limit_text) - int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if 0 < left < (1 << 60):  # cgroup v1 writes a huge number for "no limit"
            found.append((left, f"cgroup limit - usage ({limit_file})"))
    if not found:
        return None, "unknown (no /proc/meminfo or cgroup memory files)"
    return min(found)


class _AllocatedBytes(TorchDispatchMode):
    """Bytes of every new tensor the ops of a forward pass return (views and in-place
    results, which allocate nothing, left out): what the pass would hold if it freed
    nothing, an upper bound on its peak activation memory."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        # by storage, not by _is_view(): inference mode does not mark views as views
        seen = {_storage(t) for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, Tensor) and _storage(t) not in seen:
                seen.add(_storage(t))
                self.total += t.untyped_storage().nbytes()
        return out


def _storage(t: Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def _forward_bytes(model: Model, batch: int, device: torch.device) -> int:
    x = torch.rand(batch, *model.input_shape, device=device)
    mode = _AllocatedBytes()
    with torch.inference_mode(), mode:
        model.logits(x)
    return mode.total


def _pow2_at_most(value: float, cap: int) -> int:
    v = max(1.0, min(float(cap), value))
    return 1 << math.floor(math.log2(v))


def autotune_batch_size(
    model: Model,
    *,
    device: str | torch.device = "cpu",
    fraction: float = AUTOTUNE_FRACTION,
    cap: int = AUTOTUNE_CAP,
) -> BatchChoice:
    """Noisy images per forward pass for ``model`` on ``device``, a power of two at most
    ``cap`` whose memory fits in ``fraction`` of what is free. Run it on the model as it
    will run (bf16 halves the activations).

    CUDA: the largest such size, found by forward passes at 1, 2, 4, ... images, each peak
    measured (``max_memory_allocated``) until one would exceed the budget or runs out of
    memory; a GPU is fed best by the biggest batch it holds.
    CPU: memory bounds the size (per-sample bytes of a forward pass measured as the slope
    between two probe batches, :class:`_AllocatedBytes`, an upper bound on what the pass
    holds at once, plus the noise batch and the image copies CERTIFY adds it to, against
    :func:`available_memory`), and within the bound the size with the highest *measured*
    throughput wins: on a CPU the largest batch is not the fastest, because activations
    that stop fitting in cache cost more than the per-call overhead saves (measured here,
    one thread: small_cnn 6,500 images/s at 32-64 per pass, 3,300 at 1,024; ResNet-20
    1,780 at 32, 450 at 1,024). The timings make the choice machine- and load-dependent;
    the size is recorded, and passing it back reproduces a run."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"autotune fraction must lie in (0, 1], got {fraction}")
    if cap < 1:
        raise ConfigError(f"autotune cap must be >= 1, got {cap}")
    eager = model  # memory is measured on ops as they dispatch, so not through a compiled graph
    if isinstance(model, FastModel) and model.options.compile:
        eager = accelerate(model.base, replace(model.options, compile=False))
    dev = torch.device(device)
    input_bytes = 4 * math.prod(model.input_shape)
    if dev.type == "cuda":
        return _autotune_cuda(eager, dev, fraction, cap, input_bytes)
    small, large = 4, 12
    grown = _forward_bytes(eager, large, dev) - _forward_bytes(eager, small, dev)
    per_sample = max(1, grown // (large - small)) + 2 * input_bytes
    available, source = available_memory()
    budget = None if available is None else int(fraction * available)
    bound = cap if budget is None else _pow2_at_most(budget / per_sample, cap)
    rates = _rates(model, dev, bound)
    size = max(rates, key=lambda b: rates[b])
    memory = (
        f"{fraction:g} of {available / 2**30:.1f} GiB available at {per_sample:,} B/sample"
        if available is not None
        else "available memory unknown"
    )
    return BatchChoice(
        size,
        f"fastest measured power of two <= {bound} ({memory}, cap {cap})",
        per_sample, budget, available, source,
        [{"batch": b, "images_per_s": round(r, 1)} for b, r in rates.items()],
    )  # fmt: skip


def _rates(model: Model, dev: torch.device, bound: int) -> dict[int, float]:
    """Images/s of forward passes at 8, 16, ... ``bound`` images (each timed for at least
    ``_TIME_S`` after a warm-up pass), stopping once two sizes in a row fall below
    ``_GIVE_UP`` of the best so far: past the cache sizes throughput only falls."""
    rates: dict[int, float] = {}
    worse, b = 0, min(8, bound)
    with torch.inference_mode():  # inference tensors, as CERTIFY's noise batches are
        while b <= bound and worse < 2:
            x = torch.rand(b, *model.input_shape, device=dev)
            model.logits(x)
            calls, start = 0, time.perf_counter()
            while calls < 2 or time.perf_counter() - start < _TIME_S:
                model.logits(x)
                calls += 1
            rates[b] = b * calls / (time.perf_counter() - start)
            worse = worse + 1 if rates[b] < _GIVE_UP * max(rates.values()) else 0
            b *= 2
    return rates


_TIME_S = 0.05
_GIVE_UP = 0.7


def _autotune_cuda(
    model: Model, dev: torch.device, fraction: float, cap: int, input_bytes: int
) -> BatchChoice:
    free, _total = torch.cuda.mem_get_info(dev)
    budget = int(fraction * free)
    size, per_sample, b = 1, None, 1
    while b <= cap:
        try:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
            with torch.inference_mode():
                model.logits(torch.rand(b, *model.input_shape, device=dev))
            torch.cuda.synchronize(dev)
            used = torch.cuda.max_memory_allocated(dev) - before + 2 * b * input_bytes
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        if used > budget:
            break
        size, per_sample, b = b, used // b, b * 2
    return BatchChoice(
        size,
        f"largest power of two <= {cap} whose measured forward peak fits {fraction:g} of "
        f"{free / 2**30:.1f} GiB free on {dev}",
        per_sample, budget, int(free), "torch.cuda.mem_get_info",
    )  # fmt: skip


def resolve_batch_size(
    value: int | Literal["auto"], model: Model, *, device: str | torch.device = "cpu"
) -> BatchChoice:
    """``value`` as a :class:`BatchChoice`: autotuned for ``"auto"``, else as given."""
    if value == "auto":
        return _agree(autotune_batch_size(model, device=device))
    return BatchChoice(int(value), "given")


def _agree(choice: BatchChoice) -> BatchChoice:
    """Under torchrun every rank must cut the noise the same way (the fixed batches and
    each image's noise stream depend on it): the smallest size any rank chose, which fits
    every rank's memory."""
    from dataclasses import replace

    from raigate.parallel import current

    world = current()
    if world.size == 1:
        return choice
    sizes = [int(t) for t in world.all_gather_text(str(choice.size))]
    if min(sizes) == choice.size:
        return choice
    return replace(
        choice, size=min(sizes), how=f"{choice.how}; smallest over {world.size} processes"
    )
