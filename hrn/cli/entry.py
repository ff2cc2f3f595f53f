"""The command line before Hydra sees it: ``--help`` for each command, and every slip answered in one line with
exit status 2, as the package's other errors are (``hrn: error: ...``).

``python -m hrn.<command> --help`` prints the command's usage line, what it does, and its own keys with their
defaults and meaning (read from its config file, ``conf/<config>.yaml``, so the two never disagree), then its
groups with their options. Before the run, the overrides are composed once against the configs: an unknown key
names the closest valid keys, a value the run needs and was not given names the key and the usage line, an
unknown option of a group lists the valid ones, and ``+key=`` is refused for a top-level key the command does not
know (``+trainer.<arg>=`` for Lightning's other Trainer arguments keeps working). Hydra's own flags pass through.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from hrn.cli.config import CONF_DIR
from hrn.cli.errors import sweep_failures

__all__ = ["CommandLineError", "check_command_line", "command_help", "run_command"]

# Hydra's flags that take a value, and those that make it do something else than run the command
VALUE_FLAGS = {
    "--config-dir",
    "-cd",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--cfg",
    "-c",
    "--package",
    "-p",
}
OTHER_MODES = {
    "--hydra-help",
    "--version",
    "--shell-completion",
    "-sc",
    "--info",
    "-i",
    "--config-path",
    "-cp",
}
OTHER_MODES |= {"--config-name", "-cn", "--experimental-rerun"}
ONLY_FOR_EVALUATE = {
    "dataset": "checkpoint"
}  # a group option only the commands that load a checkpoint can use
CHECKPOINT_COMMANDS = ("evaluate", "calibrate", "demo")


class CommandLineError(Exception):
    """A slip on the command line: one line, exit status 2."""


def _split(argv: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Hydra's flags (with their values) and the overrides."""
    flags: dict[str, list[str]] = {}
    overrides = []
    args = iter(argv)
    for arg in args:
        if arg.startswith("-"):
            name, _, value = arg.partition("=")
            if name in VALUE_FLAGS and not value:
                value = next(args, "")
            flags.setdefault(name, []).append(value)
        else:
            overrides.append(arg)
    return flags, overrides


def _keys(node, prefix: str = "") -> list[str]:
    """Every dotted key of a config (``trainer.max_epochs``, ...)."""
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append(f"{prefix}{key}")
            out += _keys(value, f"{prefix}{key}.")
    return out


