"""Option groups shared by commands, each option declared once (as simonw/llm shares its option groups).

:func:`assistant_options` gives a command one option per :class:`~dca.assistant.AssistantConfig` setting that
has flags, with the help and default that the field itself declares; ``dca chat``, ``dca eval`` (and any
front end added later) take the assistant's settings from there, never from a copy.
"""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Optional

import typer
from rich.markup import escape

MODEL_HELP = "Model name (see: dca models) or GGUF path [default: the bundled smollm2-135m-instruct]."
STORE_DIR_HELP = "Store directory [default: $DCA_HOME/store]."


def model_option(help: str = MODEL_HELP):
    """``-m/--model``."""
    return typer.Option(None, "-m", "--model", help=escape(help))


def store_dir_option(help: str = STORE_DIR_HELP):
    """``-s/--store-dir``."""
    return typer.Option(None, "--store-dir", "-s", help=escape(help))


def with_default(help: str, cls, name: str) -> str:
    """``help`` followed by ``[default: X]``, X read from the default of field ``name`` of the config dataclass
    ``cls`` (the one place it is declared), escaped for rich's help markup."""
    return escape(f"{help} [default: {_shown_default(cls.__dataclass_fields__[name])}]")


def _shown_default(f) -> str:
    shown = f.metadata.get("shown_default")
    if shown is not None:
        return shown
    if f.default is None:
        return ""
    if isinstance(f.default, float) and f.default.is_integer():
        return str(int(f.default))
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return str(f.default)


def _option_type(hint) -> type:
    """``int`` for ``int``, ``bool`` for ``bool | None``: the type a flag parses to."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def assistant_options(fn):
    """Give a Typer command one option per flagged :class:`~dca.assistant.AssistantConfig` field.

    The command declares a parameter ``settings: dict`` (not an option) and receives the settings given on the
    command line there, by field name (those not given are absent, so a ``-c`` file or the defaults apply).
    The options appear in their own help panel, "Assistant", each with its field's help and default.
    """
    from ..assistant.config import AssistantConfig, cli_settings

    hints = typing.get_type_hints(AssistantConfig)
    flagged = cli_settings()
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.name != "settings"]
    annotations = {k: v for k, v in fn.__annotations__.items() if k != "settings"}
    for f in flagged:
        default = _shown_default(f)
        help_text = f.metadata["help"] + (f" [default: {default}]" if default else "")
        flag_only = _option_type(hints[f.name]) is bool  # --quote/--no-quote takes no value: no metavar shown
        option = typer.Option(None, *f.metadata["flags"], help=escape(help_text), show_default=False,
                              rich_help_panel="Assistant", **({"metavar": ""} if flag_only else {}))
        kind = Optional[_option_type(hints[f.name])]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind))
        annotations[f.name] = kind

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = {f.name: kwargs.pop(f.name, None) for f in flagged}
        return fn(*args, settings={k: v for k, v in given.items() if v is not None}, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=params)
    wrapper.__annotations__ = annotations
    return wrapper


CHAT_TEMPLATE_HELP = ("Chat template for a model whose GGUF has none (a base model), or to replace its own: gemma | "
                      "chatml | a Jinja FILE [default: the GGUF's; without one, plain completion prompting].")


def chat_template_option():
    """``--chat-template NAME|FILE`` (:mod:`dca.llm.templates`)."""
    return typer.Option(None, "--chat-template", help=escape(CHAT_TEMPLATE_HELP), metavar="NAME|FILE")


def json_option():
    """``--json``: print the result as JSON on stdout instead of a table."""
    return typer.Option(False, "--json", help="Print the result as JSON instead of a table.", metavar="")


def config_option(what: str):
    """``-c/--config FILE.yaml`` of a config dataclass (flags override the file, the file the defaults)."""
    return typer.Option(None, "-c", "--config", help=escape(f"YAML file of {what} settings (flags override it)."))

