"""Every snippet of README.md runs, and does what it says.

Each fenced Python (```python) or shell (```bash) block of README.md is a test (`test_readme_block`, named after its
section), run in a subprocess as a user would paste it, in a fresh folder that looks like a checkout, with tiny
stand-ins for files no test machine has (tests/doc_snippets.py). Python blocks run as one script, shell blocks under
`bash -e`. Each must exit with 0, and every file or folder it says it writes (`--output_dir X`, `--output-dir X`,
`save_pretrained("X")`, `.save("X")`, `> X`, and the `expect` paths below) must exist and be valid. A Python block
that uses no stand-in also has its shape comments checked: `x = ...  # [1, 8, 8]` asserts `x.shape == (1, 8, 8)`.

Markers, an HTML comment right before a block, `<!-- test: MARKER; MARKER ... -->`:

- `slow`: runs only with `-m slow` (`make test-slow`): a recipe that trains, converts or serves.
- `gpu`: needs a CUDA device; skipped without one.
- `skip REASON`: never run, for the reason given (data or weights from the network, the test suites themselves).
- `drop COMMAND (REASON)`: the shell block's lines that start with COMMAND are left out.
- `serve`: each command is a server: started on a free port (`7860` in the command, and make's `SERVE_ARGS`), it must
  answer http://127.0.0.1:PORT/ with a Gradio page, then is stopped.
- `expect PATH ...`: files the block must leave besides those its command lines name.
- `prints`: the block's standard output must be the ```text block that follows it.

The other tests check the README itself: its links point at files in the repository, and the names it gives
(scripts, `hf-dalle` commands, make targets, extras, the diffusers arguments that do not apply) exist or, for the
last, are refused.
"""

import configparser
import inspect
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from doc_snippets import REPO_ROOT, check_output, checkout_for, outputs_of, run_snippet, serve_until_answered, tiny


README = REPO_ROOT / "README.md"
LANGUAGES = {"python": "python", "bash": "bash", "sh": "bash"}
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*test:\s*(.*?)\s*-->\s*$", re.S)
MARKERS = {"slow", "gpu", "skip", "drop", "serve", "expect", "prints"}


@dataclass
class Block:
    id: str
    language: str
    text: str
    line: int
    markers: dict = field(default_factory=dict)  # name -> argument ("" if none); `drop` -> a list of commands
    expected_stdout: str | None = None


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def readme_blocks(path: Path = README) -> list[Block]:
    """The README's Python and shell blocks, each with its markers and section."""
    text = path.read_text(encoding="utf-8")
    fences = list(_FENCE.finditer(text))
    blocks, counts = [], {}
    for index, fence in enumerate(fences):
        language = LANGUAGES.get(fence.group(1).lower())
        if language is None:
            continue
        before = text[: fence.start()]
        line = before.count("\n") + 1
        headings = re.findall(r"^#{2,3} (.+)$", before, re.M)
        section = slug(headings[-1]) if headings else "top"
        counts[section] = counts.get(section, 0) + 1
        markers = {}
        if marker := _MARKER.search(before[before.rfind("<!--") :] if before.rstrip().endswith("-->") else ""):
            for part in filter(None, (p.strip() for p in marker.group(1).split(";"))):
                name, _, argument = part.partition(" ")
                if name == "drop":
                    markers.setdefault("drop", []).append(re.sub(r"\s*\(.*\)$", "", argument).strip())
                else:
                    markers[name] = argument.strip()
        assert set(markers) <= MARKERS, f"README line {line}: unknown test markers {set(markers) - MARKERS}"
        block = Block(f"{section}-{counts[section]}", language, fence.group(2), line, markers)
        if "prints" in markers:
            following = fences[index + 1] if index + 1 < len(fences) else None
            assert following is not None and following.group(1) == "text", (
                f"README line {line}: `prints` needs a ```text block right after the block"
            )
            block.expected_stdout = following.group(2)
        blocks.append(block)
    return blocks


def block_params() -> list:
    params = []
    for block in readme_blocks():
        marks = []
        if "skip" in block.markers:
            marks.append(pytest.mark.skip(reason=f"README: {block.markers['skip']}"))
        if "gpu" in block.markers:
            marks.append(pytest.mark.skipif(not torch.cuda.is_available(), reason="README: needs a CUDA device"))
        if "slow" in block.markers:
            marks.append(pytest.mark.slow)
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


def runnable_text(block: Block) -> str:
    """The block as it runs: without the commands its `drop` markers name, training steps cut to 2."""
    lines = block.text.splitlines()
    for prefix in block.markers.get("drop", []):
        kept = [line for line in lines if not line.strip().startswith(prefix)]
        assert len(kept) < len(lines), f"README line {block.line}: `drop {prefix}` matches no command of the block"
        lines = kept
    return tiny("\n".join(lines) + "\n")


_SHAPE_COMMENT = re.compile(r"^(\s*)(\w+) = .*#\s*\[([\d,\s]+)\]", re.M)


