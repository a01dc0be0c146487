"""Hook patterns (`--hook`, `--gradients`): what they match, in what order, and their refusals."""

import pytest

from saekit.base.errors import SaekitError
from saekit.harvest.hooks import is_pattern, natural_key, resolve

# the hook names of a 12-layer model, in the bridge's order (a few per layer)
NAMES = [
    f"blocks.{layer}.{hook}"
    for layer in range(12)
    for hook in ("hook_resid_pre", "mlp.hook_in", "hook_mlp_out", "hook_resid_mid", "mlp.hook_out")
] + ["ln_final.hook_out", "hook_embed"]


def hooks(*patterns, names=NAMES, strict=True):
    return resolve(patterns, names, option="--hook", among="the hooks of model M", strict=strict)


def test_a_glob_matches_one_part_and_orders_layers_naturally():
    got = hooks("blocks.*.hook_mlp_out")
    assert got == [f"blocks.{layer}.hook_mlp_out" for layer in range(12)]
    assert hooks("blocks.1?.mlp.hook_in") == ["blocks.10.mlp.hook_in", "blocks.11.mlp.hook_in"]
    assert hooks("blocks.[02].hook_resid_mid") == [
        "blocks.0.hook_resid_mid",
        "blocks.2.hook_resid_mid",
    ]
    assert "blocks.0.mlp.hook_out" not in hooks("blocks.*.hook_*"), "* never crosses a dot"


def test_a_range_includes_both_ends():
    assert hooks("blocks.0-3.hook_mlp_out") == [f"blocks.{i}.hook_mlp_out" for i in range(4)]
    assert hooks("blocks.9-11.mlp.hook_in") == [f"blocks.{i}.mlp.hook_in" for i in (9, 10, 11)]
    assert hooks("blocks.5-5.hook_resid_pre") == ["blocks.5.hook_resid_pre"]


def test_patterns_and_names_keep_their_places():
    got = hooks("blocks.7.hook_resid_pre", "blocks.0-11.hook_resid_mid", "blocks.*.hook_mlp_out")
    assert got == [
        "blocks.7.hook_resid_pre",
        *(f"blocks.{i}.hook_resid_mid" for i in range(12)),
        *(f"blocks.{i}.hook_mlp_out" for i in range(12)),
    ]
    assert len(got) == 25, "a CLT store over 12 layers is two options"


def test_names_pass_through_unchecked_unless_strict():
    assert hooks("blocks.0.hook_nothing", strict=False) == ["blocks.0.hook_nothing"]
    with pytest.raises(SaekitError, match=r"is none of the hooks of model M .*did you mean"):
        hooks("blocks.0.hook_mlp_ot")


@pytest.mark.parametrize(
    ("patterns", "fragments"),
    [
        (("blocks.*.hook_mlp_ot",), ["matches none of", "did you mean blocks.*.hook_mlp_out"]),
        (("blocks.0-3.hook_mlp_ot",), ["did you mean blocks.0-3.hook_mlp_out"]),
        (("blocks.0-13.hook_mlp_out",), ["matches nothing for 12-13 of the range 0-13",
                                         "no blocks.12.hook_mlp_out"]),
        (("blocks.4-2.hook_mlp_out",), ["the range 4-2 runs backwards; write 2-4"]),
        (("blocks.*.hook_mlp_out", "blocks.3.hook_mlp_out"),
         ["a hook is given twice: blocks.3.hook_mlp_out",
          "--hook 'blocks.*.hook_mlp_out' and --hook 'blocks.3.hook_mlp_out'"]),
        (("blocks.0-2.hook_mlp_out", "blocks.2-4.hook_mlp_out"),
         ["a hook is given twice: blocks.2.hook_mlp_out"]),
        (("blocks.*.hook_mlp_out", "blocks.*.hook_mlp_out"),
         ["--hook 'blocks.*.hook_mlp_out' twice"]),
        (("blocks.*",), ["matches none of"]),
    ],
)  # fmt: skip
def test_refusals_are_one_line(patterns, fragments):
    with pytest.raises(SaekitError) as error:
        hooks(*patterns)
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_pattern_syntax_and_natural_order():
    assert is_pattern("blocks.*.hook_mlp_out") and is_pattern("blocks.0-3.hook_mlp_out")
    assert not is_pattern("blocks.10.hook_mlp_out") and not is_pattern("blocks.0.mlp.hook_in")
    names = ["blocks.10.x", "blocks.2.x", "blocks.1.x"]
    assert sorted(names, key=natural_key) == ["blocks.1.x", "blocks.2.x", "blocks.10.x"]
