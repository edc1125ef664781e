"""``python -m tqgen eval``: what compressing the KV cache costs a model on a text.

For a causal LM and a text, the first ``tokens`` tokens are run through the model once as it
is (the reference: its own attention, an exact cache, the dtype it was loaded in) and once per
setting (K/V code widths, key centring, layers kept uncompressed, and the exact sink tokens and
recent window where the installed cache has them).  Each setting is scored against the
reference over every position of the text:

* ``kl``: mean KL(reference || setting) of the next-token distributions;
* ``top1``: how often both pick the same most likely next token;
* ``ppl``: perplexity of the text's next tokens (``delta_ppl``: minus the reference's).

Every setting feeds the text through a :class:`~tqgen.hf.CompressedDynamicCache` with
``exact_prefill=False`` (so every position attends over the compressed K/V of the tokens up to
it, its own included, as a decode step does), all at once or ``chunk`` tokens at a time (the key
mean then comes from the first chunk, as from a prompt).  Two ways to read the cache (``path``):

* ``fused`` (what ``tqgen.hf.enable`` runs): the fused backend reads the codes in the kernels;
* ``fake``: the cache's own read-back (decompressed K/V, exact tokens as they are) attended over
  by the model's own attention (SDPA): compress, decompress, SDPA.  It equals ``fused`` up to
  rounding, which the tests check on real weights.

A cache's exact recent window holds the last tokens the cache has seen: in one pass over the
text that is the text's end, for every query.  To measure a window as decoding sees it, feed
the text in small chunks (``chunk=1`` is decoding itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import itertools
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tqgen.tuning.arch import interpreting
from tqgen.validation import check_bits

PATHS = ("fused", "fake")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Cache options a setting may set where the installed CompressedDynamicCache takes them
# (None: the cache's default).
EXACT_OPTIONS = ("sink_tokens", "residual_length")


def cache_options() -> frozenset[str]:
    """The keyword arguments the installed :class:`~tqgen.hf.CompressedDynamicCache` takes."""
    from tqgen.hf import CompressedDynamicCache

    return frozenset(inspect.signature(CompressedDynamicCache.__init__).parameters)


@dataclass(frozen=True)
class Setting:
    """One way to compress the cache (see the module doc); ``sink_tokens`` / ``residual_length``
    None: the cache's default (where it has the option)."""

    k_bits: int = 4
    v_bits: int = 4
    center_keys: bool = True
    skip_layers: tuple[int, ...] = ()
    sink_tokens: int | None = None
    residual_length: int | None = None
    path: str = "fused"

    def __post_init__(self) -> None:
        check_bits("k_bits", self.k_bits)
        check_bits("v_bits", self.v_bits)
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {self.path!r}")
        object.__setattr__(self, "skip_layers", tuple(int(i) for i in self.skip_layers))

    @property
    def label(self) -> str:
        return f"K{self.k_bits}V{self.v_bits}"

    def cache_kwargs(self) -> dict[str, object]:
        """Keyword arguments of the setting's cache (``exact_prefill=False``: see the module doc)."""
        kwargs: dict[str, object] = {"k_bits": self.k_bits, "v_bits": self.v_bits, "center_keys": self.center_keys,
                                     "skip_layers": self.skip_layers or None, "exact_prefill": False}
        options = [name for name in EXACT_OPTIONS if getattr(self, name) is not None]
        missing = [name for name in options if name not in cache_options()]
        if missing:
            raise ValueError(f"this tqgen's CompressedDynamicCache has no {', '.join(missing)} option")
        kwargs.update({name: getattr(self, name) for name in options})
        return kwargs


@dataclass
class Result:
    """A setting's scores against the reference (``sink_tokens`` / ``residual_length``: what the
    cache used, 0 where it has no such option)."""

    setting: Setting
    ppl: float
    delta_ppl: float
    kl: float
    top1: float
    compressed_layers: int
    layers: int
    sink_tokens: int
    residual_length: int
    fp16_ratio: float  # how many times smaller than a 16-bit cache of the same tokens (fp16_ratio())
    seconds: float
    log_probs: torch.Tensor | None = field(default=None, repr=False)  # [N, vocab], with keep_log_probs

    def as_dict(self) -> dict[str, object]:
        row = dataclasses.asdict(self.setting)
        row["skip_layers"] = list(self.setting.skip_layers)
        row.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("setting", "log_probs")})
        return row


