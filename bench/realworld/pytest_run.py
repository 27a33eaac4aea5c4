"""pytest running a real package's test suite: numpy's polynomial tests (610 tests, mostly
Python over small arrays), as a developer profiles a slow test run."""

import sys

import pytest

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--pyargs", "numpy.polynomial"]))
