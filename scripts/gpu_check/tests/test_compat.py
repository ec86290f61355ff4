"""The package must run on whatever Python 3 a lent GPU machine has: Python 3.8 syntax, and the
standard library only."""
import ast
import os
import sys
import unittest

PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sources():
    for d, _dirs, files in os.walk(PKG):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(d, f)


class CompatTest(unittest.TestCase):
    def test_python_3_8_syntax(self):
        if sys.version_info < (3, 8):
            self.skipTest("ast.parse(feature_version=) needs Python 3.8 (importing the modules ran on this one)")
        for p in sources():
            with open(p) as fh:
                ast.parse(fh.read(), p, feature_version=(3, 8))

    def test_standard_library_only(self):
        stdlib = getattr(sys, "stdlib_module_names", None)
        if stdlib is None:
            self.skipTest("sys.stdlib_module_names needs Python 3.10")
        for p in sources():
            with open(p) as fh:
                tree = ast.parse(fh.read(), p)
            for node in ast.walk(tree):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                for n in names:
                    top = n.split(".")[0]
                    self.assertTrue(top in stdlib or top == "gpu_check", "%s imports %s" % (p, n))