@dataclass
class Report:
    """The reference's perplexity and one :class:`Result` per setting, with what was measured."""

    tokens: int
    reference_ppl: float
    results: list[Result] = field(default_factory=list)
    info: dict[str, object] = field(default_factory=dict)
    reference_log_probs: torch.Tensor | None = field(default=None, repr=False)  # with keep_log_probs

    def as_dict(self) -> dict[str, object]:
        return {**self.info, "tokens": self.tokens, "reference_ppl": self.reference_ppl,
                "rows": [r.as_dict() for r in self.results]}

    def table(self) -> str:
        from tabulate import tabulate

        rows = [("exact (reference)", "-", "-", "-", "-", "-", f"{self.reference_ppl:.3f}", "-", "0", "100.0%", "1.00x")]
        for r in self.results:
            s = r.setting
            rows.append((
                s.label,
                "on" if s.center_keys else "off",
                ",".join(map(str, s.skip_layers)) or "-",
                str(r.sink_tokens),
                str(r.residual_length),
                s.path,
                f"{r.ppl:.3f}",
                f"{r.delta_ppl:+.3f}",
                f"{r.kl:.4f}",
                f"{100 * r.top1:.1f}%",
                f"{r.fp16_ratio:.2f}x",
            ))
        headers = ["K/V bits", "centre K", "skip layers", "sinks", "window", "path", "ppl", "delta ppl", "KL",
                   "top-1", "cache vs fp16"]
        return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


# ------------------------------------------------------------------------------------ scoring
def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """fp32 next-token log-probabilities ``[N, vocab]`` of a batch-1 forward's logits."""
    return torch.log_softmax(logits[0].float(), dim=-1)


def perplexity(logp: torch.Tensor, input_ids: torch.Tensor) -> float:
    """exp(mean NLL) of tokens 1..N-1 under the predictions at positions 0..N-2."""
    targets = input_ids[0, 1:].to(logp.device)
    nll = -logp[:-1].gather(-1, targets[:, None]).mean()
    return math.exp(nll.item())


def compare(reference: torch.Tensor, logp: torch.Tensor) -> tuple[float, float]:
    """(mean KL(reference || logp), top-1 agreement) over the positions of two ``[N, vocab]`` log-probs."""
    kl = (reference.exp() * (reference - logp)).sum(-1).mean().item()
    top1 = (reference.argmax(-1) == logp.argmax(-1)).float().mean().item()
    return kl, top1


def fp16_ratio(cache, itemsize: int) -> float:
    """How many times smaller ``cache`` is than a 16-bit cache of the same tokens, the layers it
    keeps uncompressed counted at 16 bits too (whatever the model's dtype, ``itemsize`` bytes)."""
    held = sum(sizes.nbytes if kind == "compressed" else sizes.uncompressed_nbytes * 2 // itemsize
               for kind, sizes in cache.size_report().items())
    return cache.fp16_nbytes() / held


# ------------------------------------------------------------------------------------ running
def _forward(model: torch.nn.Module, input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=input_ids, **kwargs).logits


def run_setting(model: torch.nn.Module, input_ids: torch.Tensor, setting: Setting, chunk: int | None = None):
    """``(logits, cache)`` of ``input_ids`` fed through ``setting``'s cache, ``chunk`` tokens at a time
    (default all), read by the fused backend (``path="fused"``) or by the model's own attention
    over the cache's decompressed K/V (``"fake"``)."""
    from tqgen.hf import CompressedDynamicCache, cache_kwargs, install_fused_tq4_kv, uninstall_fused_tq4_kv

    cache = CompressedDynamicCache(model.config, **setting.cache_kwargs())
    if setting.path == "fused":
        install_fused_tq4_kv(model, cache)
    try:
        n = input_ids.shape[1]
        step = chunk or n
        logits = [_forward(model, input_ids[:, i : i + step], use_cache=True, **cache_kwargs(model, cache))
                  for i in range(0, n, step)]
    finally:
        if setting.path == "fused":
            uninstall_fused_tq4_kv(model)
    return torch.cat(logits, dim=1), cache


