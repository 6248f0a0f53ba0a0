"""String options and their one parser.

Every option of the library (a prior's name, a guide kind, an activation, ...) is a string
enum deriving from :class:`Option`, so a function can take ``"relu"`` or
``Activation.RELU`` alike and turn either into the member with ``Activation.parse(value)``.
A bad value raises one ``ValueError`` wording, naming the option and every valid value.
The enums stay next to the code they configure; :class:`Task` (what a predictor
predicts) is shared, so it lives here.

Example::

    >>> from pyrobayes.options import Option
    >>> class Colour(Option):
    ...     RED = "red"
    ...     BLUE = "blue"
    >>> Colour.parse("red") is Colour.RED
    True
    >>> Colour.parse(Colour.BLUE)
    <Colour.BLUE: 'blue'>
    >>> Colour.parse("green")
    Traceback (most recent call last):
    ...
    ValueError: unknown colour 'green'; valid: red, blue
    >>> Task.parse("regression") is Task.REGRESSION
    True
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import Enum
from typing import Any, TypeVar

__all__ = ["Option", "Task"]

_O = TypeVar("_O", bound="Option")


def _words(name: str) -> str:
    """``"LikelihoodKind"`` -> ``"likelihood kind"``; runs of capitals (``"OODScore"``,
    ``"CRPSMethod"``) stay one upper-case word."""
    parts = re.findall(r"[A-Z]+(?=[A-Z][a-z]|$)|[A-Z]?[a-z0-9]+|[A-Z]+", name)
    return " ".join(p if p.isupper() and len(p) > 1 else p.lower() for p in parts)


class Option(str, Enum):
    """Base class of the library's string options (a ``str``, so ``== "name"`` and JSON
    work unchanged).

    Example::

        >>> import json
        >>> from pyrobayes.options import Option
        >>> class Guide(Option):
        ...     NORMAL = "normal"
        ...     LOW_RANK = "lowrank"
        >>> Guide.LOW_RANK == "lowrank", json.dumps({"guide": Guide.NORMAL})
        (True, '{"guide": "normal"}')
        >>> Guide.parse("full")
        Traceback (most recent call last):
        ...
        ValueError: unknown guide 'full'; valid: normal, lowrank
    """

    @classmethod
    def parse(cls: type[_O], value: Any, what: str | None = None, also: Sequence[str] = ()) -> _O:
        """The member for ``value`` (a member or its string value).

        Args:
            value: the user's choice.
            what: the option's name in the error (default: the class name in words,
                ``LikelihoodKind`` -> ``"likelihood kind"``).
            also: further accepted forms the caller handles itself (e.g. ``"last:K"``,
                ``"a callable"``), listed after the members in the error.

        Raises:
            ValueError: ``unknown <what> <value>; valid: <a>, <b>, ...``.
        """
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join([m.value for m in cls] + list(also))
            what = what or _words(cls.__name__)
            raise ValueError(f"unknown {what} {value!r}; valid: {valid}") from None


class Task(Option):
    """What a predictor predicts.

    Example::

        >>> from pyrobayes.options import Task
        >>> Task.parse("classification") is Task.CLASSIFICATION
        True
        >>> [t.value for t in Task]
        ['regression', 'classification']
    """

    REGRESSION = "regression"
    CLASSIFICATION = "classification"
