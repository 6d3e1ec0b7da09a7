"""One-way layers: no file uses one above it.

The hook package's order is the list in relocate_hook/__init__.py
(bottom first); the filter's is README.md's layout table (top first).
"""

import ast
import os
import re
import unittest

import hooktest

PKG = os.path.join(hooktest.SCRIPTS, "relocate_hook")
TOP = os.path.dirname(hooktest.SCRIPTS)


def hook_order():
    """The package's modules, bottom first, as __init__.py lists them."""
    with open(os.path.join(PKG, "__init__.py")) as f:
        doc = ast.get_docstring(ast.parse(f.read()))
    return re.findall(r"^  (\w+) ", doc, re.M)


def hook_imports(module):
    """The package's modules that module imports."""
    with open(os.path.join(PKG, module + ".py")) as f:
        tree = ast.parse(f.read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out.update(a.name for a in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module] if isinstance(node, ast.ImportFrom) \
                else [a.name for a in node.names]
            out.update(n.split(".")[1] for n in names
                       if n and n.startswith("relocate_hook."))
    return out


def filter_order():
    """The filter's files, top first, as README.md's layout table lists them."""
    with open(os.path.join(TOP, "README.md")) as f:
        return re.findall(r"^  \|[\w ]*\| `(\w+)\.c` \|", f.read(), re.M)


def filter_includes(name):
    """The filter's own headers that name.c and name.h include."""
    out = set()
    for ext in (".c", ".h"):
        try:
            with open(os.path.join(TOP, "filter", name + ext)) as f:
                out.update(re.findall(r'^#include "(\w+)\.h"', f.read(), re.M))
        except FileNotFoundError:
            pass
    return out - {name}


class Layers(unittest.TestCase):

    def test_hook_lists_every_module(self):
        """__init__.py lists every module of the package, once."""
        order = hook_order()
        files = {f[:-3] for f in os.listdir(PKG)
                 if f.endswith(".py") and f != "__init__.py"}
        self.assertEqual(sorted(order), sorted(files))

    def test_hook_imports_only_below(self):
        """Each module imports only modules listed above it in __init__.py."""
        order = hook_order()
        for i, module in enumerate(order):
            with self.subTest(module=module):
                self.assertLessEqual(hook_imports(module), set(order[:i]))

    def test_filter_lists_every_file(self):
        """README's table names every .c file of filter/, once."""
        files = {f[:-2] for f in os.listdir(os.path.join(TOP, "filter"))
                 if f.endswith(".c")}
        self.assertEqual(sorted(filter_order()), sorted(files))

    def test_filter_includes_only_below(self):
        """Each file of filter/ includes only headers of files below it
        (a header without a .c file, such as lock.h, is below everything)."""
        order = filter_order()
        bottom = {f[:-2] for f in os.listdir(os.path.join(TOP, "filter"))
                  if f.endswith(".h")} - set(order)
        for i, name in enumerate(order):
            with self.subTest(file=name):
                self.assertLessEqual(filter_includes(name),
                                     set(order[i + 1:]) | bottom)


if __name__ == "__main__":
    unittest.main()
