"""Command line: ``python -m p2p_lab <command> ...``; ``python -m p2p_lab --help`` lists them."""
from __future__ import annotations

import argparse
import dataclasses
import sys


def _add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {"int": int, "float": float, "str": str, "str | None": str}.get(str(f.type), type(f.default))
            parser.add_argument(flag, type=kind, default=f.default, metavar=kind.__name__.upper())


def _train(args) -> int:
    from .train import RECIPES, TrainConfig, main, recipe_run_settings, run_recipe

    try:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.recipe is None:
        folder = main(cfg)
    else:
        try:
            run = recipe_run_settings(args.recipe, cfg)
        except ValueError as err:
            raise SystemExit(str(err)) from None
        folder = run_recipe(RECIPES[args.recipe], cfg.out, cfg.export, **run)
    print(f"pipeline written to {folder}")
    return 0


COMMANDS = {"train": ("train the shipped shapes-world model (resumable)", _train)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m p2p_lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    from .train import TrainConfig

    p = sub.add_parser("train", help=COMMANDS["train"][0])
    _add_dataclass_args(p, TrainConfig)
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help="train a named recipe run by run (each fine-tuning the one before; 'shipped' is the "
                        "shipped model), resumable as one run is")
    _register_extra(sub)
    return parser


def _register_extra(sub) -> None:
    """Commands that live in other modules (release, grade, edit, site) register themselves here."""
    import importlib

    for module in ("p2p_lab.grading", "p2p_lab.p2p", "p2p_lab.site"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        register = getattr(mod, "register_cli", None)
        if register is not None:
            for name, (help_text, fn) in register(sub).items():
                COMMANDS[name] = (help_text, fn)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command][1](args)


if __name__ == "__main__":
    sys.exit(main())
