"""File-tree comparisons shared by the Python suites (tests/python, tests/integration, tests/gpu)."""
import filecmp
import pathlib


def assert_same_tree(a, b):
    """Asserts that directories a and b hold the same files (relative paths), byte for byte."""
    a, b = pathlib.Path(a), pathlib.Path(b)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b, f"{a} and {b} hold different files"
    for f in files_a:
        assert filecmp.cmp(a / f, b / f, shallow=False), f"{f} differs between {a} and {b}"
