"""_core.StateSnapshot, what gdcore.torch's C path compares torch's
``optimizer.state`` with before each step (issue 10, section 2): any
modification of the mapping or of a param's dict since the capture is seen,
whether CPython keeps dict version tags (3.11 to 3.13: compared per dict)
or not (every entry is compared); so is a step counter changed in place.
Plain dicts and NumPy counters stand in for torch's state here."""
import numpy as np
import pytest

from gdcore import _core


@pytest.fixture(autouse=True, params=["tags", "walk"])
def comparison(request):
    """Every test with version tags (where CPython has them) and with the
    walk over every entry (what other Pythons get)."""
    previous = _core.use_dict_tags(request.param == "tags")
    yield request.param
    _core.use_dict_tags(previous)


class Key:
    """A param stand-in: hashed by identity, as tensors are."""


def fresh(nparams=5):
    keys = [Key() for _ in range(nparams)]
    mapping = {k: {"step": np.zeros((), np.float32), "exp_avg": np.zeros(3),
                   "exp_avg_sq": np.zeros(3)} for k in keys}
    counters = [mapping[k]["step"] for k in keys]
    return mapping, keys, counters


def mapping_edits(keys):
    return {
        "add a param's dict": lambda m: m.__setitem__(Key(), {}),
        "delete a param's dict": lambda m: m.__delitem__(keys[1]),
        "replace a param's dict": lambda m: m.__setitem__(keys[2], dict(m[keys[2]])),
        "clear": lambda m: m.clear(),
        "pop": lambda m: m.pop(keys[0]),
    }


def dict_edits():
    return {
        "replace a state array": lambda d: d.__setitem__("exp_avg", np.zeros(3)),
        "add an entry": lambda d: d.__setitem__("max_exp_avg_sq", np.zeros(3)),
        "delete an entry": lambda d: d.__delitem__("exp_avg_sq"),
        "pop": lambda d: d.pop("exp_avg"),
        "update": lambda d: d.update(exp_avg=np.zeros(3)),
        "replace the counter": lambda d: d.__setitem__("step", np.zeros((), np.float32)),
        "clear": lambda d: d.clear(),
        "setdefault of a new key": lambda d: d.setdefault("new", 1),
    }


def test_unchanged_state_is_the_same():
    mapping, keys, counters = fresh()
    snap = _core.StateSnapshot.capture(mapping, counters)
    assert snap.same(mapping)
    assert snap.same(mapping)


@pytest.mark.parametrize("edit", sorted(mapping_edits([None] * 3)))
def test_mapping_edits_are_seen(edit):
    mapping, keys, counters = fresh()
    snap = _core.StateSnapshot.capture(mapping, counters)
    mapping_edits(keys)[edit](mapping)
    assert not snap.same(mapping), edit


@pytest.mark.parametrize("edit", sorted(dict_edits()))
@pytest.mark.parametrize("which", [0, 2, 999])
def test_edits_of_one_params_dict_are_seen(edit, which):
    mapping, keys, counters = fresh(1000)
    snap = _core.StateSnapshot.capture(mapping, counters)
    dict_edits()[edit](mapping[keys[which]])
    assert not snap.same(mapping), (edit, which)


def test_setting_the_same_objects_again_changes_nothing():
    mapping, keys, counters = fresh()
    snap = _core.StateSnapshot.capture(mapping, counters)
    mapping[keys[0]] = mapping[keys[0]]
    for name, value in list(mapping[keys[1]].items()):
        mapping[keys[1]][name] = value
    assert snap.same(mapping)


def test_another_mapping_with_equal_contents_is_not_the_same():
    mapping, keys, counters = fresh()
    snap = _core.StateSnapshot.capture(mapping, counters)
    assert not snap.same(dict(mapping))


def test_counters_changed_in_place_are_seen_and_advance_is_expected():
    mapping, keys, counters = fresh()
    snap = _core.StateSnapshot.capture(mapping, counters)
    counters[3][()] = 7
    assert not snap.same(mapping)
    counters[3][()] = 0
    assert snap.same(mapping)
    for c in counters:
        c += 1
    assert not snap.same(mapping)
    snap.advance()
    assert snap.same(mapping)


def test_a_params_dict_of_another_type_is_never_the_same():
    class StateDict(dict):
        pass
    mapping, keys, counters = fresh()
    mapping[keys[1]] = StateDict(mapping[keys[1]])
    snap = _core.StateSnapshot.capture(mapping, counters)
    assert not snap.same(mapping)


def test_not_a_dict_is_not_captured():
    assert _core.StateSnapshot.capture([], []) is None


def test_version_tags_are_used_where_cpython_keeps_them(comparison):
    import sys
    import sysconfig
    has_tags = (3, 11) <= sys.version_info[:2] <= (3, 13) and \
        not sysconfig.get_config_var("Py_GIL_DISABLED")
    _core.use_dict_tags(True)
    assert _core.use_dict_tags(comparison == "tags") == has_tags
