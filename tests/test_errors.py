"""The one exception tree: the classes match the tree its docstring draws, exit codes, labels, first_line."""

from __future__ import annotations

import re

import pytest

from hfdistill.core import errors
from hfdistill.core.errors import (
    ConfigError,
    ContextLengthError,
    CorpusError,
    HfdistillError,
    HubError,
    InputError,
    Interrupted,
    JournalError,
    JudgeError,
    RetrievalError,
    RolloutError,
    RunLockedError,
    ServiceError,
    TeacherError,
    TemplateError,
    first_line,
)

_TREE_LINE = re.compile(r"^ {4}((?:[│ ] {3})*)([├└]── )?(\w+) ")


def _drawn_parents() -> dict[str, str | None]:
    """Each class of the docstring's tree with its parent, read from the indentation."""
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in (errors.__doc__ or "").splitlines():
        match = _TREE_LINE.match(line)
        if match is None:
            continue
        rails, branch, name = match.groups()
        del path[len(rails) // 4 + bool(branch):]
        parents[name] = path[-1] if path else None
        path.append(name)
    return parents


def test_the_docstring_draws_every_class_under_its_real_parent() -> None:
    drawn = _drawn_parents()
    classes = {name for name in errors.__all__ if isinstance(getattr(errors, name), type)}
    assert set(drawn) == classes
    for name, parent in drawn.items():
        bases = getattr(errors, name).__bases__
        assert bases == ((Exception,) if parent is None else (getattr(errors, parent),)), name


@pytest.mark.parametrize(("kind", "code"), [
    pytest.param(ConfigError, 2, id="config"),
    pytest.param(InputError, 2, id="input"),
    pytest.param(TemplateError, 2, id="template"),
    pytest.param(CorpusError, 2, id="corpus"),
    pytest.param(TeacherError, 1, id="teacher"),
    pytest.param(JournalError, 1, id="journal"),
    pytest.param(RunLockedError, 1, id="run-locked"),
    pytest.param(HubError, 1, id="hub"),
    pytest.param(Interrupted, 130, id="interrupted"),
])
def test_exit_codes_tell_bad_usage_from_failures(kind: type[HfdistillError], code: int) -> None:
    assert kind.exit_code == code


@pytest.mark.parametrize(("error", "cause"), [
    pytest.param(ServiceError("x"), "service", id="service"),
    pytest.param(TeacherError("x"), "teacher", id="teacher"),
    pytest.param(RetrievalError("x"), "retrieval", id="retrieval"),
    pytest.param(JudgeError("x"), "judge", id="judge"),
    pytest.param(ContextLengthError("x"), "context", id="context"),
    pytest.param(TeacherError("x", cause="http_503"), "http_503", id="explicit"),
])
def test_a_service_error_is_labelled_by_its_kind_unless_told_otherwise(error: ServiceError, cause: str) -> None:
    assert error.cause == cause and error.transient is False and error.retry_after is None


def test_service_and_rollout_errors_carry_what_their_handlers_read() -> None:
    error = RetrievalError("HTTP 503", transient=True, retry_after=2.0)
    assert (str(error), error.transient, error.retry_after) == ("HTTP 503", True, 2.0)
    rollout = RolloutError("teacher gave up", cause="http_503", turn=4)
    assert (str(rollout), rollout.cause, rollout.turn) == ("teacher gave up", "http_503", 4)


def _during(outer: ValueError, how: str) -> BaseException:
    """`outer` raised while handling a wrapped library's OSError: `from` it, `from None`, or implicitly."""
    try:
        try:
            raise OSError("\n  Arrow: file is truncated\nat offset 12\n")
        except OSError as inner:
            if how == "from":
                raise outer from inner
            if how == "from None":
                raise outer from None
            raise outer  # noqa: B904 - the implicit context is the case under test
    except ValueError as e:
        return e


@pytest.mark.parametrize(("error", "line"), [
    pytest.param(ValueError("one\ntwo"), "one", id="first-line"),
    pytest.param(_during(ValueError("An error occurred while generating the dataset"), "from"),
                 "Arrow: file is truncated", id="innermost-cause"),
    pytest.param(_during(ValueError("the one raised"), "from None"), "the one raised", id="cause-suppressed"),
    pytest.param(_during(ValueError("raised during handling"), "implicitly"), "raised during handling",
                 id="implicit-context-not-followed"),
    pytest.param(KeyError(), "KeyError", id="empty-message"),
    pytest.param(RuntimeError("  \n "), "RuntimeError", id="blank-message"),
])
def test_first_line_is_the_useful_line_of_a_foreign_exception(error: BaseException, line: str) -> None:
    assert first_line(error) == line