def with_shape_checks(source: str) -> str:
    """`x = ...  # [1, 8, 8] ...` lines followed by an assertion of that shape."""
    lines = []
    for line in source.splitlines():
        lines.append(line)
        if match := _SHAPE_COMMENT.match(line):
            indent, name, dims = match.groups()
            shape = [int(d) for d in dims.split(",")]
            lines.append(
                f"{indent}assert list({name}.shape) == {shape}, f'README: {name} of shape {shape}, got {{list({name}.shape)}}'"
            )
    return "\n".join(lines) + "\n"


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("block", block_params())
def test_readme_block(block, tmp_path, loopback_hub):
    folder = tmp_path / "checkout"
    text = runnable_text(block)
    env, stand_ins = checkout_for(text, folder, loopback_hub)
    where = f"README line {block.line} ({block.id}), stand-ins {stand_ins or 'none'}"

    if "serve" in block.markers:
        for command in shell_commands(text):
            port = free_port()
            page = serve_until_answered(
                command.replace("7860", str(port)), folder, {**env, "SERVE_ARGS": f"--port {port}"}, port
            )
            assert "gradio" in page.lower(), f"{where}: {command!r} served no Gradio page"
        return

    if block.language == "python" and not stand_ins:
        text = with_shape_checks(text)
    result = run_snippet(text, block.language, folder, env)
    assert result.returncode == 0, f"{where} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"

    if block.expected_stdout is not None:
        assert result.stdout.strip().splitlines() == block.expected_stdout.strip().splitlines(), (
            f"{where}: the README shows another output than the command prints:\n{result.stdout}"
        )
    for path in outputs_of(text) + block.markers.get("expect", "").split():
        check_output(folder / path)


# ------------------------------------------------------------------------------------------ the README's names


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_has_runnable_blocks_and_known_sections():
    """The parser sees the README's snippets (a broken fence would silently hide them) and the sections other
    branches edit are still there."""
    blocks = readme_blocks()
    assert sum(b.language == "python" for b in blocks) >= 10 and sum(b.language == "bash" for b in blocks) >= 10
    quick_start = [b for b in blocks if b.id.startswith("quick-start")]
    assert any("hf_dalle.DEMO_MODEL_DIR" in b.text and not b.markers for b in quick_start)
    assert any("make demo" in b.text and "make test" in b.text for b in quick_start)
    headings = re.findall(r"^## (.+)$", readme_text(), re.M)
    for heading in ("Quick start", "Run ruDALL-E", "Run DALL·E Mini / Mega", "Safety", "Evaluate", "Fine-tune"):
        assert heading in headings


_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", ["README.md", "benchmarks/README.md", "src/hf_dalle/demo_model/README.md"])
def test_links_point_inside_the_repository(document):
    """Every relative link and image resolves to a file of the repository (no `../shared/`, no dead anchor)."""
    path = REPO_ROOT / document
    for target in _LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"https?://", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        assert resolved.is_relative_to(REPO_ROOT), f"{document} links outside the repository: {target}"
        assert resolved.exists(), f"{document} links to a missing file: {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), re.M)
            assert anchor in {slug(h) for h in headings}, f"{document}: no heading for #{anchor} in {resolved.name}"


def test_no_file_outside_the_repository_is_named():
    """The project's files name nothing outside the repository (such as the `../shared/` notes of its authors)."""
    tracked = [
        p
        for folder in ("src", "scripts", "tests", "benchmarks", "configs", ".ci")
        for p in (REPO_ROOT / folder).rglob("*")
        if p.is_file()
        and p.suffix in (".py", ".md", ".sh", ".yaml", ".yml", ".txt", "")
        and "__pycache__" not in p.parts
    ]
    tracked += [REPO_ROOT / name for name in ("README.md", "Makefile", "setup.cfg", "pyproject.toml", "app.py")]
    pattern = re.compile(
        r"\.\./shared/|/work/(?:shared|wt|main)\b|(?<![\w/])(?:DESIGN|NOTES_HF|RUDALLE|DALLE_MEGA)\.md"
    )
    offenders = [
        f"{p.relative_to(REPO_ROOT)}: {m.group(0)}"
        for p in tracked
        if p != Path(__file__)
        for m in pattern.finditer(p.read_text(encoding="utf-8", errors="replace"))
    ]
    assert not offenders, offenders


def test_named_scripts_commands_targets_and_extras_exist():
    text = readme_text()
    for script in set(re.findall(r"scripts/([\w.]+\.(?:py|sh))", text)):
        assert (REPO_ROOT / "scripts" / script).is_file(), f"README names scripts/{script}"
    from hf_dalle.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    for command in set(re.findall(r"hf-dalle ([a-z][\w-]*)", text)):
        assert command in commands, f"README names `hf-dalle {command}`"
    makefile = (REPO_ROOT / "Makefile").read_text()
    for target in set(re.findall(r"^make ([\w-]+)", "\n".join(b.text for b in readme_blocks()), re.M)):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"README runs `make {target}`"
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    extras = set(setup["options.extras_require"])
    for extra in set(re.findall(r"hf_dalle\[(\w+)\]", text)):
        assert extra in extras, f"README installs hf_dalle[{extra}]"


def test_diffusers_arguments_that_do_not_apply_are_refused():
    """The README's table of diffusers arguments that do not apply: none is a pipeline argument, and passing one is a
    TypeError (never silently ignored)."""
    after = readme_text().split("**These diffusers arguments do not apply**", 1)[1]
    section = after[: after.index("\n\n", after.index("|"))]  # up to the end of the table
    names = set()
    for row in re.findall(r"^\s*\| (.+?) \|", section, re.M):
        names.update(re.findall(r"`(\w+)`", row))
    assert {"num_inference_steps", "height", "width", "latents"} <= names

    from hf_dalle import DallePipeline
    from hf_dalle.testing_utils import make_tiny_pipeline

    parameters = inspect.signature(DallePipeline.__call__).parameters
    assert not names & set(parameters), names & set(parameters)
    pipe = make_tiny_pipeline(with_clip=False)
    pipe.set_progress_bar_config(disable=True)
    for name in sorted(names):
        with pytest.raises(TypeError, match=name):
            pipe("a red circle", num_candidates=1, **{name: 1})
    # What the README says does apply is accepted.
    for name in ("negative_prompt", "guidance_scale", "num_images_per_prompt", "generator", "output_type"):
        assert name in parameters
