"""The typed schema of `rerender run`'s flags (`filter/run_flags.py`): the parser is built from it, and the
watch daemon's and the preview page's file rules agree with each flag's declared kind."""

from __future__ import annotations

import re
from pathlib import Path

from rerender.filter.preview.settings import PAGE_OPTIONS, PAGE_VALUES
from rerender.filter.run_options import RunParser, _declare_run_flags, build_run_parser, run_flags
from rerender.filter.watch.settings import SIDECAR_KEYS

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


def test_the_parser_built_from_the_schema_is_the_declared_one():
    declared = RunParser(prog="rerender run")
    _declare_run_flags(declared)  # the declarations applied to argparse directly
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
    for flag in run_flags():
        keys = {_key(s) for s in flag.spellings if s.startswith("--")}
        for key in keys & SIDECAR_KEYS.keys():
            rule = SIDECAR_KEYS[key]
            assert flag.kind not in ("input", "encoder_option"), key
            if flag.kind == "read_path":  # every path it names must be inside the preset's model-dirs
                assert rule.split is not None, key
            if flag.kind == "output":  # only a fixed list of containers
                assert rule.choices is not None, key
        if flag.dest in PAGE_OPTIONS:
            assert flag.kind in ("value", "read_path"), flag.dest
            if flag.kind == "read_path":  # the page may choose only the values that name no file
                assert flag.dest in PAGE_VALUES, flag.dest
