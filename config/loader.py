"""Load the YAML config file: substitute ``${NAME}``, validate, and report every error with its line.

An error names the file, the line, the path in the document and the rule broken, e.g.::

    scopegate.yaml:31: authorizationServers[0].policies[0].rules[0].actions.token.accessTokenLifetimeMinutes:
        4 is outside 5-1440: an access token lives between five minutes and one day
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import ValidationError

from config.invariants import Path, find_reference_errors
from config.schema import ScopegateConfig

DEFAULT_CONFIG_NAME = "default.yaml"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ConfigIssue:
    """One broken rule at one place in the document."""

    path: Path
    rule: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {format_path(self.path) or '(document)'}: {self.rule}"


class ConfigError(Exception):
    """The configuration is invalid; ``issues`` holds every problem found, not only the first."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        super().__init__("\n".join(issue.render(source) for issue in issues))


def format_path(path: Path) -> str:
    """``("a", 0, "b")`` → ``a[0].b``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read_config_text(path: str | os.PathLike[str] | None) -> tuple[str, str]:
    """A config file's text and its name for messages; ``None`` is the default config shipped in the package."""
    if path is None:
        text = resources.files("config").joinpath(DEFAULT_CONFIG_NAME).read_text(encoding="utf-8")
        source = f"<default config {DEFAULT_CONFIG_NAME}>"
    else:
        source = str(path)
        try:
            text = FsPath(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(source, [ConfigIssue((), f"cannot read the file: {exc.strerror or exc}")]) from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(source, [ConfigIssue((), f"the file is not UTF-8 text: {exc}")]) from exc
    return text, source


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> ScopegateConfig:
    """Load and validate a config file; ``None`` loads the default config shipped in the package."""
    text, source = read_config_text(path)
    return parse_config(text, source, os.environ if env is None else env)


def parse_config(text: str, source: str, env: Mapping[str, str]) -> ScopegateConfig:
    """Validate YAML text; raise ConfigError listing every issue."""
    document, lines, issues = _compose(text, source, env)
    if document is None and not issues:
        document = {}
    if issues:
        raise ConfigError(source, issues)
    if not isinstance(document, dict):
        raise ConfigError(source, [ConfigIssue((), "the document must be a mapping of settings", 1)])
    return validate_document(document, source, lines)


def validate_document(document: dict[str, Any], source: str, lines: dict[Path, int] | None = None) -> ScopegateConfig:
    """Validate an already-parsed document (the management API builds one, too)."""
    lines = lines or {}
    try:
        cfg = ScopegateConfig.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(source, [_issue_from_pydantic(err, lines) for err in exc.errors()]) from None
    problems = find_reference_errors(cfg)
    if problems:
        raise ConfigError(source, [ConfigIssue(p, rule, _line_for(p, lines)) for p, rule in problems])
    return cfg


def _issue_from_pydantic(err: Any, lines: dict[Path, int]) -> ConfigIssue:
    path: Path = tuple(part for part in err["loc"] if isinstance(part, str | int))
    message = str(err["msg"])
    message = message.removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        message = "unknown key (check its spelling; unknown keys are rejected so that a typo cannot disable a check)"
    elif err["type"] == "missing":
        message = "required key is missing"
    return ConfigIssue(path, message, _line_for(path, lines))


def _line_for(path: Path, lines: dict[Path, int]) -> int | None:
    """The line of the deepest node of ``path`` that exists in the file."""
    for end in range(len(path), -1, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None


# ---------------------------------------------------------------------------------------------- YAML with lines


def _compose(text: str, source: str, env: Mapping[str, str]) -> tuple[Any, dict[Path, int], list[ConfigIssue]]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return None, {}, [ConfigIssue((), f"not valid YAML: {problem}", line)]
    if node is None:
        return None, {}, []
    lines: dict[Path, int] = {}
    issues: list[ConfigIssue] = []
    value = _build(node, (), lines, issues, env)
    return value, lines, issues


def _build(node: yaml.Node, path: Path, lines: dict[Path, int], issues: list[ConfigIssue], env: Mapping[str, str]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if not isinstance(key_node, yaml.ScalarNode):
                issues.append(ConfigIssue(path, "mapping keys must be plain strings", key_node.start_mark.line + 1))
                continue
            if key in out:
                issues.append(ConfigIssue((*path, key), "duplicate key: the second one would silently replace the first",
                                          key_node.start_mark.line + 1))
                continue
            out[key] = _build(value_node, (*path, key), lines, issues, env)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), lines, issues, env) for i, item in enumerate(node.value)]
    # A scalar: let PyYAML resolve its type, then substitute environment references in strings.
    value = yaml.SafeLoader(b"").construct_object(node, deep=True)
    if isinstance(value, str) and "${" in value:
        return _substitute(value, path, node.start_mark.line + 1, issues, env)
    return value


def _substitute(value: str, path: Path, line: int, issues: list[ConfigIssue], env: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        issues.append(ConfigIssue(path, f"environment variable {name} is not set (referenced as ${{{name}}})", line))
        return ""

    return _ENV_REF.sub(replace, value)
