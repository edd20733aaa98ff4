# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Compile each of this collection's module_utils once when a module imports them from AnsiballZ's zip.

AnsiballZ ships module_utils as source in a zip, and Python imports them with ``zipimport``, which
keeps no byte code: every module run compiles every module_utils file it imports. On Python 3.10 and
newer it compiles each one twice: ``zipimporter.get_filename``, which the import system calls to make
each module's spec, compiles the source only to learn the file name, and ``get_code`` compiles it
again to run it. For tcp_state_facts that second compile was about 45 ms of every run, a third of
what the module costs a host over ``ansible -m ping``.

:func:`compile_each_once` gives this collection's module_utils directory, and nothing else, a
zipimporter that keeps the code object made for the file name and hands it to ``get_code``. Only
zipimporter's public methods are used; outside a zip (tests, ansible-test, an unpacked module) it
does nothing. Python 3.7 to 3.9 load zipped modules through ``load_module``, which compiles on its
own, so there it does nothing either.
"""

from __future__ import annotations

import os
import sys
import zipimport

PACKAGE = __name__.rpartition(".")[0]


class CompileOnceImporter(zipimport.zipimporter):
    """A zipimporter whose get_filename compiles through get_code and keeps the result for it."""

    def __init__(self, path):
        super().__init__(path)
        self._compiled = {}

    def get_filename(self, fullname):
        code = super().get_code(fullname)
        # compiled from the zip's source, the code's file name is the path get_filename returns
        # (byte code in the zip, which AnsiballZ never ships, would carry another: ask zipimport)
        if not code.co_filename.startswith(self.archive + os.sep):
            return super().get_filename(fullname)
        self._compiled[fullname] = code
        return code.co_filename

    def get_code(self, fullname):
        code = self._compiled.pop(fullname, None)
        return super().get_code(fullname) if code is None else code


def compile_each_once(package=PACKAGE):
    """Import ``package``'s modules from a zip with CompileOnceImporter (call before importing them).

    Returns the number of path entries changed: 0 outside a zip or before Python 3.10.
    """
    if not hasattr(zipimport.zipimporter, "exec_module"):  # before 3.10: load_module compiles anyway
        return 0
    package = sys.modules.get(package)
    # the class itself, not isinstance(): only zipimport's own importer, never one somebody else installed
    if getattr(getattr(package, "__spec__", None), "loader", None).__class__ is not zipimport.zipimporter:
        return 0  # not imported from a zip
    changed = 0
    for path in package.__path__:
        current = sys.path_importer_cache.get(path)
        if current is None or current.__class__ is zipimport.zipimporter:
            try:
                sys.path_importer_cache[path] = CompileOnceImporter(path)
            except zipimport.ZipImportError:
                continue  # an entry of a package split across places that is no zip: left as it is
            changed += 1
    return changed
