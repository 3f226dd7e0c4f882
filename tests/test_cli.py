"""One CLI style: help for every option, metavars that say what they are, nnU-Net's single-dash
flags beside consistent long forms, and listing commands that import neither torch nor nnU-Net."""
import argparse
import re
import subprocess
import sys

import pytest

from nnkd.cli import build_parser


def _subparsers(parser, path=("nnkd",)):
    """(command path, parser) for every (sub-)command below ``parser``."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _subparsers(sub, path + (name,))


COMMANDS = list(_subparsers(build_parser()))


def _options(parser):
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction))
            and a.help is not argparse.SUPPRESS]


def test_every_command_is_found():
    names = {" ".join(p[1:]) for p, _ in COMMANDS}
    assert {"predict", "evaluate", "compare", "simulate-dose", "bench speed", "bench quality", "trainers",
            "plugins", "labels import", "synth paired3d", "dataset from-images", "detect", "demo"} <= names


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p[1:]) for p, _ in COMMANDS])
def test_every_option_has_help_and_a_meaningful_metavar(path, parser):
    for action in _options(parser):
        flag = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and action.help.strip(), f"{' '.join(path)} {flag}: no help text"
        if action.nargs == 0:
            continue
        if action.choices is None and action.option_strings:  # choices are shown as {a,b}
            # argparse's default metavar of a short flag is its letter(s): `-i I`, `-chk CHK`
            assert action.metavar is not None or len(action.dest) > 3, \
                f"{' '.join(path)} {flag}: metavar {action.dest.upper()!r} says nothing"


@pytest.mark.parametrize("path,parser", COMMANDS, ids=[" ".join(p[1:]) for p, _ in COMMANDS])
def test_device_flag_in_both_styles(path, parser):
    flags = {s: a for a in parser._actions for s in a.option_strings}
    if "-device" in flags or "--device" in flags:
        assert flags.get("-device") is flags.get("--device"), f"{' '.join(path)}: -device and --device differ"
    for short, long in (("-i", "--input"), ("-o", "--output"), ("-m", "--model"), ("-f", "--folds"),
                        ("-chk", "--checkpoint")):
        if short in flags:
            assert flags.get(long) is flags[short], f"{' '.join(path)}: {short} has no long form {long}"


def test_predict_usage_names_what_each_flag_takes():
    parser = dict((p[1:], s) for p, s in COMMANDS)[("predict",)]
    usage = parser.format_usage()
    assert not re.search(r"-(i I|o O|m M|f F|chk CHK)\b", usage), usage
    assert "-i INPUT_FOLDER" in usage and "-m MODEL_FOLDER" in usage, usage
    args = parser.parse_args(["--input", "a", "-o", "b", "--model", "c", "--folds", "0", "1", "--device", "cpu",
                              "--save-attention", "--save_probabilities", "-chk", "checkpoint_best.pth"])
    assert (args.i, args.o, args.m, args.f, args.device) == ("a", "b", "c", ["0", "1"], "cpu")
    assert args.save_attention and args.save_probabilities and args.chk == "checkpoint_best.pth"
    args = parser.parse_args(["-i", "a", "-o", "b", "-m", "c"])
    assert (args.f, args.chk, args.device, args.save_attention, args.save_probabilities) == \
        (None, "checkpoint_final.pth", "cpu", False, False)


def test_simulate_dose_accepts_both_device_spellings():
    parser = dict((p[1:], s) for p, s in COMMANDS)[("simulate-dose",)]
    for flag in ("-device", "--device"):
        assert parser.parse_args(["501", "--dose", "1e4", "--id", "511", flag, "cuda"]).device == "cuda"


@pytest.mark.parametrize("argv", [["--help"], ["trainers"], ["plugins"]])
def test_listing_commands_import_neither_torch_nor_nnunet(argv):
    code = ("import sys\nfrom nnkd.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'nnunetv2', 'matplotlib', 'scipy') if m in sys.modules)\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out, out[-2000:]
    if argv == ["trainers"]:  # descriptions are read from the sources
        assert "nnKDTrainerREACT" in out and "REACT-KD student" in out and "docs/methods.md" in out
