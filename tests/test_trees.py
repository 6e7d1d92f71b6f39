"""copy_tree: the fold's copy of an object is a deep copy, whatever the tree holds."""

import copy

from shim.replication.k8sproto import ProtoObject
from shim.replication.trees import copy_tree


def test_copy_tree_is_a_deep_copy_that_keeps_each_node_s_type() -> None:
    shared = {"x": [1, 2]}
    tree = ProtoObject({"a": [shared, shared, {"b": None}], "c": b"raw", "d": 1.5,
                        "e": True, "f": "s", "g": (1, [2])})
    copied = copy_tree(tree)
    assert copied == copy.deepcopy(tree)
    assert type(copied) is ProtoObject and type(copied["a"][2]) is dict
    copied["a"][0]["x"].append(3)
    copied["g"][1].append(3)  # not a tree node: copied by deepcopy all the same
    assert shared == {"x": [1, 2]} and tree["g"] == (1, [2])
    assert copied["a"][1]["x"] == [1, 2]  # each place its own copy