def evaluate(model: torch.nn.Module, input_ids: torch.Tensor, settings: Iterable[Setting], *,
             chunk: int | None = None, keep_log_probs: bool = False, progress=None) -> Report:
    """Score each setting against ``model`` with an exact cache on ``input_ids`` (``[1, N]``).

    ``chunk``: feed the cache ``chunk`` tokens at a time (default: the whole text at once).
    ``keep_log_probs``: keep every pass's ``[N, vocab]`` log-probabilities on the report and results.
    ``progress``: called with each :class:`Result` as it is measured.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be [1, N] with N >= 2 tokens, got {tuple(input_ids.shape)}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    settings = list(settings)
    for setting in settings:
        setting.cache_kwargs()  # an option the cache lacks fails before any pass
    parameter = next(model.parameters())
    if parameter.device.type == "cpu" and not interpreting() and settings:
        raise ValueError("on the CPU tqgen's kernels need Triton's interpreter: run with TRITON_INTERPRET=1 "
                         "set (or evaluate on a CUDA device)")
    input_ids = input_ids.to(parameter.device)
    model.eval()
    reference = log_probs(_forward(model, input_ids, use_cache=False))
    report = Report(tokens=input_ids.shape[1], reference_ppl=perplexity(reference, input_ids),
                    reference_log_probs=reference if keep_log_probs else None)
    for setting in settings:
        start = time.monotonic()
        logits, cache = run_setting(model, input_ids, setting, chunk)
        logp = log_probs(logits)
        del logits
        kl, top1 = compare(reference, logp)
        ppl = perplexity(logp, input_ids)
        result = Result(
            setting, ppl, ppl - report.reference_ppl, kl, top1,
            compressed_layers=sum(cache.is_compressed(i) for i in range(len(cache.layers))),
            layers=len(cache.layers),
            sink_tokens=getattr(cache, "sink_tokens", 0),
            residual_length=getattr(cache, "residual_length", 0),
            fp16_ratio=fp16_ratio(cache, parameter.element_size()),
            seconds=round(time.monotonic() - start, 2),
            log_probs=logp if keep_log_probs else None,
        )
        report.results.append(result)
        if progress is not None:
            progress(result)
    return report


def settings_grid(bits: Sequence[tuple[int, int]], *, center_keys: Sequence[bool] = (True,),
                  skip_layers: Sequence[tuple[int, ...]] = ((),), sink_tokens: Sequence[int | None] = (None,),
                  residual_length: Sequence[int | None] = (None,), paths: Sequence[str] = ("fused",)) -> list[Setting]:
    """Every combination, bits outermost and path innermost."""
    grid = itertools.product(bits, skip_layers, sink_tokens, residual_length, center_keys, paths)
    return list(dict.fromkeys(Setting(k, v, ck, skip, sinks, window, path)
                              for (k, v), skip, sinks, window, ck, path in grid))


# ------------------------------------------------------------------------------------ loading
def load_model(name: str, gguf_file: str | None = None, dtype: torch.dtype = torch.float32,
               device: str | None = None):
    """``(model, tokenizer)`` from a Hugging Face id or a local directory (optionally a GGUF file in it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    return model, tokenizer


def text_ids(tokenizer, text: str, tokens: int) -> torch.Tensor:
    """The first ``tokens`` token ids of ``text`` as ``[1, N]`` (the tokenizer's special tokens included)."""
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :tokens]
    if ids.shape[1] < 2:
        raise ValueError(f"the text is {ids.shape[1]} token(s) long: at least 2 are needed")
    return ids


# ------------------------------------------------------------------------------------ command line
def parse_bits(text: str) -> tuple[int, int]:
    """``4`` -> (4, 4); ``4/2`` -> K4 V2."""
    parts = text.split("/")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise ValueError(f"--bits takes WIDTH or K/V widths such as 4 or 4/2, got {text!r}")
    return (values[0], values[-1])


