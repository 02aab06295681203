"""Turn the environment and argv into what ``tornado.options`` parses.

Tornado only understands ``--name=value``; people type ``--port 8001`` too.
Environment variables ``RRR_<NAME>`` come first so the command line wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tornado.options import OptionParser


def command_line(parser: OptionParser, argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """argv[0], then env-derived ``--name=value`` flags, then argv with ``--name value`` joined."""
    names = parser.as_dict()
    out = [argv[0]]
    out += [f"--{name}={environ[f'RRR_{name.upper()}']}" for name in names if f"RRR_{name.upper()}" in environ]
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg[2:].replace("-", "_") if arg.startswith("--") and "=" not in arg else ""
        takes_value = name in names and not isinstance(names[name], bool)
        if takes_value and i + 1 < len(args):
            out.append(f"{arg}={args[i + 1]}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out
