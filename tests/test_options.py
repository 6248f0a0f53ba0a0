"""Every string option of the package parses its members and values, and rejects anything
else with one message that names every valid value."""

import importlib

import pytest
from conftest import public_modules

from pyrobayes.options import Option, Task


def _all_options() -> list[type[Option]]:
    for name in public_modules():  # an enum is only a subclass once its module is imported
        importlib.import_module(name)
    found, todo = [], list(Option.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    # Classes made up inside doctests live in no module of the package.
    return sorted(
        (c for c in found if c.__module__.startswith("pyrobayes")),
        key=lambda c: f"{c.__module__}.{c.__qualname__}",
    )


OPTIONS = _all_options()


def test_the_options_are_found():
    names = {c.__name__ for c in OPTIONS}
    # The enums of the core modules; a walk that imported nothing would find none of them.
    assert {"PriorKind", "GuideKind", "LikelihoodKind", "LossKind", "Activation", "Task"} <= names
    assert len(OPTIONS) >= 14


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda c: c.__name__)
def test_option_parses_members_and_values(cls):
    assert len(cls) >= 2
    for member in cls:
        assert cls.parse(member) is member
        assert cls.parse(member.value) is member
        assert cls.parse(str(member.value)) == member.value  # still a plain string


@pytest.mark.parametrize("cls", OPTIONS, ids=lambda c: c.__name__)
def test_option_rejects_unknown_values_listing_all_valid_ones(cls):
    for bad in ("no-such-option", 3, None):
        with pytest.raises(ValueError) as err:
            cls.parse(bad)
        msg = str(err.value)
        assert msg.startswith("unknown ") and repr(bad) in msg
        assert msg.endswith("; valid: " + ", ".join(m.value for m in cls))


def test_parse_names_the_option_and_extra_forms():
    with pytest.raises(
        ValueError, match=r"^unknown task 'ranking'; valid: regression, classification$"
    ):
        Task.parse("ranking")
    with pytest.raises(
        ValueError, match=r"^unknown PFN task 'x'; valid: regression, classification, a callable$"
    ):
        Task.parse("x", "PFN task", also=["a callable"])
