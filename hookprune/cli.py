"""The ``hookprune`` command: ``check`` a schedule against an architecture, list ``plugins``."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence

from hookprune import __version__


def _check(args: argparse.Namespace) -> int:
    import torch

    from hookprune import models
    from hookprune.config.builder import build
    from hookprune.errors import ScheduleError, ScheduleWarning

    try:
        model = models.create_model(args.arch, device="meta")
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
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ScheduleWarning)
            sched = build(args.schedule, model, optimizer, teacher=teacher)
        for warning in caught:
            if issubclass(warning.category, ScheduleWarning):
                print(f"warning: {warning.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    except ScheduleError as exc:
        print(exc, file=sys.stderr)
        return 1
    except Exception as exc:  # a failure no check foresaw (MemoryError, RecursionError...): still one line
        detail = " ".join(str(exc).split())
        print(f"{args.schedule}: {type(exc).__name__}{': ' + detail if detail else ''}", file=sys.stderr)
        return 1
    epochs = sched.epoch_span()
    span = f"epochs {epochs[0]}..{epochs[1]}" if epochs else "no policies"
    count = len(sched.instances)
    print(f"{args.schedule}: ok ({count} instance{'' if count == 1 else 's'}, {span}, arch {args.arch})")
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
    check = sub.add_parser("check", help="validate a schedule against an architecture without training")
    check.add_argument("schedule", help="a schedule YAML file (Distiller's format)")
    check.add_argument("--arch", "-a", required=True, help="architecture name (torchvision or the zoo)")
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
