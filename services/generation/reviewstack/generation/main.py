"""reviewstack-generation: the embedded generation engine, a TGI-protocol HTTP server.

Run book:
    reviewstack-generation --model runs/reviewer-v1/merged              # port 8080, defaults below
    reviewstack-generation --model DIR --max-batch-size 16 --max-input-tokens 11138 \\
        --max-total-tokens 12288 --refusal-penalty 0 --refusal-penalty-max 10 --port 8080

Every setting is a `REVIEWSTACK_*` variable or the same-named flag (`--help`). On a GPU the model runs
in bf16 with CUDA graphs captured at start-up (`--warm-up false` to capture on first use); on a CPU in
float32, eagerly. The `text-generation` client (or anything speaking TGI) talks to it.

It listens on loopback unless told otherwise (the Helm chart sets `REVIEWSTACK_HOST=0.0.0.0` inside the
pod). With `REVIEWSTACK_AUTH_TOKEN` or `REVIEWSTACK_AUTH_TOKEN_FILE` every route but /health and /metrics
requires `Authorization: Bearer <token>`; the Review service sends it from its `backend_auth_token[_file]`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Literal

import torch
import uvicorn
from pydantic import Field, SecretStr

from reviewstack.common import errors
from reviewstack.common.grpc.auth import TokenSource
from reviewstack.common.logging import configure_logging, get_logger
from reviewstack.common.settings import LoggingSettings, entry_point_config
from reviewstack.generation.engine import Engine
from reviewstack.generation.runner import DecoderRunner, KernelChoice
from reviewstack.generation.server import PAYLOAD_LIMIT, ServerLimits, create_app
from reviewstack.penalty.core import PenaltyTable
from reviewstack.penalty.surfaces import token_surfaces

log = get_logger(__name__)


class EngineSettings(LoggingSettings):
    """The engine's settings (env `REVIEWSTACK_*` or flags)."""

    model_config = entry_point_config("reviewstack-generation")

    model: Path = Field(..., description="merged model directory (config, safetensors, tokenizer)")
    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0: every interface)")
    port: int = Field(8080, ge=0, le=65535, description="HTTP port")
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="cuda when a GPU is there")
    max_batch_size: int = Field(16, ge=1, description="requests decoded together (KV-cache slots)")
    max_input_tokens: int = Field(11_138, ge=1, description="longest prompt accepted (422 beyond)")
    max_total_tokens: int = Field(12_288, ge=2, description="prompt + new tokens of one request")
    max_concurrent_requests: int = Field(128, ge=1, description="running + queued; 429 beyond")
    max_prefill_tokens: int = Field(16_384, ge=1, description="prompt tokens prefilled per engine turn")
    refusal_penalty: float = Field(0.0, ge=0, description="λ when a request sends no X-Refusal-Penalty")
    refusal_penalty_max: float = Field(10.0, ge=0, description="largest λ a request may ask for")
    cuda_graphs: bool = Field(True, description="capture decode steps as CUDA graphs (GPU only)")
    kernels: KernelChoice = Field(
        "auto", description="decode kernels: auto (Triton on a GPU when the model allows), triton, torch"
    )
    warm_up: bool = Field(True, description="capture the CUDA graphs before serving")
    auth_token: SecretStr | None = Field(
        None, description="bearer token every route but /health and /metrics requires; unset = no auth"
    )
    auth_token_file: Path | None = Field(
        None, description="file holding the bearer token (a mounted Secret); re-read when it changes"
    )
    payload_limit: int = Field(
        PAYLOAD_LIMIT,
        ge=1024,
        description="largest request body in bytes (TGI's --payload-limit); 413 beyond",
    )


def token_source(settings: EngineSettings) -> TokenSource:
    """The engine's token, as the gRPC services read theirs (a file is read now: a missing Secret stops
    the process before it listens)."""
    return TokenSource.of(settings.auth_token, settings.auth_token_file)


def build_engine(settings: EngineSettings) -> tuple[Engine, ServerLimits]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if settings.max_input_tokens >= settings.max_total_tokens:
        raise SystemExit(
            f"max-input-tokens ({settings.max_input_tokens}) must be below max-total-tokens "
            f"({settings.max_total_tokens}): nothing would be left to generate"
        )
    if not (settings.model / "config.json").is_file():
        raise SystemExit(f"{settings.model} is not a model directory (no config.json): pass --model DIR")
    cuda = torch.cuda.is_available()
    if settings.device == "cuda" and not cuda:
        raise SystemExit("--device cuda, but no GPU is visible to this process")
    device = torch.device("cuda" if settings.device != "cpu" and cuda else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    model = AutoModelForCausalLM.from_pretrained(settings.model, dtype=dtype).to(device)
    try:
        runner = DecoderRunner(
            model,
            settings.max_batch_size,
            settings.max_total_tokens,
            cuda_graphs=settings.cuda_graphs,
            kernels=settings.kernels,
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    table = PenaltyTable(token_surfaces(tokenizer))
    engine = Engine(
        runner,
        tokenizer,
        max_concurrent_requests=settings.max_concurrent_requests,
        max_prefill_tokens=settings.max_prefill_tokens,
        penalty_table=table,
    )
    if settings.warm_up:
        captured = runner.warm_up()
        if captured:
            log.info("cuda graphs captured", graphs=captured)
    limits = ServerLimits(
        model_id=str(settings.model),
        model_dtype=str(dtype).removeprefix("torch."),
        model_device_type=device.type,
        max_input_tokens=settings.max_input_tokens,
        max_total_tokens=settings.max_total_tokens,
        max_concurrent_requests=settings.max_concurrent_requests,
        max_batch_size=settings.max_batch_size,
        refusal_penalty=settings.refusal_penalty,
        refusal_penalty_max=settings.refusal_penalty_max,
        payload_limit=settings.payload_limit,
    )
    return engine, limits


def main() -> None:
    settings = EngineSettings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        tokens = token_source(settings)
    except errors.ReviewStackError as exc:
        log.error("cannot start the generation engine", error=str(exc))
        raise SystemExit(2) from None
    if not tokens.enabled and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "auth is off on a non-loopback address: anything that reaches this port may generate; "
            "set REVIEWSTACK_AUTH_TOKEN or REVIEWSTACK_AUTH_TOKEN_FILE",
            host=settings.host,
        )
    engine, limits = build_engine(settings)
    engine.start()
    log.info(
        "generation engine serving",
        model=limits.model_id,
        device=limits.model_device_type,
        triton_kernels=engine.runner.fused,
        host=settings.host,
        port=settings.port,
        auth=tokens.enabled,
        kv_cache_gib=round(
            engine.runner.kv_bytes_per_token * settings.max_batch_size * settings.max_total_tokens / 2**30, 2
        ),
    )
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal for the handler it found: make that
    # one a no-op so that a drained server stops the engine and exits 0, like the gRPC services
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        app = create_app(engine, limits, tokens=tokens)
        uvicorn.run(app, host=settings.host, port=settings.port, log_config=None)
    finally:
        engine.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
