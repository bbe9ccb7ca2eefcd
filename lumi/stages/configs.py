"""``lumi config``: the configs shipped with the package (``lumi config list``), printed to copy and edit
(``lumi config show demo/corpus.json > my_corpus.json``). Every stage's ``--config NAME`` finds a shipped config by
that name when no file ``NAME`` exists in the current directory (``lumi.core.config.config_file``)."""

from __future__ import annotations

import argparse

from lumi.core.config import CONFIG_DIR, config_file, shipped_configs
from lumi.core.errors import LumiError
from lumi.core.files import read_text


def configure_parser(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    actions.add_parser("list", help="the names of the shipped configs")
    show = actions.add_parser("show", help="print a shipped config (redirect it to a file to edit a copy)")
    show.add_argument("name", help="a name from lumi config list, e.g. demo/corpus.json")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        print("\n".join(shipped_configs()))
        return 0
    path = config_file(args.name)
    if not path.is_file() or CONFIG_DIR not in path.absolute().parents:
        raise LumiError(f"{args.name}: not a shipped config; lumi config list names them")
    print(read_text(path, what="config"), end="")
    return 0
