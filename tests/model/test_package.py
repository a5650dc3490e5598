"""The package's public surface: what `import model` offers, the same in its three lists (the imports, the
TYPE_CHECKING imports for type checkers, __all__) and in what it loads on first use (_SOURCES)."""
import ast
from pathlib import Path

import model

_INIT = Path(model.__file__)


def _type_checking_imports() -> dict[str, tuple[str, ...]]:
    tree = ast.parse(_INIT.read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    return {node.module: tuple(alias.name for alias in node.names)
            for node in block.body if isinstance(node, ast.ImportFrom)}


def _eager_imports() -> set[str]:
    tree = ast.parse(_INIT.read_text())
    return {alias.name for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1
            for alias in node.names}


def test_type_checking_imports_name_the_lazy_modules_and_names_exactly():
    assert {m: set(n) for m, n in _type_checking_imports().items()} == \
        {m: set(n) for m, n in model._SOURCES.items()}


def test_all_is_what_the_package_imports_plus_what_it_loads_on_first_use():
    # __all__ stays a literal list (ruff reads it to tell re-exports from unused imports): this keeps it in step
    lazy = {name for names in model._SOURCES.values() for name in names}
    assert set(model.__all__) == _eager_imports() | lazy


def test_all_lists_each_name_once_and_each_resolves():
    assert len(model.__all__) == len(set(model.__all__))
    for name in model.__all__:
        assert getattr(model, name) is not None, name


def test_an_unknown_name_is_an_attribute_error_naming_it():
    try:
        model.no_such_thing
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("model.no_such_thing resolved")

