"""The typed schema of `rerender run`'s flags (`filter/run_flags.py`): the parser is built from it, and the
watch daemon's and the preview page's file rules agree with each flag's declared kind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from rerender.filter.errors import UsageError
from rerender.filter.preview.settings import page_options
from rerender.filter.run_flags import FlagSchema, RunFlag, Use, page_may_set
from rerender.filter.run_options import RunParser, _declare_run_flags, build_run_parser, run_flags
from rerender.filter.watch.output import MUXER_SUFFIX
from rerender.filter.watch.settings_rules import SidecarRules, parse_table, sidecar_rule

FILTER = Path(__file__).resolve().parents[1] / "filter"


def _key(option: str) -> str:
    return option.lstrip("-").replace("-", "_")


def test_no_module_reflects_over_argparse_internals():
    pattern = re.compile(r"_option_string_actions|\._actions\b|_AppendAction|_HelpAction")
    hits = [
        f"{path.relative_to(FILTER)}:{n}"
        for path in sorted(FILTER.rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert hits == []


class _Argparse:
    """The flag declarations applied to an argparse parser directly (its groups too), their `use` dropped."""

    def __init__(self, target) -> None:
        self._target = target

    def add_argument_group(self, title: str) -> _Argparse:
        return _Argparse(self._target.add_argument_group(title))

    def using(self, uses, default=None) -> _Argparse:
        return self

    def add_argument(self, *names, use=None, **arguments) -> None:
        self._target.add_argument(*names, **arguments)


def test_the_parser_built_from_the_schema_is_the_declared_one():
    declared = RunParser(prog="rerender run")
    _declare_run_flags(_Argparse(declared))  # the declarations applied to argparse directly
    built = build_run_parser()
    built.description = None
    assert built.format_help() == declared.format_help()
    argv = [
        "-i",
        "a.mov",
        "-o",
        "b.mov",
        "--model",
        "m",
        "--lora",
        "x:0.5",
        "--lora",
        "y",
        "--no-poisson",
        "-K5",
    ]
    assert vars(built.parse_args(argv)) == vars(declared.parse_args(argv))
    flags = {f.dest: f for f in built.schema}
    assert flags["lora"].repeatable and flags["lora"].takes_value and flags["lora"].kind == "read_path"
    assert flags["poisson"].negatable and "--no-poisson" in flags["poisson"].spellings
    assert not flags["strict"].takes_value
    assert (flags["input"].kind, flags["output"].kind) == ("input", "output")
    assert flags["encoder_option"].kind == "encoder_option"


def test_sidecar_and_page_rules_follow_the_flag_kinds():
    flags = run_flags()
    rules = SidecarRules.of(flags)
    allowed_on_page = page_options(flags)
    for flag in flags:
        for key in set(flag.keys) & rules.allowed.keys():
            rule = rules.allowed[key]
            assert flag.kind not in ("input", "encoder_option"), key
            if flag.kind == "read_path":  # every path it names must be inside the preset's model-dirs
                assert rule.split is not None, key
            if flag.kind == "output":  # only a fixed list of containers
                assert rule.choices is not None, key
        if flag.dest in allowed_on_page:
            assert flag.kind in ("value", "read_path"), flag.dest
    # What was allowed before the schema carried it, still allowed; what was refused, still refused.
    assert {
        "model",
        "lora",
        "flow",
        "control",
        "format",
        "keyframes_dir",
        "crf",
        "prompt",
    } <= rules.allowed.keys()
    assert not {"encoder_option", "allow_pickle", "input_format", "device", "progress", "quiet"} & set(
        rules.allowed
    )
    assert rules.checkpoints == {
        "model",
        "model_config",
        "vae",
        "lora",
        "controlnet",
        "flow",
        "control",
        "engines",
    }


def _flag(*names: str, use: Use, **arguments) -> RunFlag:
    schema = FlagSchema()
    schema.add_argument(*names, use=use, **arguments)
    return schema.flags[0]


@pytest.mark.parametrize("kind", ["input", "encoder_option"])
def test_a_flag_whose_kind_names_files_to_write_is_never_a_sidecar_key_whatever_its_use_says(kind):
    # A future flag declared as sidecar-settable but whose value is the input or an encoder option:
    # the kind alone keeps it out of sidecars (derived, not listed anywhere).
    flag = _flag("--tee-option", use=Use(kind, sidecar=True, page=True))
    assert sidecar_rule(flag) is None and page_options([flag]) == frozenset()
    rules = SidecarRules.of([*run_flags(), flag])
    with pytest.raises(UsageError, match="'tee-option', which a sidecar may not set"):
        parse_table(b'tee-option = "x"', "the sidecar s.toml", sidecar=rules)


def test_an_output_flag_a_sidecar_may_set_takes_only_a_known_container():
    flag = _flag("--container", use=Use("output", sidecar=True, page=True))
    assert sidecar_rule(flag).choices == frozenset(MUXER_SUFFIX)
    assert page_options([flag]) == frozenset()  # never from the page: the server decides where it writes


def test_a_read_path_flag_takes_from_the_page_only_values_that_name_no_file():
    flow = {f.dest: f for f in run_flags()}["flow"]
    assert page_may_set(flow, "dis:fast") and not page_may_set(flow, "raft:/models/raft.pth")
    weights = _flag("--weights", use=Use("read_path", page=True, paths="whole"))
    assert not page_may_set(weights, "anything")  # every value of it is a file
    assert not page_may_set(_flag("--x", use=Use(page=False)), "1")
    with pytest.raises(ValueError, match="paths="):
        Use("read_path")  # a file-reading flag must say where its value names the file


def test_a_sidecar_setting_a_read_path_flag_is_confined_to_the_model_dirs_by_its_kind(tmp_path):
    from rerender.filter.job import build_run_parser, options_from_values
    from rerender.filter.watch.settings import SettingsSource

    models = tmp_path / "models"
    models.mkdir()
    (models / "w.pth").write_bytes(b"x")
    (tmp_path / "other.pth").write_bytes(b"x")
    preset = tmp_path / "preset.toml"
    preset.write_text('model-dirs = ["models"]\n')
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    source = SettingsSource(preset, build_run_parser, options_from_values, inbox=inbox)
    (inbox / "a.mov").write_bytes(b"x")
    (inbox / "a.mov.toml").write_text(f'flow = "raft:{tmp_path / "other.pth"}"\n')
    assert "not a file or folder inside the preset's model-dirs" in source.for_clip(inbox / "a.mov").error
    (inbox / "a.mov.toml").write_text('flow = "raft:w.pth"\n')
    settings = source.for_clip(inbox / "a.mov")
    assert settings.error is None and settings.values["flow"] == f"raft:{models / 'w.pth'}"
    (inbox / "a.mov.toml").write_text('encoder-option = ["x264-params=stats=/tmp/x"]\n')
    assert "only the folder's --preset may set" in source.for_clip(inbox / "a.mov").error
