"""Measurement plumbing shared by the benchmark suites and the tuner.

* timers: ``gpu_timer`` (``triton.testing.do_bench`` median; it flushes L2 before every
  call) and ``wall_timer`` (host clock, for CPU smoke runs where timings mean nothing);
* the device copy bandwidth (the floor every memory-bound number is compared with);
* ``machine_facts``: the GPU, versions and date stamped into every JSON;
* inputs: random K/V compressed with tqgen's own codec;
* torch SDPA at its fastest backend;
* targets: a threshold on one metric of a result row, judged in one place.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import math
import platform
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from tqgen.compressed import CompressedTensor

Timer = Callable[[Callable[[], object]], float]  # fn -> milliseconds per call


# ------------------------------------------------------------------------ timers
def gpu_timer(warmup_ms: int = 25, rep_ms: int = 100) -> Timer:
    """``do_bench`` median in ms (event-timed, L2 flushed before every call); bounded by warmup + rep ms."""
    import triton.testing

    def timer(fn: Callable[[], object]) -> float:
        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))

    return timer


def wall_timer(repeats: int = 3) -> Timer:
    """Median host time of a few calls (synchronising CUDA if present); for CPU smoke runs only."""

    def timer(fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]

    return timer


def host_loop_ms(fn: Callable[[], object], iters: int = 200) -> float:
    """Wall time per call of ``iters`` back-to-back calls between two syncs: unlike ``do_bench``
    (whose L2 flush hides the host's launch work) this includes the Python and launch overhead."""
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return (time.perf_counter() - start) * 1e3 / iters


def default_timer(device: torch.device | str, quick: bool = False) -> Timer:
    """The timer for ``device``: do_bench on a GPU, the host clock elsewhere."""
    if torch.device(device).type == "cuda":
        return gpu_timer(10, 40) if quick else gpu_timer(25, 100)
    return wall_timer(1 if quick else 3)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class Deadline:
    """A wall-clock budget: suites and the tuner stop starting new work once it has passed."""

    seconds: float
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.seconds - self.elapsed()

    def expired(self) -> bool:
        return self.left() <= 0


# ------------------------------------------------------------------- bandwidth
def copy_bandwidth(device: torch.device | str, timer: Timer, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in TB/s, counting bytes read plus bytes written.

    The buffer is much larger than L2 and holds random bytes (never time zeros).
    """
    n = nbytes // 2
    src = torch.randn(n, device=device, dtype=torch.float16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    del src, dst
    return tbps(2 * n * 2, ms)


def tbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e12


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


# ------------------------------------------------------------------- metadata
def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - absent or broken optional package
        return None


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    from tqgen.paths import REPO_ROOT

    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001 - not a checkout, or no git
        return None


def machine_facts(device: torch.device | str) -> dict[str, Any]:
    """What a result was measured on: GPU, SM count, versions, date."""
    from tqgen.tuning.arch import current_arch, interpreting
    from tqgen.version import __version__

    device = torch.device(device)
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "tqgen": __version__,
        "git": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "transformers": _version("transformers"),
        "device": device.type,
        "arch": current_arch(device),
        "interpreter": interpreting(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            sm_count=props.multi_processor_count,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    else:
        env.update(gpu=None, sm_count=None)
    return env


# --------------------------------------------------------------------- inputs
def generator(seed: int, device: torch.device | str) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def randn(shape: tuple[int, ...], device, dtype=torch.float16, seed: int = 0) -> torch.Tensor:
    """Fresh normal values (never zeros: they hide unwritten outputs and time faster)."""
    return torch.randn(shape, device=device, dtype=dtype, generator=generator(seed, device))


def codec(head_dim: int, bits: int):
    """tqgen's ``TurboQuant`` mode for (head_dim, bits) (rotation seed 42)."""
    from tqgen.turboquant import TurboQuant

    return TurboQuant(head_dim, bits)


def compress(x: torch.Tensor, bits: int) -> CompressedTensor:
    """``x`` [B, H, N, D] as a ``CompressedTensor`` written by tqgen's compress kernel."""
    return codec(x.shape[-1], bits).compress(x)


def dequantize(t: torch.Tensor | CompressedTensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """What a compressed operand stands for, as a plain tensor (reference decompression)."""
    if not isinstance(t, CompressedTensor):
        return t
    from tqgen.quant import decompress

    n = t.shape[2]
    return decompress(
        t.packed[:, :, :n], t.norms[:, :, :n], t.bits, t.head_dim, rotation=t.rotation, dtype=dtype
    )


def operand_bytes(t: torch.Tensor | CompressedTensor) -> int:
    """Bytes a kernel must read for one K or V operand."""
    if isinstance(t, CompressedTensor):
        return t.nbytes()
    return t.numel() * t.element_size()


def outputs_of(result: object) -> list[torch.Tensor]:
    """The tensors an op produced (a ``CompressedTensor`` is its codes and norms)."""
    if isinstance(result, CompressedTensor):
        return [result.packed, result.norms]
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, (tuple, list)):
        return [t for item in result for t in outputs_of(item)]
    return []


def rel_l2(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp32 (NaN anywhere gives NaN)."""
    a = actual.float()
    e = expected.float()
    return float((a - e).norm() / e.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------- SDPA
def sdpa_backends(device: torch.device | str) -> list:
    """The SDPA backends worth timing on ``device`` (math only on the CPU: it materialises scores)."""
    from torch.nn.attention import SDPBackend

    if torch.device(device).type == "cuda":
        names = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    else:
        names = ("FLASH_ATTENTION", "MATH")
    return [getattr(SDPBackend, n) for n in names if hasattr(SDPBackend, n)]


@dataclass
class SdpaResult:
    ms: float | None
    backend: str | None
    per_backend: dict[str, Any]
    output: torch.Tensor | None


def time_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    timer: Timer,
    *,
    is_causal: bool = False,
    attn_mask: Any = None,
) -> SdpaResult:
    """torch SDPA at its fastest backend for these inputs (GQA through ``enable_gqa``).

    Every backend is tried inside ``sdpa_kernel``; one that rejects the inputs is recorded
    with its error.  If none takes GQA, K/V are expanded to the query heads first (noted).
    """
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    per_backend: dict[str, Any] = {}
    best: tuple[float, str, torch.Tensor] | None = None
    expand = q.shape[1] // k.shape[1]
    for kv_mode in ("gqa", "expanded"):
        if kv_mode == "expanded":
            if best is not None or expand == 1:
                break
            k = k.repeat_interleave(expand, dim=1)
            v = v.repeat_interleave(expand, dim=1)
        kwargs = {"is_causal": is_causal, "attn_mask": attn_mask}
        if kv_mode == "gqa" and expand > 1:
            kwargs["enable_gqa"] = True
        for backend in sdpa_backends(q.device):
            name = f"{backend.name.lower()}{'' if kv_mode == 'gqa' else '+expanded_kv'}"

            def fn(kwargs=kwargs) -> torch.Tensor:
                return F.scaled_dot_product_attention(q, k, v, **kwargs)

            try:
                with sdpa_kernel([backend]), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "kernel not used because ..."
                    out = fn()
                    sync()
                    ms = timer(fn)
            except Exception as exc:  # noqa: BLE001 - a backend that rejects these inputs
                per_backend[name] = {"error": short_error(exc)}
                continue
            per_backend[name] = {"ms": ms}
            if best is None or ms < best[0]:
                best = (ms, name, out)
    if best is None:
        return SdpaResult(None, None, per_backend, None)
    return SdpaResult(best[0], best[1], per_backend, best[2])


# -------------------------------------------------------------------- targets
@dataclass(frozen=True)
class Target:
    """A pass/fail threshold on one metric of a result row (e.g. ``frac_copy >= 0.70``)."""

    metric: str
    minimum: float
    text: str

    def judge(self, row: dict[str, Any]) -> bool | None:
        if row.get("check_ok") is False:  # a fast wrong answer never passes
            return False
        value = row.get(self.metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None if row.get("error") is None else False
        return bool(value >= self.minimum)


def with_target(row: dict[str, Any], target: Target | None) -> dict[str, Any]:
    """``row`` with its target text and verdict (``None`` when it has no target or no number)."""
    if target is not None:
        row["target"] = target.text
        row["target_metric"] = target.metric
        row["target_min"] = target.minimum
        row["pass"] = target.judge(row)
    return row


# --------------------------------------------------------------------- errors
def short_error(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one line naming its type, cut to ``limit`` characters (for result rows and logs)."""
    text = f"{type(exc).__name__}: {exc}".strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def captured(row: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run a case and record an exception in ``row['error']`` instead of aborting the suite.

    Out-of-memory frees the allocator cache so the next case starts clean.
    """
    try:
        yield row
    except Exception as exc:  # noqa: BLE001 - one failed case must not end the run
        row["error"] = short_error(exc)
        if isinstance(exc, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()


# -------------------------------------------------------------------- context
@dataclass
class BenchContext:
    """What every suite needs: where to run, how to time, the copy-bandwidth floor, the budget."""

    device: torch.device
    timer: Timer
    copy_tbps: float
    quick: bool = False
    deadline: Deadline = field(default_factory=lambda: Deadline(float("inf")))
    compare: Any = None  # an imported comparison package (turboquant_vllm), or None
    log: Callable[[str], None] = print
    cuda_graphs: bool = True  # capture/replay checks (GPU only)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


def tq_attention(q, k, v, *, is_causal: bool = False, out: torch.Tensor | None = None, attention_mask=None):
    """tqgen's public attention entry point (K/V tensors or ``CompressedTensor``)."""
    from tqgen.attention import attention

    return attention(q, k, v, is_causal=is_causal, attention_mask=attention_mask, out=out)


def frac(value: float | None, floor: float | None) -> float | None:
    if value is None or not floor:
        return None
    return value / floor


def ratio(baseline_ms: float | None, ms: float | None) -> float | None:
    """How many times faster than the baseline (> 1 is faster)."""
    if baseline_ms is None or not ms:
        return None
    return baseline_ms / ms
