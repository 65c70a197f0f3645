"""The server's settings (``VERINFER_`` environment prefix, or ``verinfer serve`` flags)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from server.auth import DEFAULT_TIERS, Tier
from verifier.config import Settings

# Fixed-point input scale used for the EIP-712 input commitment of a model that
# has no circuit package registered (a package's manifest.input.scale wins).
DEFAULT_INPUT_SCALE = 13


class BatchPolicy(BaseModel):
    """Dynamic batching for one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(64, ge=1, description="Most samples run in one forward pass.")
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="Longest a request waits for others to join its batch."
    )
    max_queued_requests: int = Field(
        2048, ge=1, description="Most requests waiting for a batch; past it 503 + Retry-After "
        "(bounded memory under overload)."
    )


def loopback_name(host: str) -> bool:
    """``localhost`` or a loopback address literal (127.0.0.0/8, ::1). Any other name may be
    resolved to any address (``127.example.com``), so it is not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # e.g. "127.example.com": a name, not 127.0.0.0/8
        return False


class ServerSettings(Settings):
    """Everything ``verinfer serve`` can be told; built once at the edge and passed in."""

    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="TCP port to listen on.")
    models: tuple[str, ...] | None = Field(
        None, description="Reference models to serve (default: all of models.REFERENCE_MODELS)."
    )
    onnx_models: dict[str, Path] = Field(
        default_factory=dict,
        description="Extra ONNX-only models to serve (name -> model.onnx path), run by onnxruntime.",
    )
    engine: Literal["torch", "onnx"] = Field(
        "torch", description="Engine for reference models: PyTorch (CUDA when present) or onnxruntime."
    )
    device: str | None = Field(
        None, description="Torch device ('cpu', 'cuda', 'cuda:1'); default: CUDA when available."
    )
    torch_threads: int = Field(1, ge=1, description="Torch intra-op threads on CPU (small models: 1).")
    batching: BatchPolicy = Field(
        default_factory=BatchPolicy, description="Default dynamic batching policy for every model."
    )
    model_batching: dict[str, BatchPolicy] = Field(
        default_factory=dict, description="Per-model batching policy overriding `batching`."
    )
    batch_thread: bool | None = Field(
        None, description="Run batches in a worker thread (default: on CUDA yes, on CPU no)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above it)."
    )
    max_rows_per_request: int = Field(
        4096, ge=1, description="Most rows (samples) one infer request may carry (400 above it)."
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto", description="API keys required (docs/server.md 'Access control'): auto = off on a "
        "loopback bind (embedded local use), on on any other."
    )
    tiers: dict[str, Tier] = Field(
        default_factory=lambda: dict(DEFAULT_TIERS),
        description="API key tiers by name: rate, burst, whether proofs may be asked, most rows.",
    )
    siwe_domain: str | None = Field(
        None, description="Sign-In with Ethereum: the domain (host[:port]) users sign in from, which "
        "messages must name; unset: wallet sign-in is off (never the request's Host header, which a "
        "phishing site sets to its own)."
    )
    siwe_scheme: Literal["https", "http"] = Field(
        "https", description="Sign-In with Ethereum: the scheme users sign in over; a message naming "
        "another (http://<domain>, signed on a network attacker's plain-http copy of the site) is refused."
    )
    siwe_nonce_ttl_s: float = Field(600, gt=0, description="How long a sign-in nonce may be used.")
    siwe_session_ttl_s: float = Field(
        3600, gt=0, description="Longest life of a sign-in session token (shorter when the message expires sooner)."
    )
    siwe_max_sessions: int = Field(
        16, ge=1, description="Most live sign-in sessions per wallet: signing in past it ends the "
        "wallet's oldest session."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Server log lines: text, or one JSON object per line with the request id."
    )
    signing: bool = Field(
        True, description="Sign and store a receipt for every answer (off only for benchmarks)."
    )
    signing_key_path: Path | None = Field(
        None, description="Ed25519 private key (PKCS#8 PEM, mode 0600); default: generated in the data dir."
    )
    signing_key: SecretStr | None = Field(
        None, description="Ed25519 private key as PKCS#8 PEM text (instead of a file)."
    )
    eth_key_path: Path | None = Field(
        None, description="secp256k1 key for EIP-712 (hex, mode 0600); default: generated in the data dir."
    )
    eth_key: SecretStr | None = Field(
        None, description="secp256k1 private key for EIP-712 as hex (instead of a file)."
    )
    chain_id: int = Field(31337, ge=0, description="EIP-712 domain chainId.")
    verifying_contract: str = Field(
        "0x0000000000000000000000000000000000000000",
        pattern=r"^0x[0-9a-fA-F]{40}$",
        description="EIP-712 domain verifyingContract (the oracle contract's address).",
    )
    answer_ttl_s: int = Field(
        3600, ge=1, description="EIP-712 deadline: seconds after the answer that it stays valid."
    )
    receipts_db: Path | None = Field(
        None, description="SQLite file of receipts; default: <home>/receipts.sqlite3."
    )
    log_db: Path | None = Field(
        None, description="SQLite file of the receipt transparency log; default: <home>/log.sqlite3."
    )
    log_fsync: bool = Field(
        False, description="fsync each receipt-log append before its checkpoint is signed (survives "
        "power loss; costs one fsync of latency per group of batches). Off: an append survives a "
        "crash of the server process (WAL, synchronous=NORMAL), as the receipt store does."
    )
    log_origin: str | None = Field(
        None, description="The receipt log's origin (first line of its checkpoints; the note key's "
        "name: no whitespace, no '+'), fixed when the log is created; default: "
        "verinfer.local/log/<random>."
    )

    @field_validator("log_origin")
    @classmethod
    def _origin_is_a_note_name(cls, v: str | None) -> str | None:
        from verifier.tlog import valid_note_name

        if v is not None and not valid_note_name(v):  # else no verifier could read a checkpoint
            raise ValueError("must be a signed-note key name: not empty, no whitespace, no '+' "
                             "(e.g. example.com/verinfer/log)")
        return v

    @field_validator("siwe_domain")
    @classmethod
    def _domain_host_in_lowercase(cls, v: str | None) -> str | None:
        from server.siwe import authority

        return None if v is None else authority(v)  # what /v1/auth/nonce tells wallets to name

    # --- on-chain relayer (server/relayer/relayer.py; docs/server.md "Relayer") ----------
    relay_rpc: str | None = Field(
        None, description="JSON-RPC node whose VerinferOracle requests this server answers "
        "(with relay_oracle); default: no relayer."
    )
    relay_oracle: str | None = Field(
        None, pattern=r"^0x[0-9a-fA-F]{40}$", description="VerinferOracle address the relayer follows."
    )
    relay_key_file: Path | None = Field(
        None, description="Key (hex, mode 0600) that pays for fulfilments; default: "
        "VERINFER_CHAIN_KEY_FILE, else the node's first unlocked account."
    )
    relay_answer: Literal["auto", "proof", "signature"] = Field(
        "auto", description="auto: a proof where the model's policy allows, else a signature."
    )
    relay_poll_interval_s: float = Field(2.0, gt=0, description="Seconds between relayer polls.")
    relay_confirmations: int = Field(
        0, ge=0, description="Blocks a request must be deep before the relayer answers it.")
    relay_fee_margin: float = Field(
        1.0, ge=0, description="Skip a request whose fee is below its gas cost x this (0: "
        "answer unpaid requests too).")
    relay_max_callback_gas: int = Field(
        1_000_000, ge=0, description="Skip requests asking more gas than this for their callback.")
    relay_workers: int = Field(4, ge=1, description="Requests the relayer handles at once.")
    relay_tx_timeout_s: float = Field(
        120.0, gt=0, description="A fulfilment not mined in this time is replaced (same nonce, "
        "higher fee).")
    relay_withdraw_min_wei: int | None = Field(
        None, ge=0, lt=2**96, description="After each poll, withdraw a served model's accrued fees "
        "to its payee once they reach this many wei (the relayer pays the gas; default: never).")

    receipt_retention_s: float | None = Field(
        None, gt=0, description="Forget stored receipts and inputs older than this (seconds; "
        "default: keep). The log keeps what makes kept receipts verifiable."
    )
    receipt_retention_max: int | None = Field(
        None, ge=0, description="Keep at most this many stored receipts (the newest; default: all)."
    )
    receipt_prune_interval_s: float = Field(
        60.0, ge=0, description="How often the receipt writer applies the retention settings."
    )
    receipt_writer_timeout_s: float = Field(
        10.0, gt=0, description="How long an answer waits for the receipt log writer (stopped, "
        "hung): past it a 503, the answer neither signed nor logged; readiness is 503 until the "
        "writer answers again."
    )

    # --- proof jobs (server/proofs/jobs.py) ---------------------------------------------
    store_inputs: bool = Field(
        True, description="Keep each one-sample answer's input with its receipt, so a proof "
        "can be asked for later by receipt id (POST /v1/proofs)."
    )
    workers: int = Field(
        1, ge=1, description="Server processes sharing the port (serve --workers; one receipt log "
        "writer for all). On CPU about cores/2; 1: one process, as before.",
    )
    receipt_workers: int = Field(
        1, ge=1, le=1, description="Processes that sign and store answers' receipts: the receipt log "
        "has one writer, so 1 (for more cores, more server processes: --workers). Kept so that "
        "configurations that name it still load; a larger value is refused rather than ignored.",
    )
    proof_workers: int = Field(
        1, ge=0, description="Prover worker processes (0: jobs queue but nothing proves them)."
    )
    max_queued_proofs: int = Field(
        64, ge=1, description="Most proof jobs queued or running at once; past it 429 + Retry-After."
    )
    relayer_reserved_share: float = Field(
        0.25, ge=0, lt=1, description="Share of max_queued_proofs (rounded down) that only the relayer's "
        "on-chain requests may use: HTTP clients cannot fill the queue and make on-chain requests wait."
    )
    max_sync_proof_waiters: int = Field(
        32, ge=0, description="Most infer requests waiting at once for their proof "
        "(parameters.proof='sync'); past it 429 + Retry-After (use 'async')."
    )
    proof_retry_after_s: int = Field(
        10, ge=1, description="Retry-After (seconds) sent with a 429 when the proof queue is full."
    )
    proof_timeout_s: float = Field(
        600, gt=0, description="Longest one proof attempt may run; then its worker is killed "
        "and the attempt counts as failed."
    )
    proof_attempts: int = Field(
        3, ge=1, description="Attempts per proof job (worker deaths, timeouts, errors) before "
        "it ends as failed with the reason."
    )
    proof_lease_s: float = Field(
        15, gt=0, description="A running job's lease: its worker renews it every third of this; "
        "a job whose lease runs out (worker gone) is queued again."
    )
    proof_memory_mb: int | None = Field(
        None, ge=64, description="Address-space limit of each prover worker (RLIMIT_AS), MiB; "
        "default: none."
    )
    sync_proof_timeout_s: float = Field(
        300, gt=0, description="Longest an infer request with parameters.proof='sync' waits "
        "for its proof; then it answers with the job still running."
    )
    sync_proof_stop_wait_s: float = Field(
        30, ge=0, description="Once the server is told to stop, longest a request still waiting "
        "for its proof (parameters.proof='sync') waits; then it answers with its job as it stands "
        "(the next start proves it), so a stop ends well within systemd's 90 s."
    )
    proof_retention_s: float | None = Field(
        None, gt=0, description="Forget a finished proof job (done or failed) with its input and "
        "bundle once this long (seconds) has passed since it ended or a client last asked for it "
        "(default: keep). Never a queued or running job, nor one with a callback still to send; its "
        "ids then answer 410."
    )
    proof_retention_max: int | None = Field(
        None, ge=0, description="Keep at most this many finished proof jobs (the newest; default: all)."
    )
    proof_prune_interval_s: float = Field(
        60.0, ge=0, description="How often the server applies the proof retention settings."
    )
    prover_log_max_bytes: int = Field(
        10 * 2**20, ge=1024, description="The prover workers' log (<home>/logs/prove-workers.log) "
        "is renamed prove-workers.log.1 (and older ones shifted) before it would grow past this."
    )
    prover_log_backups: int = Field(
        5, ge=1, description="Rotated prover worker logs kept (prove-workers.log.1 ... .N); older ones are removed."
    )
    callback_allow: tuple[str, ...] = Field(
        (), description="URLs a proof job's callback_url may name whatever their host resolves to "
        "(scheme://host[:port][/path-prefix], e.g. http://127.0.0.1:9000/hooks/). Any other "
        "callback must resolve to public addresses only: loopback and private networks are "
        "refused unless listed here."
    )
    callback_attempts: int = Field(5, ge=1, description="Tries to deliver one callback.")
    callback_backoff_s: float = Field(
        0.5, ge=0, description="First delay between callback tries; doubles each time."
    )

    # --- proving on Ray (server/proofs/ray_executor.py; docs/ray.md) ---------------------
    prover_executor: Literal["local", "ray"] = Field(
        "local", description="Where proof jobs run: 'local' worker processes beside the server "
        "(proof_workers of them), or a Ray cluster (ray_address)."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join as a driver ('HOST:PORT' of the head, or 'auto'); "
        "default: start a Ray instance on this machine."
    )
    ray_cpus_per_proof: float = Field(
        1, gt=0, description="CPUs each proof reserves on a Ray node (EZKL's thread count, "
        "rounded up)."
    )
    ray_memory_mb: int | None = Field(
        None, ge=64, description="Memory each proof reserves on a Ray node, MiB; default: from "
        "the circuit package's preflight (proving peak, pk size)."
    )
    ray_max_in_flight: int = Field(
        0, ge=0, description="Most proofs handed to Ray at once; 0: the cluster's CPUs divided "
        "by ray_cpus_per_proof."
    )
    ray_actors: bool = Field(
        True, description="Keep one prover actor per package per node, with the package open "
        "(measured faster than a task per proof that opens it each time: docs/ray.md)."
    )
    ray_packages_dir: Path | None = Field(
        None, description="Where Ray nodes find circuit packages by id (a shared path); "
        "default: the server's packages folder."
    )
    ray_ship_packages: bool = Field(
        False, description="Also send a package's files through Ray's object store to nodes "
        "that do not have it under ray_packages_dir (checked against the manifest's hashes)."
    )

    @model_validator(mode="after")
    def _no_setting_silently_unused(self) -> ServerSettings:
        if bool(self.relay_rpc) != bool(self.relay_oracle):  # else no relayer ran, and nothing said so
            raise ValueError("relay_rpc and relay_oracle go together: the relayer needs both "
                             "(neither: no relayer)")
        if self.ray_address and self.prover_executor != "ray":  # else proofs ran locally, unsaid
            raise ValueError("ray_address is for prover_executor 'ray' (--prover-executor ray); "
                             "with 'local' no Ray cluster is joined")
        return self

    @property
    def auth_enabled(self) -> bool:
        if self.auth != "auto":
            return self.auth == "on"
        return not loopback_name(self.host)

    @property
    def loopback_only(self) -> bool:
        """auth=auto left access control off for a loopback bind: the server then answers only
        requests naming a loopback host, from no web page of another origin
        (:class:`server.http.auth.LoopbackOnly`)."""
        return self.auth == "auto" and not self.auth_enabled

    @property
    def public_proof_queue(self) -> int:
        """How many proof jobs HTTP clients may have queued or running (the rest is the relayer's)."""
        return max(1, self.max_queued_proofs - int(self.max_queued_proofs * self.relayer_reserved_share))

    @property
    def apikeys_path(self) -> Path:
        return self.home / "apikeys.sqlite3"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def receipts_path(self) -> Path:
        return self.receipts_db or self.home / "receipts.sqlite3"

    @property
    def log_path(self) -> Path:
        return self.log_db or self.home / "log.sqlite3"

    def policy_for(self, model: str) -> BatchPolicy:
        return self.model_batching.get(model, self.batching)
