"""The suite's own schedule: the files `make test` hands out first exist, and the Makefile keeps xdist from
reordering them."""
from pathlib import Path

from conftest import LONGEST_FIRST

TESTS = Path(__file__).parent


def test_the_longest_files_handed_out_first_exist_and_keep_their_order():
    assert len(set(LONGEST_FIRST)) == len(LONGEST_FIRST)
    assert [name for name in LONGEST_FIRST if not (TESTS / name).is_file()] == []
    (line,) = [line for line in (TESTS.parent / "Makefile").read_text().splitlines() if "-m pytest -q -n auto" in line]
    assert "--dist loadfile --no-loadscope-reorder" in line


def test_collection_puts_them_first(request):
    """This session's own collection, reordered by tests/conftest.py's hook: each listed file's tests come
    before every unlisted file's, in the listed order."""
    names = [item.path.name for item in request.session.items]
    listed = [name for name in dict.fromkeys(names) if name in LONGEST_FIRST]
    assert listed == [name for name in LONGEST_FIRST if name in listed]
    if listed:
        last_listed = max(i for i, name in enumerate(names) if name in LONGEST_FIRST)
        assert all(name in LONGEST_FIRST for name in names[:last_listed + 1])
