"""``dca serve``: the assistant over an OpenAI-compatible local HTTP API with a chat page (:mod:`dca.server`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.text import Text

from .common import check_store_flags, err, handles_errors, load_assistant, print_error
from .options import assistant_options, chat_template_option, config_option, model_option


@handles_errors
@assistant_options
def serve(
    model: Optional[str] = model_option(),
    store_dir: Optional[Path] = typer.Option(None, "--store-dir", "-s", help="RAG store to answer from \\[default: $DCA_HOME/store when it holds one]."),
    no_store: bool = typer.Option(False, "--no-store", help="Answer from the model alone, even when the default store exists.", metavar=""),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; one beyond loopback needs --api-key-env."),
    port: int = typer.Option(8000, "--port", help="Port to listen on.", min=1, max=65535),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of an environment variable holding the API key that clients send as 'Authorization: Bearer KEY'.", metavar="NAME"),
    queue_size: int = typer.Option(16, "--queue-size", help="Requests that may wait while one is answered; more get 503 with Retry-After.", min=1),
    max_request_bytes: int = typer.Option(1 << 20, "--max-request-bytes", help="Larger request bodies get 413.", min=1024),
    chat_template: Optional[str] = chat_template_option(),
    model_id: Optional[str] = typer.Option(None, "--model-id", help="The model's id in /v1/models and requests \\[default: the model's name]."),
    config_path: Optional[Path] = config_option("AssistantConfig"),
    settings: dict = None,
):
    """Serve the assistant over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/embeddings, /v1/models) with a chat page at /.

    One model answers requests in turn; each request may override the assistant's settings (its "dca" object, and
    max_tokens, temperature, seed, stop, reasoning_effort). Binds 127.0.0.1 unless told otherwise.
    """
    from ..assistant import AssistantConfig
    from ..config import load_config
    from ..server import create_app, is_loopback
    from ..server import serve as run

    config = load_config(AssistantConfig, config_path, **settings)
    check_store_flags(store_dir, no_store)
    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            print_error(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set or empty")
            raise typer.Exit(2)
    if not is_loopback(host) and not api_key:
        print_error(f"--host {host} listens beyond this machine: give an API key with --api-key-env NAME (an "
                    "environment variable holding it), or bind 127.0.0.1")
        raise typer.Exit(2)
    bot = load_assistant(model, store_dir, no_store, config, chat_template)
    name = model_id or (Path(bot.llm.name).stem if bot.llm.name.endswith(".gguf") else bot.llm.name)
    app = create_app(bot, model_id=name, api_key=api_key, queue_size=queue_size, max_request_bytes=max_request_bytes)
    shown = f"[{host}]" if ":" in host else host

    def started():
        err.print(Text.assemble(("dca serve", "bold"), f": {name} on http://{shown}:{port} (chat page at /, "
                                f"OpenAI API at /v1{', key required' if api_key else ''}); Ctrl-C stops"))

    run(app, host=host, port=port, api_key=api_key, on_start=started)