def _missing(node: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys whose value is ``???`` (required), without resolving any interpolation."""
    out = []
    for key in node.keys():
        if OmegaConf.is_missing(node, key):
            out.append(f"{prefix}{key}")
        elif not OmegaConf.is_interpolation(node, key) and isinstance(
            child := node._get_node(key), DictConfig
        ):
            out += _missing(child, f"{prefix}{key}.")
    return out


def _close(word: str, choices: list[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _usage(command: str, config: str, doc: str) -> str:
    first = (Path(CONF_DIR) / f"{config}.yaml").read_text().splitlines()[0]
    if first.startswith(f"# python -m hrn.{command}"):
        return first[2:].strip()
    found = re.search(r"``(python -m hrn\.[^`]+)``", doc)
    return found.group(1) if found else f"python -m hrn.{command} [key=value ...]"


def _sentence(doc: str) -> str:
    """What the command does: the first sentence of its module docstring after the usage, without markup."""
    text = " ".join(doc.split("\n\n")[0].split())
    text = text.split("``: ", 1)[-1]
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")
    end = re.search(r"\.(\s|$)", text)
    text = (text[: end.start() + 1] if end else text).strip()
    return text[:1].upper() + text[1:]


def _documented_keys(config: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """The keys (``key``, default, comment) and groups (``group``, default option, comment) that
    ``conf/<config>.yaml`` documents, in its order."""
    keys, groups = [], []
    block = prefix = ""
    for line in (Path(CONF_DIR) / f"{config}.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)(?:- )?([A-Za-z_][\w/@.]*):\s*(.*?)\s*(?:#\s*(.*))?$", line)
        if not m or line.lstrip().startswith("#"):
            continue
        indent, key, value, comment = len(m.group(1)), m.group(2), m.group(3), m.group(4) or ""
        if indent == 0:
            block, prefix = key, (f"{key}." if not value and key not in ("defaults", "hydra") else "")
            if key not in ("defaults", "hydra") and value:
                keys.append((key, value, comment))
        elif (
            block == "defaults"
            and line.lstrip().startswith("- ")
            and not key.startswith(("override", "hydra"))
        ):
            groups.append((key, value, comment))
        elif prefix and indent == 2:
            keys.append((f"{prefix}{key}", value, comment))
    return keys, groups


def _group_options(group: str, command: str) -> list[str]:
    options = GlobalHydra.instance().config_loader().get_group_options(group)
    if command not in CHECKPOINT_COMMANDS:
        options = [o for o in options if ONLY_FOR_EVALUATE.get(group) != o]
    return options


def command_help(command: str, config: str, doc: str) -> str:
    """``python -m hrn.<command> --help``: usage, what the command does, its keys and groups."""
    keys, groups = _documented_keys(config)
    width = max([len(k) for k, _, _ in keys + groups] + [10]) + 2
    lines = [f"usage: {_usage(command, config, doc)}", "", _sentence(doc), "", "keys (key=value):"]
    for key, value, comment in keys:
        shown = "(required)" if value == "???" else value
        lines.append(f"  {key:<{width}}{shown:<14} {comment}".rstrip())
    if groups:
        lines += ["", "groups (group=option):"]
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            for group, default, comment in groups:
                options = ", ".join(_group_options(group, command))
                lines.append(
                    f"  {group:<{width}}{default:<14} one of {options}" + (f"; {comment}" if comment else "")
                )
        lines.append(f"  every key of every group, with its value: python -m hrn.{command} --cfg job")
    lines += [
        "",
        "Hydra's flags: -m/--multirun (sweeps), --config-dir DIR (your own configs), --cfg job, --hydra-help",
    ]
    return "\n".join(lines)


def _compose(config: str, overrides: list[str], searchpath: list[str]) -> DictConfig:
    extra = (
        [f"hydra.searchpath=[{','.join('file://' + str(Path(d).resolve()) for d in searchpath)}]"]
        if searchpath
        else []
    )
    return compose(config, overrides=[*overrides, *extra])


def _explain(e: Exception, base: DictConfig | None, command: str) -> str:
    """One line for what composing the overrides raised."""
    text = str(e)
    known = _keys(OmegaConf.to_container(base, resolve=False)) if base is not None else []
    if m := re.search(r"Could not override '([^']+)'\.\s*No match in the defaults list", text):
        return f"{m.group(1)}: not a config group of hrn.{command}"
    if m := re.search(r"Could not override '([^']+)'", text):
        key = m.group(1)
        hint = (
            " (other Lightning Trainer arguments: +trainer.<arg>=...)" if key.startswith("trainer.") else ""
        )
        return f"{key}: not a key of hrn.{command}{_close(key, known)}{hint}; python -m hrn.{command} --help lists them"
    if m := re.search(r"An item is already at '([^']+)'", text):
        return f"+{m.group(1)}: {m.group(1)} is a key already; set it without the +: {m.group(1)}=..."
    if m := re.search(r"Could not find '([^/']+)/([^']+)'", text):
        group, option = m.group(1), m.group(2)
        options = [
            o
            for o in re.findall(r"^\t(\S+)$", text, flags=re.M)
            if ONLY_FOR_EVALUATE.get(group) != o or command in CHECKPOINT_COMMANDS
        ]
        return f"{group}={option}: no such option; {group} is one of {', '.join(options)}{_close(option, options)}"
    if m := re.search(r"Ambiguous value for argument '([^']+)'", text):
        return f"{m.group(1)}: several values sweep only with -m (python -m hrn.{command} -m {m.group(1)}), or quote them"
    return text.strip().splitlines()[0]


def check_command_line(command: str, config: str, argv: list[str], doc: str = "") -> None:
    """Print the command's help and exit 0 for ``--help``; raise :class:`CommandLineError` (one line) for a slip
    in ``argv``; return otherwise, and Hydra runs the command."""
    flags, overrides = _split(argv)
    if "--help" in flags or "-h" in flags:
        print(command_help(command, config, doc))
        raise SystemExit(0)
    if any(f in flags for f in OTHER_MODES):
        return
    multirun = "-m" in flags or "--multirun" in flags
    searchpath = flags.get("--config-dir", []) + flags.get("-cd", [])
    for folder in searchpath:
        if not Path(folder).expanduser().is_dir():
            raise CommandLineError(f"--config-dir {folder}: no such folder (a folder of your own configs)")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise CommandLineError(str(e).strip().splitlines()[0]) from None
    own = [
        o for o in parsed if o.key_or_group != "hydra" and not o.key_or_group.startswith(("hydra.", "hydra/"))
    ]
    checked = []
    for o in own:
        if o.is_sweep_override() and multirun:  # one value stands for the sweep
            prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++"}.get(o.type, "")
            package = f"@{o.package}" if o.package else ""
            checked.append(f"{prefix}{o.key_or_group}{package}={next(iter(o.sweep_string_iterator()))}")
        else:
            checked.append(o.input_line)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        groups = set(GlobalHydra.instance().config_loader().list_groups(""))
        choices = [
            c
            for c, o in zip(checked, own, strict=True)
            if o.key_or_group in groups and o.type is OverrideType.CHANGE
        ]
        for group, option in ONLY_FOR_EVALUATE.items():
            if command not in CHECKPOINT_COMMANDS and any(c == f"{group}={option}" for c in choices):
                options = ", ".join(_group_options(group, command))
                raise CommandLineError(
                    f"{group}={option}: the dataset a checkpoint was trained on, for python -m hrn.evaluate; "
                    f"hrn.{command} takes {group}= one of {options}"
                )
        base = None
        try:
            base = _compose(config, choices, searchpath)
            for o in own:  # + adds keys below one the command has, never a new top-level one
                top = o.key_or_group.split(".")[0]
                if (
                    o.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
                    and top not in base
                    and top not in groups
                ):
                    known = [str(k) for k in base]
                    raise CommandLineError(
                        f"+{o.key_or_group}: hrn.{command} has no key {top}{_close(top, known)}; + adds keys below "
                        f"one it has, e.g. +trainer.<Trainer argument>=..."
                    )
            cfg = _compose(config, checked, searchpath)
        except (ConfigCompositionException, MissingConfigException) as e:
            raise CommandLineError(_explain(e, base, command)) from None
    missing = _missing(cfg)
    if missing:
        raise CommandLineError(f"{missing[0]} is required; usage: {_usage(command, config, doc)}")


def run_command(
    main: Callable[[], None], command: str, doc: str, config: str | None = None, extra: Sequence[str] = ()
) -> None:
    """Check the command line (:func:`check_command_line`), then run the Hydra ``main`` of the command, with the
    overrides ``extra`` after the user's (a command that writes no run folder says so there). A sweep with failed
    jobs exits with status 1 once every job has run."""
    try:
        check_command_line(command, config or command, sys.argv[1:], doc)
    except CommandLineError as e:
        print(f"hrn: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    sweep_failures(clear=True)
    if extra:
        sys.argv = [*sys.argv, *extra]
    main()
    if sweep_failures(clear=True):
        raise SystemExit(1)
