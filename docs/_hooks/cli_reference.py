"""mkdocs hook: generate ``cli.md`` from the typer app at build time, so the CLI reference never goes stale.

Every command's usage, help, arguments, options (with defaults) and its ``--help`` examples are read from the
click command typer builds; nothing about the CLI is written by hand.
"""
from __future__ import annotations

from mkdocs.structure.files import File


def _default(p) -> str:
    if p.default is None or p.default is False or getattr(p, "is_flag", False) or p.required:
        return ""
    return f"`{p.default}`"


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def _metavar(p) -> str:
    text = p.name.upper() + ("..." if p.nargs == -1 else "")
    return text if p.required else f"[{text}]"


def command_markdown(prog: str, name: str, cmd) -> str:
    """One command's section. ``cmd`` is a click-style command (typer may vendor its own click: no isinstance)."""
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    opts = [p for p in cmd.params if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    usage = " ".join([prog, name, "[OPTIONS]", *(_metavar(p) for p in args)])
    out = [f"## `{name}`", "", (cmd.help or "").strip(), "", "```text", usage, "```", ""]
    if args:
        out += ["| argument | description |", "|---|---|"]
        out += [f"| `{_metavar(p)}` | {_cell(getattr(p, 'help', None))} |" for p in args] + [""]
    if opts:
        out += ["| option | description | default |", "|---|---|---|"]
        for p in opts:
            flags = ", ".join(f"`{o}`" for o in p.opts + p.secondary_opts)
            out.append(f"| {flags} | {_cell(p.help)} | {_default(p)} |")
        out.append("")
    if cmd.epilog:
        out += [cmd.epilog.strip(), ""]
    return "\n".join(out)


def cli_markdown() -> str:
    """The whole CLI reference page."""
    import typer.main

    from opd_dynamics_cli.app import app

    group = typer.main.get_command(app)
    prog = "opd-dynamics"
    ctx = group.context_class(group, info_name=prog)
    parts = ["# CLI reference", "",
             "Generated from the command-line app at docs build time (`opd-dynamics COMMAND --help` shows the same).",
             "", (group.help or "").strip(), "",
             "Errors in your input print one `error: … (fix: …)` line on stderr and exit with status 2.", ""]
    parts += [command_markdown(prog, name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    return "\n".join(parts)


def on_files(files, config):
    files.append(File.generated(config, "cli.md", content=cli_markdown()))
    return files
