"""`alignkit guard serve`: the guard proxy's options (`GuardServeConfig`), loading the guard, and starting the
proxy (`alignkit.safety.proxy`) under uvicorn; `add_serve_command` also registers `guard add-key`
(`alignkit.safety.client_keys`). See docs/guardrails.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from alignkit.errors import AlignkitError
from alignkit.options import add_arguments, config_from_args, option
from alignkit.safety.client_keys import add_key_command, load_client_keys
from alignkit.safety.guardrails import Guardrails, GuardrailsConfig
from alignkit.safety.proxy import MAX_INPUT_CHARS, create_app, public_url
from alignkit.safety.upstream import MAX_REPLY_BYTES, upstream_base
from alignkit.serving import MAX_BODY_BYTES, default_trusted_hosts

UPSTREAM_KEY_ENV = "ALIGNKIT_UPSTREAM_API_KEY"


@dataclass
class GuardServeConfig:
    """`alignkit guard serve`: the proxy's own options plus every GuardrailsConfig key (flat)."""

    upstream: str = ""
    """the OpenAI-compatible server to guard, e.g. http://127.0.0.1:8000 (/v1 is added when missing)"""
    guard: str = "default"
    """guard classifier: a directory holding a saved GuardClassifier, default (the built-in one) or none"""
    host: str = "127.0.0.1"
    """address to listen on (127.0.0.1: this machine only)"""
    port: int = 8080
    """port to listen on"""
    upstream_api_key: str | None = field(default=None, repr=False)
    """key sent upstream; prefer the ALIGNKIT_UPSTREAM_API_KEY environment variable (options show in ps)"""
    client_keys_file: str | None = None
    """file of client key hashes (alignkit guard add-key makes one); when set, other callers get 401"""
    trusted_hosts: str | None = None
    """comma-separated Host names to answer (default: loopback names when bound to loopback; * for any)"""
    timeout: float = 120.0
    """seconds for the whole upstream exchange (connect, send, read the whole reply) before answering 502"""
    max_body_bytes: int = MAX_BODY_BYTES
    """largest request body; larger ones get 413 before they are read"""
    max_reply_bytes: int = MAX_REPLY_BYTES
    """largest upstream reply; a larger one is a 502"""
    max_n: int = 8
    """largest n (and best_of) a request may ask for"""
    max_input_chars: int = MAX_INPUT_CHARS
    """most characters of text one request may hold (the guard reads all of it, window by window); more: 413"""
    ssl_certfile: str | None = None
    """serve HTTPS with this certificate (PEM); give ssl_keyfile with it"""
    ssl_keyfile: str | None = None
    """the certificate's private key (PEM)"""
    allow_media: bool = False
    """forward image, audio, video and file content parts unchecked (the guard cannot read them)"""
    rails: GuardrailsConfig = field(default_factory=GuardrailsConfig)

    def check(self) -> None:
        if not self.upstream.startswith(("http://", "https://")):
            raise AlignkitError(f"config: upstream: give the model server's URL (http://HOST:PORT), "
                                f"got {self.upstream!r}")
        if not 0 < self.port < 65536:
            raise AlignkitError(f"config: port: must be 1-65535, got {self.port}")
        if not self.timeout > 0:
            raise AlignkitError(f"config: timeout: must be positive, got {self.timeout}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise AlignkitError("config: ssl_certfile and ssl_keyfile: give both (HTTPS) or neither")
        for name in ("max_body_bytes", "max_reply_bytes", "max_n", "max_input_chars"):
            if getattr(self, name) < 1:
                raise AlignkitError(f"config: {name}: must be at least 1, got {getattr(self, name)}")
        self.rails.check()


def load_guard(spec: str):
    """The guard named on the command line: none, default, or a directory holding a saved classifier."""
    if spec == "none":
        return None
    try:
        from alignkit.safety.guard import load_guard as load
    except ImportError:
        raise AlignkitError("guard: the guard classifier (alignkit.safety.guard) is not in this install; "
                            "use --guard none for deny-lists and PII redaction only") from None
    return load(spec)


def upstream_api_key(config: GuardServeConfig) -> str | None:
    """The environment variable, else the option (with a warning: options are visible in `ps`)."""
    if config.upstream_api_key:
        print("alignkit guard: warning: --upstream_api_key is visible to other users of this machine (ps); "
              f"set {UPSTREAM_KEY_ENV} instead", file=sys.stderr)
    return os.environ.get(UPSTREAM_KEY_ENV) or config.upstream_api_key


def serve(config: GuardServeConfig) -> None:
    import uvicorn

    config.check()
    keys = load_client_keys(config.client_keys_file) if config.client_keys_file else None
    hosts = ([h.strip() for h in config.trusted_hosts.split(",") if h.strip()] if config.trusted_hosts
             else default_trusted_hosts(config.host))
    rails = Guardrails(None, load_guard(config.guard), config.rails)
    app = create_app(config.upstream, rails, upstream_api_key(config), config.timeout, config.guard, keys, hosts,
                     config.max_body_bytes, config.max_n, config.max_reply_bytes, config.allow_media,
                     max_input_chars=config.max_input_chars)
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        if not config.ssl_certfile:
            print(f"alignkit guard: warning: listening on {config.host} without TLS; give --ssl_certfile and "
                  "--ssl_keyfile or put a TLS-terminating proxy in front (docs/guardrails.md)", file=sys.stderr)
        if not keys:
            print("alignkit guard: warning: no --client_keys_file: anyone who reaches this port spends the "
                  "upstream's key", file=sys.stderr)
    scheme = "https" if config.ssl_certfile else "http"
    print(f"alignkit guard: proxy for {public_url(upstream_base(config.upstream))} on "
          f"{scheme}://{config.host}:{config.port}/v1 (guard: {config.guard}; client keys: "
          f"{len(keys) if keys else 'off'}); Ctrl-C stops", file=sys.stderr)
    tls = {"ssl_certfile": config.ssl_certfile, "ssl_keyfile": config.ssl_keyfile} if config.ssl_certfile else {}
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", **tls)


def serve_command(args) -> int:
    """`alignkit guard serve`: options and --config YAML → GuardServeConfig → serve."""
    serve(config_from_args(GuardServeConfig, args))
    return 0


def add_serve_command(guard_subparsers):
    """Add `serve` and `add-key` to the `alignkit guard` command group (pass the group's subparsers object);
    returns the serve parser."""
    text = "run an OpenAI-compatible proxy that applies guardrails in front of a model server"
    p = guard_subparsers.add_parser("serve", help=text, description=text + ". See docs/guardrails.md.")
    option(p, "--config", help="YAML file of option: value pairs (any option below, e.g. the rails)")
    add_arguments(p, GuardServeConfig)
    p.set_defaults(func=serve_command)
    text = "make a client key for `guard serve --client_keys_file`: prints the key, appends its hash to the file"
    k = guard_subparsers.add_parser("add-key", help=text, description=text + ".")
    option(k, "--client_keys_file", required=True, help="the keys file (created 0600 if missing)")
    option(k, "--name", required=True, help="who the key is for (the rate limit and audit file use it)")
    k.set_defaults(func=add_key_command)
    return p
