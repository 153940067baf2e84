"""Jinja templates for every text the teacher sees: strict, overridable by file name, checked up front."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta

from hfdistill.core.errors import TemplateError

__all__ = ["OBSERVATION_TEMPLATES", "TOOL_TEMPLATES", "Templates", "card_template_path", "environment", "render_file",
           "report_template_path", "template_dir"]

# --observation-format value -> template file; the default is the original tool's format.
OBSERVATION_TEMPLATES = {"seed": "tool_observation.j2", "verl": "tool_observation_verl.j2"}

_PACKAGE = Path(__file__).resolve().parents[1]

# A representative context per template, rendered once at start so an unknown variable fails
# before any teacher call rather than in the middle of a run.
_SAMPLE_DOC = {"id": "1", "title": "Paris", "text": "Paris is the capital of France.",
               "contents": '"Paris"\nParis is the capital of France.', "score": 1.0}
_SAMPLE_CONTEXT: dict[str, dict[str, Any]] = {
    "system_prompt.j2": {},
    "user_prompt.j2": {"question": "What is the capital of France?", "golden_answers": ["Paris"]},
    "tools_section.j2": {},
    "tool_observation.j2": {"results": [{"query": "capital of France", "documents": [_SAMPLE_DOC]}]},
    "tool_observation_verl.j2": {"results": [{"query": "capital of France", "documents": [_SAMPLE_DOC]}]},
    "tool_error.j2": {"error": "unknown tool 'browse'", "tool_name": "search", "query_arg": "query_list"},
    "force_answer.j2": {},
    "open_observation.j2": {"asked": "Paris", "max_chars": 8000,
                            "document": {"title": "Paris", "text": "Paris is the capital of France.", "passages": 1,
                                         "cut": False}},
    "mcp_observation.j2": {"tool": "calculate", "server": "calc", "texts": ["3.5"], "structured": {"result": 3.5},
                           "is_error": False},
}
# The templates of tools other than search: part of a run's template set only when the tool is offered.
TOOL_TEMPLATES = ("open_observation.j2", "mcp_observation.j2")


def _data_path(name: str) -> Path:
    """A shipped data file: inside the wheel (`_data/`) or at the top of a source checkout."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.exists():
            return candidate
    raise TemplateError(f"hfdistill's built-in {name} is missing from {_PACKAGE}; reinstall hfdistill")


def template_dir() -> Path:
    """Directory of the built-in templates."""
    return _data_path("templates")


def card_template_path() -> Path:
    """The built-in dataset card template (`dataset_card.md`)."""
    return _data_path("dataset_card.md")


def report_template_path() -> Path:
    """The page template of `hfdistill report` (`report.html`)."""
    return _data_path("report.html")


def _tojson(value: Any, indent: int | None = None) -> str:
    # Hugging Face chat templates' `tojson`: no key sorting and no HTML escaping (unlike Jinja's),
    # so a text-protocol prompt matches what the server renders from `tools=` byte for byte.
    return json.dumps(value, ensure_ascii=False, indent=indent)


def environment(*, filters: Mapping[str, Callable[..., Any]] | None = None, **options: Any) -> jinja2.Environment:
    """The one way hfdistill makes a Jinja environment: strict (an unknown variable is an error, not
    an empty string), with the `tojson` every template may use; `options` go to `jinja2.Environment`."""
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, **{"autoescape": False, **options})
    env.filters["tojson"] = _tojson
    env.filters.update(filters or {})
    return env


def render_file(path: Path, context: Mapping[str, Any], *, filters: Mapping[str, Callable[..., Any]] | None = None,
                **options: Any) -> str:
    """Render the template file `path` strictly; its mistakes are one-line TemplateErrors naming it."""
    try:
        template = environment(filters=filters, **options).from_string(path.read_text(encoding="utf-8"))
        return template.render(**context)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"template {path} line {e.lineno}: {e.message}; fix the template") from None
    except jinja2.UndefinedError as e:
        raise TemplateError(f"template {path} uses an unknown variable: {e.message}") from None


class Templates:
    """The template set of one run: built-ins, overridden by file name from `override_dir`."""

    def __init__(self, override_dir: str | Path | None = None, *, observation: str = "seed",
                 tool_templates: tuple[str, ...] = ()) -> None:
        if observation not in OBSERVATION_TEMPLATES:
            raise TemplateError(f"unknown observation format {observation!r}; "
                                f"choose one of {', '.join(OBSERVATION_TEMPLATES)}")
        self.observation = OBSERVATION_TEMPLATES[observation]
        self.tool_templates = tuple(t for t in TOOL_TEMPLATES if t in tool_templates)  # (the offered tools' own)
        search_path = [str(template_dir())]
        if override_dir is not None:
            path = Path(override_dir)
            if not path.is_dir():
                raise TemplateError(f"--template-dir {override_dir} is not a directory; "
                                    "create it or drop the option")
            search_path.insert(0, str(path))
        self._env = environment(loader=jinja2.FileSystemLoader(search_path))
        self._cache: dict[str, jinja2.Template] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Templates a run uses, in a stable order."""
        return ("system_prompt.j2", "user_prompt.j2", "tools_section.j2", self.observation, "tool_error.j2",
                "force_answer.j2", *self.tool_templates)

    def _get(self, name: str) -> jinja2.Template:
        if name not in self._cache:
            try:
                self._cache[name] = self._env.get_template(name)
            except jinja2.TemplateNotFound:
                raise TemplateError(f"template {name} not found in {self._env.loader.searchpath}; "  # type: ignore[union-attr]
                                    "restore it or remove the override") from None
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"template {e.filename or name} line {e.lineno}: {e.message}; "
                                    "fix the template") from None
            except (OSError, UnicodeDecodeError) as e:
                raise TemplateError(f"template {name} cannot be read ({e}); check its permissions "
                                    "and encoding (UTF-8)") from None
        return self._cache[name]

    def render(self, name: str, **context: Any) -> str:
        """Render a template; an unknown variable is a TemplateError naming template and variable."""
        template = self._get(name)
        try:
            return template.render(**context).strip()
        except jinja2.UndefinedError as e:
            raise TemplateError(f"template {self._source_path(name)} uses an unknown variable: {e.message}; "
                                f"available: {', '.join(sorted(context)) or 'none'}") from None
        except Exception as e:  # noqa: BLE001 - a template's expressions can raise anything; it is the user's
            raise TemplateError(f"template {self._source_path(name)} failed: {type(e).__name__}: {e}; fix the "
                                "template") from None

    def _source_path(self, name: str) -> str:
        template = self._get(name)
        return template.filename or name

    def variables(self, name: str) -> set[str]:
        """The variables template `name` reads from its context (for what a rendering depends on)."""
        source, _, _ = self._env.loader.get_source(self._env, name)  # type: ignore[union-attr]
        return jinja2.meta.find_undeclared_variables(self._env.parse(source))

    def check(self, tools: list[dict[str, Any]]) -> None:
        """Render every template once with sample values, so mistakes surface before any work."""
        for name in self.names:
            self.render(name, tools=tools, **_SAMPLE_CONTEXT[name])

    def digest(self) -> dict[str, str]:
        """Template file -> sha256 of its source, for provenance and the run fingerprint."""
        out = {}
        for name in self.names:
            source = Path(self._source_path(name)).read_bytes()
            out[name] = hashlib.sha256(source).hexdigest()[:16]
        return out
