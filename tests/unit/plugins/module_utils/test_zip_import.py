"""_zip_import: module_utils imported from a real zip (as AnsiballZ ships them) are compiled once each.

Every test builds a real zip on disk, puts it on sys.path and imports from it with Python's own
zipimport; builtins.compile is wrapped only to count what zipimport compiles.
"""

from __future__ import annotations

import builtins
import collections
import importlib
import marshal
import sys
import zipfile
import zipimport

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _zip_import

ZIP_COMPILES_TWICE = hasattr(zipimport.zipimporter, "exec_module")  # Python 3.10+


@pytest.fixture
def zipped(tmp_path, monkeypatch):
    """make(package, {name: source}) -> path of a zip holding package/__init__.py and the modules, on sys.path."""
    made = []

    def make(package, files, extra=None):
        path = tmp_path / f"{package}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"{package}/__init__.py", "")
            for name, source in files.items():
                zf.writestr(f"{package}/{name}.py", source)
            for name, data in (extra or {}).items():
                zf.writestr(f"{package}/{name}", data)
        monkeypatch.syspath_prepend(str(path))
        made.append(package)
        return path

    yield make
    for package in made:
        for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
            del sys.modules[name]


@pytest.fixture
def compiles(monkeypatch):
    """{file name: times compiled} for every compile() call while the test runs."""
    counts = collections.Counter()
    real = builtins.compile

    def counting(source, filename, *args, **kwargs):
        counts[str(filename)] += 1
        return real(source, filename, *args, **kwargs)

    monkeypatch.setattr(builtins, "compile", counting)
    return counts


MODULES = {
    "alpha": "from . import beta\nVALUE = beta.VALUE + 1\n",
    "beta": "VALUE = 41\n",
}


def test_each_module_is_compiled_once_and_imports_as_before(zipped, compiles):
    path = zipped("zpkg_once", MODULES)
    package = importlib.import_module("zpkg_once")
    assert _zip_import.compile_each_once("zpkg_once") == 1
    assert sys.path_importer_cache[package.__path__[0]].__class__ is _zip_import.CompileOnceImporter

    alpha = importlib.import_module("zpkg_once.alpha")

    assert alpha.VALUE == 42
    for name in ("alpha", "beta"):
        module = sys.modules[f"zpkg_once.{name}"]
        expected = f"{path}/zpkg_once/{name}.py"
        assert module.__file__ == expected
        assert module.__spec__.origin == expected
        assert isinstance(module.__loader__, _zip_import.CompileOnceImporter)
        assert compiles[expected] == 1, dict(compiles)
    # nothing is kept once the modules ran
    assert sys.path_importer_cache[package.__path__[0]]._compiled == {}


def test_after_a_module_was_imported_by_zipimport_the_rest_are_compiled_once(zipped, compiles):
    """As in a module: _python_version and _zip_import come from the stock importer, the rest from this one."""
    path = zipped("zpkg_later", MODULES)
    importlib.import_module("zpkg_later.beta")
    assert sys.path_importer_cache[f"{path}/zpkg_later"].__class__ is zipimport.zipimporter
    assert _zip_import.compile_each_once("zpkg_later") == 1
    alpha = importlib.import_module("zpkg_later.alpha")
    assert alpha.VALUE == 42
    assert compiles[f"{path}/zpkg_later/alpha.py"] == 1
    assert compiles[f"{path}/zpkg_later/beta.py"] == (2 if ZIP_COMPILES_TWICE else 1)


def test_without_it_zipimport_compiles_twice(zipped, compiles):
    """What the importer saves: the stock zipimporter compiles for the spec's file name, then again to run."""
    path = zipped("zpkg_stock", {"beta": "VALUE = 41\n"})
    importlib.import_module("zpkg_stock.beta")
    assert compiles[f"{path}/zpkg_stock/beta.py"] == (2 if ZIP_COMPILES_TWICE else 1)


def test_a_missing_module_is_the_same_import_error(zipped):
    zipped("zpkg_missing", MODULES)
    importlib.import_module("zpkg_missing")
    _zip_import.compile_each_once("zpkg_missing")
    with pytest.raises(ModuleNotFoundError, match=r"zpkg_missing\.gamma"):
        importlib.import_module("zpkg_missing.gamma")


def test_a_syntax_error_is_raised_from_the_zipped_file(zipped):
    path = zipped("zpkg_broken", {"bad": "def broken(:\n"})
    importlib.import_module("zpkg_broken")
    _zip_import.compile_each_once("zpkg_broken")
    with pytest.raises(SyntaxError) as raised:
        importlib.import_module("zpkg_broken.bad")
    assert raised.value.filename == f"{path}/zpkg_broken/bad.py"


def test_byte_code_in_the_zip_gets_zipimports_own_file_name(zipped):
    """A .pyc (AnsiballZ ships none) carries the name it was compiled under: zipimport is asked instead."""
    code = compile("VALUE = 7\n", "/elsewhere/gamma.py", "exec")
    pyc = importlib.util.MAGIC_NUMBER + b"\x00" * 12 + marshal.dumps(code)  # flags 0, no source to check
    path = zipped("zpkg_pyc", {}, extra={"gamma.pyc": pyc})
    importlib.import_module("zpkg_pyc")
    _zip_import.compile_each_once("zpkg_pyc")
    gamma = importlib.import_module("zpkg_pyc.gamma")
    assert gamma.VALUE == 7
    assert gamma.__file__ == f"{path}/zpkg_pyc/gamma.pyc"


def test_outside_a_zip_nothing_changes():
    """The collection's own module_utils, imported from the checkout here, keep their importer."""
    package = sys.modules[_zip_import.PACKAGE]
    before = {path: sys.path_importer_cache.get(path) for path in package.__path__}
    assert _zip_import.compile_each_once() == 0
    assert {path: sys.path_importer_cache.get(path) for path in package.__path__} == before
    assert _zip_import.compile_each_once("no.such.package") == 0


def test_an_importer_somebody_else_installed_is_kept(zipped):
    zipped("zpkg_theirs", MODULES)
    package = importlib.import_module("zpkg_theirs")
    theirs = type("TheirImporter", (zipimport.zipimporter,), {})(package.__path__[0])
    sys.path_importer_cache[package.__path__[0]] = theirs
    assert _zip_import.compile_each_once("zpkg_theirs") == 0
    assert sys.path_importer_cache[package.__path__[0]] is theirs
