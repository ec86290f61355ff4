"""Helpers for the tests: a temporary folder, and files written into it."""
import json
import os
import shutil
import tempfile
import unittest


class TempDirCase(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="gpu_check_test_")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, name, text):
        p = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as fh:
            fh.write(text)
        return p

    def write_json_lines(self, name, objs):
        return self.write(name, "".join(json.dumps(o) + "\n" for o in objs))