def parse_skip(text: str) -> tuple[int, ...]:
    """``none`` -> (); ``0,-1`` -> (0, -1)."""
    if text.strip().lower() in ("", "none", "-"):
        return ()
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"--skip-layers takes layer indices such as 0,-1 (or none), got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="Hugging Face model id or local directory")
    p.add_argument("text", help="a UTF-8 text file")
    p.add_argument("--gguf-file", default=None, help="a GGUF file inside the model directory (needs the gguf package)")
    p.add_argument("--bits", nargs="+", default=["4", "3", "2"], help="widths: 4 (K=V) or K/V such as 4/2 (default 4 3 2)")
    p.add_argument("--center-keys", choices=("on", "off", "both"), default="on", help="key centring (default on)")
    p.add_argument("--skip-layers", action="append", default=None,
                   help="layers kept uncompressed, e.g. --skip-layers=0,-1 or none; repeat to compare several")
    p.add_argument("--sink-tokens", type=int, nargs="+", default=[None],
                   help="exact first tokens per compressed layer (default: the cache's; where it has the option)")
    p.add_argument("--residual-length", type=int, nargs="+", default=[None],
                   help="exact recent-token window (default: the cache's; 0: off; see --chunk)")
    p.add_argument("--path", choices=(*PATHS, "both"), default="fused",
                   help="fused (the kernels), fake (decompress + the model's SDPA) or both (default fused)")
    p.add_argument("--tokens", type=int, default=512, help="evaluate the text's first N tokens (default 512)")
    p.add_argument("--chunk", type=int, default=None,
                   help="feed the cache N tokens at a time (default: all at once; 1: as decoding does)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="model dtype (default float32)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present; cpu needs TRITON_INTERPRET=1)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")


def run_eval(args: argparse.Namespace) -> int:
    """``python -m tqgen eval MODEL TEXT [options]``: print the table (and write --json)."""
    if args.tokens < 2:
        raise ValueError(f"--tokens must be >= 2, got {args.tokens}")
    settings = settings_grid([parse_bits(b) for b in args.bits],
                             center_keys={"on": (True,), "off": (False,), "both": (False, True)}[args.center_keys],
                             skip_layers=[parse_skip(s) for s in (args.skip_layers or ["none"])],
                             sink_tokens=args.sink_tokens, residual_length=args.residual_length,
                             paths=PATHS if args.path == "both" else (args.path,))
    for setting in settings:
        setting.cache_kwargs()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cpu" and not interpreting():
        raise ValueError("on the CPU tqgen's kernels need Triton's interpreter: run with TRITON_INTERPRET=1")
    text = Path(args.text).read_text(encoding="utf-8")
    start = time.monotonic()
    model, tokenizer = load_model(args.model, args.gguf_file, DTYPES[args.dtype], device)
    input_ids = text_ids(tokenizer, text, args.tokens)
    print(f"{args.model}: {input_ids.shape[1]} tokens of {args.text}, {args.dtype} on {device} "
          f"(loaded in {time.monotonic() - start:.0f} s)", flush=True)

    def progress(r: Result) -> None:
        print(f"  {r.setting.label} {r.setting.path}: KL {r.kl:.4f}, top-1 {100 * r.top1:.1f}% ({r.seconds:.0f} s)",
              flush=True)

    report = evaluate(model, input_ids, settings, chunk=args.chunk, progress=progress)
    report.info.update(environment(args, device))
    print()
    print(report.table())
    if args.json:
        from tqgen.files import atomic_write

        atomic_write(Path(args.json), (json.dumps(report.as_dict(), indent=1) + "\n").encode())
        print(f"\nwrote {args.json}")
    return 0


def environment(args: argparse.Namespace, device: str) -> dict[str, object]:
    import transformers

    return {
        "model": args.model, "gguf_file": args.gguf_file, "text": os.path.basename(args.text),
        "dtype": args.dtype, "device": device, "chunk": args.chunk,
        "protocol": "the text's first tokens through a compressed cache (exact_prefill=False) per setting; "
                    "mean KL(exact || setting) of next-token distributions over every position, top-1 "
                    "agreement, perplexity",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
    }
