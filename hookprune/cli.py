"""The ``hookprune`` command: ``check`` a schedule against an architecture or your own model, list ``plugins``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hookprune import __version__

if TYPE_CHECKING:
    import torch


def _import_model(spec: str) -> torch.nn.Module:
    """The module ``--model MODULE:FACTORY`` builds: ``FACTORY()`` imported from ``MODULE`` (found from the working
    directory too). Raises ValueError with the one line to print."""
    import importlib

    import torch

    module_name, colon, factory_name = spec.partition(":")
    if not colon or not module_name or not factory_name:
        raise ValueError(f"--model {spec!r}: give MODULE:FACTORY, a function that returns the model "
                         "(e.g. mypackage.models:build)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"--model {spec!r}: cannot import {module_name!r}: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        what = "has no" if factory is None else "has a non-callable"
        raise ValueError(f"--model {spec!r}: module {module_name!r} {what} {factory_name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise ValueError(f"--model {spec!r}: {factory_name}() raised {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"--model {spec!r}: {factory_name}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _check(args: argparse.Namespace) -> int:
    import torch

    from hookprune import models
    from hookprune.config.builder import LoopFacts, check
    from hookprune.errors import ScheduleError, ScheduleErrors, ScheduleWarning

    try:
        model = _import_model(args.model) if args.model else models.create_model(args.arch, device="meta")
    except ValueError as exc:
        print(f"hookprune check: {exc}", file=sys.stderr)
        return 2
    teacher = None
    if args.teacher is not None:
        try:
            teacher = models.create_model(args.teacher, device="meta")
        except ValueError as exc:
            print(f"hookprune check: --teacher: {exc}", file=sys.stderr)
            return 2
    if args.validation_freq < 1:
        print(f"hookprune check: --validation-freq must be at least 1, got {args.validation_freq}", file=sys.stderr)
        return 2
    loop = LoopFacts(frozenset(m for m in (n.strip() for n in args.metrics.split(",")) if m), args.validation_freq)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ScheduleWarning)
            sched = check(args.schedule, model, optimizer, teacher=teacher, loop=loop)
        for warning in caught:
            if issubclass(warning.category, ScheduleWarning):
                print(f"warning: {warning.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    except ScheduleErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return 1
    except ScheduleError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # a failure no check foresaw (MemoryError, RecursionError...): still one line
        detail = " ".join(str(exc).split())
        print(f"{args.schedule}: {type(exc).__name__}{': ' + detail if detail else ''}", file=sys.stderr)
        return 1
    spans = [f"{unit} {span[0]}..{span[1]}" for unit, span in (("epochs", sched.epoch_span()),
                                                               ("steps", sched.step_span())) if span]
    count = len(sched.instances)
    target = f"model {args.model}" if args.model else f"arch {args.arch}"
    print(f"{args.schedule}: ok ({count} instance{'' if count == 1 else 's'}, {', '.join(spans) or 'no policies'}, "
          f"{target})")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from hookprune._engine import registry as plugins

    print("Schedule classes (entry point group 'hookprune.classes'):")
    providers = plugins.class_providers()
    loaded = plugins.autoloaded_plugins()
    width = max((len(n) for n in providers), default=10)
    label_width = max((len(p.label) for found in providers.values() for p in found), default=10)
    for name, found in providers.items():
        for provider in found:
            clash = "  (name clash)" if len(found) > 1 else ""
            print(f"  {name:<{width}}  {provider.label:<{label_width}} {provider.value}{clash}")
    print("Hook plugins (entry point group 'hookprune'):")
    if not loaded:
        disabled = plugins.DISABLE_AUTOLOAD_ENV
        print(f"  none{f' ({disabled} is set)' if os.environ.get(disabled) else ''}")
    for plugin in loaded:
        hooks = ", ".join(plugins.hookimpl_names(plugin.obj))
        print(f"  {plugin.provider.name:<{width}}  {plugin.provider.label:<{label_width}} {plugin.provider.value}"
              f"  hooks: {hooks}")
    for name in sorted(plugins.disabled_plugin_names()):
        print(f"  {name:<{width}}  disabled by {plugins.DISABLE_PLUGINS_ENV}")
    print(f"Trainer integrations (entry point group '{plugins.INTEGRATIONS_GROUP}'):")
    integrations = plugins.integration_providers()
    if not integrations:
        print("  none")
    for provider in integrations:
        print(f"  {provider.name:<{width}}  {provider.label:<{label_width}} {provider.value}")
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookprune", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hookprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a schedule against a model without training, reporting every "
                                         "error")
    check.add_argument("schedule", help="a schedule YAML file (Distiller's format)")
    target = check.add_mutually_exclusive_group(required=True)
    target.add_argument("--arch", "-a", help="architecture name (torchvision or the zoo)")
    target.add_argument("--model", "-m", metavar="MODULE:FACTORY",
                        help="your own model: FACTORY() from MODULE (importable from the working directory), "
                             "which returns a torch.nn.Module")
    check.add_argument("--metrics", default="min,max", metavar="NAMES",
                       help="the keys of the metrics your loop passes to on_epoch_end, comma-separated ('' for "
                            "none; default: min,max, as the example application passes them)")
    check.add_argument("--validation-freq", type=int, default=1, metavar="N",
                       help="your loop validates (and passes metrics) after every N-th epoch only: after epochs "
                            "N-1, 2N-1, ... (default 1)")
    check.add_argument("--teacher", metavar="ARCH",
                       help="the teacher architecture a 'distillers:' entry without teacher_arch receives")
    check.set_defaults(func=_check)
    plugins_cmd = sub.add_parser("plugins",
                                 help="list installed schedule classes, hook plugins and trainer integrations")
    plugins_cmd.set_defaults(func=_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # the reader (``| head``) went away: stop quietly, as command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
