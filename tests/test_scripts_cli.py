"""Every script's documented command lines run end to end, as subprocesses.

A script's docstring (its `--help` text) shows how to run it: the indented lines that start with `python`,
`accelerate launch` or a venv's python. Each script's lines run one after another in a shell, as tests/test_readme.py
runs a README block (tests/doc_snippets.py: a folder that looks like a checkout, tiny stand-ins for the files they
name, training steps cut to 2), with the flags of `SMALLER` appended (argparse keeps the last value: the same code, at
a test's size) and without their `[optional parts]`. They must exit with 0 and leave every output they name. Lines
that cannot run on a test machine are in `NOT_RUN`, with the reason.
"""

import ast
import re

import pytest
from doc_snippets import REPO_ROOT, check_output, checkout_for, outputs_of, run_snippet, tiny


_COMMAND = re.compile(r"^ {4}((?:\.venv[\w-]*/bin/)?python |accelerate launch )")

# Flags appended to the documented command lines that run a script: what makes them run in seconds.
SMALLER = {
    "make_shapes_dataset.py": "--num_samples 8",
    "train_clip.py": "--train_batch_size 8 --max_train_steps 2",
    "train_vae.py": "--train_batch_size 8",
    "train_dalle.py": "--train_batch_size 8",
    "evaluate_shapes.py": "--num_candidates 2 --best_of 1 2 --captions_per_group 1 --num_images 2",
    "lora_demo.py": "--num-images 8 --max-train-steps 2 --train-batch-size 4 --eval-captions 1 --num-candidates 1",
    "generate.py": "--num_candidates 2",
}

# Command lines (by a part of them) that no test runs as documented, and why.
NOT_RUN = {
    "scripts/benchmark_": "a benchmark: minutes to hours at its documented sizes, some in the reference venvs (`make "
    "benchmark`; tests/test_benchmark*.py run them small)",
    "captions_val2014.json": "MS-COCO's captions, 512 candidates for each of 30,000",
    "--reference_dir val2014": "MS-COCO's images, and Inception weights from the network",
    "package_demo_model.py": "needs the run folder of scripts/train_demo.sh (hours; tests/test_evaluate_shapes.py "
    "packages a small one)",
}


def documented_commands(script) -> list[str]:
    """The command lines of a script's docstring: continuation lines joined, `# comments` and `[optional parts]`
    left out."""
    docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
    commands, continued = [], False
    for line in docstring.splitlines():
        if continued:
            commands[-1] += " " + line.strip()
        elif _COMMAND.match(line):
            commands.append(line.strip())
        else:
            continue
        continued = commands[-1].endswith("\\")
        commands[-1] = commands[-1].rstrip("\\").strip()
    return [re.sub(r"\s+", " ", re.sub(r"\[[^\]]*\]|\s#\s.*$", "", command)).strip() for command in commands]


def script_run_by(command: str) -> str:
    return re.search(r"scripts/(\w+\.py)", command).group(1)


def script_params() -> list:
    params = []
    for script in sorted((REPO_ROOT / "scripts").glob("[!_]*.py")):
        commands = documented_commands(script)
        reasons = {reason for command in commands for part, reason in NOT_RUN.items() if part in command}
        runnable = [c for c in commands if not any(part in c for part in NOT_RUN)]
        marks = [pytest.mark.slow]
        if not runnable:
            marks.append(pytest.mark.skip(reason="; ".join(sorted(reasons)) or "no command line documented"))
        params.append(pytest.param(script.name, runnable, id=script.name, marks=marks))
    return params


def test_every_script_documents_a_command_line():
    """A script without usage lines in its docstring (or whose lines this test cannot find) would go untested."""
    undocumented = [p.name for p in (REPO_ROOT / "scripts").glob("[!_]*.py") if not documented_commands(p)]
    assert not undocumented, f"scripts without a documented command line: {undocumented}"
    assert documented_commands(REPO_ROOT / "scripts" / "convert_rudalle.py")[0].endswith(
        "--vqgan_config vqgan.gumbelf8-sber.config.yml --output_dir rudalle-malevich"
    )  # continuation lines joined, the optional `[--ruclip_dir ...]` left out


@pytest.mark.parametrize("script, commands", script_params())
def test_documented_command_lines_run(script, commands, tmp_path, loopback_hub):
    text = tiny("".join(f"{command} {SMALLER.get(script_run_by(command), '')}\n" for command in commands))
    folder = tmp_path / "checkout"
    env, stand_ins = checkout_for(text, folder, loopback_hub)
    result = run_snippet(text, "bash", folder, env)
    assert result.returncode == 0, (
        f"{script}: {text}(stand-ins {stand_ins or 'none'}) failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    )
    for path in outputs_of(text):
        check_output(folder / path)
