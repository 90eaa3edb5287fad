"""What a config names, built: class paths, nested class_path/init_args, the keys written to."""

from __future__ import annotations

import collections
import datetime

import pytest

from lrfinder_adapters.config_tune import (
    BadConfigError,
    ConfigKeys,
    Found,
    config_kind,
    default_keys,
    import_object,
    instantiate,
)


@pytest.mark.parametrize(
    "path", ["collections:OrderedDict", "collections.OrderedDict"], ids=["colon", "dotted"]
)
def test_import_object_takes_both_spellings(path: str) -> None:
    """'package.module:Name' (the seed's) and 'package.module.Name' (jsonargparse's)."""
    assert import_object(path) is collections.OrderedDict


def test_import_object_reaches_nested_names() -> None:
    """'module:Outer.Inner' follows attributes after the module."""
    assert import_object("datetime:datetime.now") == datetime.datetime.now


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_package_xyz.mod:Name", "cannot import 'no_such_package_xyz.mod'"),
        ("collections:NoSuchName", "'collections' has no 'NoSuchName'"),
        ("justaname", "write it as 'package.module:Name'"),
        ("", "must be 'package.module:Name'"),
    ],
    ids=["module", "name", "no-module", "empty"],
)
def test_import_object_errors_name_the_key(path: str, message: str) -> None:
    """One line naming the config key and why the path does not import."""
    with pytest.raises(BadConfigError, match=message) as caught:
        import_object(path, "model.class_path")
    assert "\n" not in str(caught.value)
    if path:
        assert str(caught.value).startswith(f"model.class_path = {path!r}")


def test_instantiate_builds_nested_class_paths() -> None:
    """class_path / init_args are built innermost first, inside dicts and lists."""
    built = instantiate(
        {
            "plain": 1,
            "items": [
                {"class_path": "collections.Counter", "init_args": {"a": 2}},
                {
                    "class_path": "collections:OrderedDict",
                    "init_args": {"inner": {"class_path": "collections.Counter"}},
                },
            ],
        },
        "trainer",
    )
    assert built["plain"] == 1
    assert built["items"][0] == collections.Counter(a=2)
    assert built["items"][1]["inner"] == collections.Counter()


@pytest.mark.parametrize(
    "class_path", ["fractions.Fraction", "datetime.timedelta"], ids=["python", "builtin"]
)
def test_instantiate_names_arguments_a_class_does_not_take(class_path: str) -> None:
    """An init argument the class does not take: the key and the class named, in one line."""
    with pytest.raises(BadConfigError, match=rf"trainer\.callbacks\[0\]: {class_path}"):
        instantiate(
            [{"class_path": class_path, "init_args": {"fortnights": 2}}], "trainer.callbacks"
        )


def test_instantiate_refuses_keys_beside_class_path() -> None:
    """Arguments go under init_args (jsonargparse's rule), not beside class_path."""
    with pytest.raises(BadConfigError, match="use init_args"):
        instantiate({"class_path": "collections.Counter", "a": 1}, "model")


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        ({"torch_config": {}, "module_config": {}}, "torch"),
        ({"module_config": {}}, "lightning"),
        ({"model": {}, "trainer": {}}, "lightning_cli"),
    ],
    ids=["torch", "lightning", "lightning-cli"],
)
def test_config_kind_from_sections(config: dict[str, object], kind: str) -> None:
    """The kind is read from the sections (a torch factory wins over a module table)."""
    assert config_kind(config) == kind


def test_config_kind_of_nothing() -> None:
    """A config with none of the sections says what it needs."""
    with pytest.raises(BadConfigError, match=r"\[module_config\]"):
        config_kind({"other": {}})


def test_scheduler_keys_go_beside_max_lr() -> None:
    """OneCycleLR's other keys land in max_lr's table; max_lr at the key named."""
    keys = default_keys("lightning")
    assert keys.scheduler_key("max_lr") == "module_config.scheduler.max_lr"
    assert keys.scheduler_key("div_factor") == "module_config.scheduler.div_factor"
    assert default_keys("lightning_cli").scheduler_key("pct_start") == (
        "model.init_args.scheduler.pct_start"
    )
    assert ConfigKeys("b", "lr", None).scheduler_key("max_lr") is None
    assert ConfigKeys("b", "lr", "max_lr").scheduler_key("div_factor") == "div_factor"


def test_found_without_a_suggestion_has_no_one_cycle() -> None:
    """No LR found: no OneCycleLR keys to write."""
    assert Found(batch_size=8).one_cycle() == {}
