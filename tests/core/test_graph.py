"""Graph validation errors name the level(s) at fault; describe() and draw() show the graph."""

import functools

import pytest
import torch
from torch import nn

from engines import Graph, GraphError, Level

SGD = functools.partial(torch.optim.SGD, lr=0.1)


def level(name, hypergrad=None, optimizer=SGD, **kw):
    return Level(name, nn.Linear(2, 1), optimizer, lambda lv, _: lv.module.weight.sum(), hypergrad=hypergrad, **kw)


def test_duplicate_names_are_refused():
    g = Graph("g")
    g.add(level("a"))
    with pytest.raises(GraphError, match="duplicate level name 'a'"):
        g.add(level("a"))


@pytest.mark.parametrize("bad", ["module", "train", "2fast", "_private", "optimizer"])
def test_names_that_clash_with_betty_attributes_are_refused(bad):
    with pytest.raises(GraphError, match="level name"):
        Graph().add(level(bad))


def test_unknown_level_in_an_edge():
    g = Graph("g")
    g.add(level("a"))
    g.nest("a", "ghost")
    with pytest.raises(GraphError, match=r"unknown level\(s\) \['ghost'\]"):
        g.validate()


def test_cycles_are_reported_with_their_levels():
    g = Graph("g")
    g.add(level("a"), level("b"), level("c"))
    g.nest("a", "b"), g.nest("b", "c"), g.nest("c", "a")
    with pytest.raises(GraphError, match="cycle: a -> b -> c -> a"):
        g.validate()


def test_self_edge():
    with pytest.raises(GraphError, match="to itself"):
        Graph().nest("a", "a")


def test_feeds_without_a_nest_path_back_up():
    g = Graph("g")
    g.add(level("low"), level("high"))
    g.feeds("high", into="low")
    with pytest.raises(GraphError, match="no chain of nest edges leads from 'low' up to 'high'"):
        g.validate()


def test_level_without_optimizer():
    g = Graph("g")
    g.add(level("a", optimizer=None))
    with pytest.raises(GraphError, match="level 'a' has no optimizer"):
        g.validate()


def test_optimizer_over_the_wrong_parameters():
    other = nn.Linear(2, 1)
    g = Graph("g")
    g.add(level("a", optimizer=torch.optim.SGD(other.parameters(), lr=0.1)))
    with pytest.raises(GraphError, match="level 'a': its optimizer must hold exactly"):
        g.validate()


def test_a_parameter_trained_by_two_levels():
    shared = nn.Linear(2, 1)
    g = Graph("g")
    g.add(
        Level("a", shared, SGD, lambda lv, _: lv.module.weight.sum()),
        Level("b", shared, SGD, lambda lv, _: lv.module.weight.sum()),
    )
    with pytest.raises(GraphError, match="levels 'a' and 'b' both train the same parameter"):
        g.validate()


def test_unknown_and_refused_methods():
    g = Graph("g")
    g.add(level("low", hypergrad="magic"), level("high"))
    g.bilevel("low", "high")
    with pytest.raises(GraphError, match="level 'low': unknown hypergrad 'magic'"):
        g.validate()
    g = Graph("g")
    g.add(level("low", hypergrad="reinforce"), level("high"))
    g.bilevel("low", "high")
    with pytest.raises(GraphError, match="'reinforce' refused: .*unimplemented stub"):
        g.validate()


def test_method_options_are_checked_at_construction():
    with pytest.raises(ValueError, match=r"option\(s\) \['iterations'\] are not understood by hypergrad 'cg'"):
        level("a", hypergrad="cg", options={"iterations": 3})


@pytest.mark.parametrize("method", ["betty_cg"])
def test_leaf_only_methods_refuse_a_level_that_owns_paths(method):
    g = Graph("g")
    g.add(level("bottom"), level("middle", hypergrad=method), level("top"))
    g.bilevel("bottom", "middle")  # middle receives hypergradients through bottom...
    g.bilevel("middle", "top")  # ...and top differentiates through middle
    with pytest.raises(GraphError, match=f"level 'middle': hypergrad '{method}' only supports"):
        g.validate()


def test_optimizer_requirements_of_methods():
    g = Graph("g")
    g.add(level("low", hypergrad="sama", optimizer=functools.partial(torch.optim.RMSprop, lr=0.1)), level("high"))
    g.bilevel("low", "high")
    with pytest.raises(GraphError, match="level 'low': hypergrad 'sama' needs one of"):
        g.validate()


def test_exact_truncation_must_fit_the_unroll():
    g = Graph("g")
    g.add(level("low", hypergrad="exact", unroll=3, options={"truncate": 5}), level("high"))
    g.bilevel("low", "high")
    with pytest.raises(GraphError, match="truncate=5 must lie in 1..unroll=3"):
        g.validate()


def three_levels():
    g = Graph("e2e_like")
    g.add(level("gan"), level("seg", hypergrad="cg", options={"maxiter": 5}), level("arch"))
    g.nest("gan", "seg")
    g.nest("seg", "arch")
    g.feeds("arch", into=["gan", "seg"])
    return g


def test_describe_lists_levels_edges_methods_and_paths():
    text = three_levels().describe()
    for piece in [
        "3 level(s)",
        "arch",
        "top level",
        "hypergrad=cg unroll=1 maxiter=5",
        "gan -> seg",
        "arch => gan",
        "arch <- seg[cg, K=1] <- gan[darts, K=1]",
        "arch <- seg[cg, K=1]",
    ]:
        assert piece in text, piece
    assert text.index("arch ") < text.index("seg ") < text.index("gan ")  # top level first


def test_draw_writes_a_png(tmp_path):
    path = three_levels().draw(tmp_path / "graph.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_a_valid_deep_graph_with_a_shared_lower_validates():
    g = three_levels()
    g.add(level("other"))
    g.bilevel("gan", "other")  # gan now has two uppers
    g.validate()
    assert sorted(g.uppers("gan")) == ["other", "seg"]


def test_a_level_attribute_named_like_another_level_is_refused():
    class Holder(Level):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bottom = "my own data"  # would be overwritten by the level named 'bottom'

    g = Graph("g")
    g.add(level("bottom"), Holder("top", nn.Linear(2, 1), SGD, lambda lv, _: lv.module.weight.sum()))
    g.bilevel("bottom", "top")
    with pytest.raises(GraphError, match="level 'top' has an attribute 'bottom' of its own"):
        g.validate()
