"""Run the hook's unit tests, one line per test case as it finishes.

    /usr/bin/python3 tests/unit/run.py [PATTERN]

prints "PASS: unit: test_module.Class.test_name" (or FAIL, SKIP), a
failure's traceback indented before its line, and exits 1 if anything
failed.  scripts/check counts the lines into its summary.
"""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


class LineResult(unittest.TestResult):
    """Prints a line for each test when it stops: FAIL if it or any of
    its subtests failed, SKIP if it was skipped, else PASS."""

    def startTest(self, test):
        super().startTest(test)
        self.outcome, self.details = "PASS", []

    def _failed(self, test, err):
        text = self._exc_info_to_string(err, test)
        if getattr(self, "details", None) is None:
            # setUpClass, setUpModule: no test is running.
            self._print("FAIL", test.id(), [text])
        else:
            self.outcome = "FAIL"
            self.details.append(text)

    def addError(self, test, err):
        super().addError(test, err)
        self._failed(test, err)

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._failed(test, err)

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._failed(subtest, err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcome = "SKIP"

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self.outcome = "FAIL"
        self.details.append("unexpected success\n")

    def stopTest(self, test):
        super().stopTest(test)
        self._print(self.outcome, test.id(), self.details)
        self.details = None

    @staticmethod
    def _print(outcome, name, details):
        for text in details:
            sys.stdout.write("".join("    " + l for l in text.splitlines(True)))
        print("%s: unit: %s" % (outcome, name), flush=True)


def main():
    sys.dont_write_bytecode = True
    sys.path.insert(0, HERE)
    pattern = sys.argv[1] if len(sys.argv) > 1 else "test_*.py"
    suite = unittest.defaultTestLoader.discover(HERE, pattern, HERE)
    result = LineResult()
    suite.run(result)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
