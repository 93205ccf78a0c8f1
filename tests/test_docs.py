"""The README and docs/ stay true: a short README that links every docs page, links that resolve, and every
command-line option the docs name exists.

Commands are read from fenced code blocks and inline code spans of README.md and docs/*.md (a line ending in a
backslash continues the command; `&&`, `;`, `|` and a `#` comment end it). For each
`build_submission.py SUB --opt ...` (or an inline span opening with a subcommand, e.g. `bundle --python 3.11`)
and each `benchmarks/NAME.py --opt ...`, every `--opt` must appear in that command's --help, run once per
command (a few tenths of a second each, in parallel).
"""

from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_LINES = 250

FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
SPAN = re.compile(r"(?<!`)`([^`]+)`(?!`)")
OPTION = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
SCRIPT = re.compile(r"(?<![\w/.-])(?:\./)?(build_submission\.py|benchmarks/\w+\.py)(?![\w.])")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def doc_files() -> list[Path]:
    return [README] + sorted(DOCS.glob("*.md"))


def _rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def code_pieces(text: str) -> list[str]:
    """The commands of a markdown text: each fenced block's logical lines, then each inline code span."""
    pieces = []
    for block in FENCE.findall(text):
        pieces += re.sub(r"\\[ \t]*\n", " ", block).splitlines()
    prose = FENCE.sub("", text)
    pieces += [" ".join(s.split()) for s in SPAN.findall(prose)]
    return pieces


def _strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def commands(piece: str, subcommands: set[str]) -> list[tuple[str, str | None, str, list[str]]]:
    """(script, subcommand, the command's text, its --options) for each checked command of one piece."""
    out = []
    for part in re.split(r"&&|\|\||;|\|", _strip_comment(piece)):
        part = part.strip()
        m = SCRIPT.search(part)
        if m:
            script, rest = m.group(1), part[m.end():].split()
            sub = None
            if script == "build_submission.py" and rest and not rest[0].startswith("-"):
                sub, rest = rest[0], rest[1:]
            out.append((script, sub, " ".join(part[m.start():].split()), OPTION.findall(" ".join(rest))))
        elif part.split(" ", 1)[0] in subcommands and OPTION.search(part):
            # An inline span such as `bundle --python 3.11` or `dry-run --throughput-file`.
            out.append(("build_submission.py", part.split(" ", 1)[0], part, OPTION.findall(part)))
    return out


def _help(argv: tuple[str, ...]) -> str:
    r = subprocess.run([sys.executable, *argv, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(argv)} --help failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@lru_cache(maxsize=None)
def subcommands() -> frozenset[str]:
    m = re.search(r"\{([\w,-]+)\}", _help(("build_submission.py",)))
    assert m, "build_submission.py --help lists no subcommands"
    return frozenset(m.group(1).split(","))


def help_options(keys: set[tuple[str, ...]]) -> dict[tuple[str, ...], set[str] | None]:
    """Options each command's --help names, all --help runs in parallel; None for a benchmark with no parser."""
    out: dict[tuple[str, ...], set[str] | None] = {}
    todo = []
    for key in sorted(keys):
        if key[0].startswith("benchmarks/") and "argparse" not in (ROOT / key[0]).read_text():
            out[key] = None  # no parser: --help would run the benchmark itself
        else:
            todo.append(key)
    with ThreadPoolExecutor(max_workers=8) as pool:
        for key, text in zip(todo, pool.map(_help, todo)):
            out[key] = set(OPTION.findall(text))
    return out


def option_problems(docs: dict[str, str]) -> list[str]:
    """Every option a doc names that its command does not have, as 'doc: `command`: --option ...'."""
    subs = set(subcommands())
    found = []  # (doc, command text, key, option)
    problems = []
    for name, text in docs.items():
        for piece in code_pieces(text):
            for script, sub, cmd, opts in commands(piece, subs):
                if script.startswith("benchmarks/") and not (ROOT / script).exists():
                    problems.append(f"{name}: `{cmd}`: {script} does not exist")
                    continue
                if script == "build_submission.py" and sub is not None and sub not in subs:
                    problems.append(f"{name}: `{cmd}`: build_submission.py has no subcommand {sub!r} "
                                    f"(it has {', '.join(sorted(subs))})")
                    continue
                key = (script,) if sub is None else (script, sub)
                found += [(name, cmd, key, o) for o in opts if o != "--help"]
    known = help_options({key for _, _, key, _ in found})
    for name, cmd, key, opt in found:
        if known[key] is None:
            problems.append(f"{name}: `{cmd}`: {key[0]} takes no options, the doc names {opt}")
        elif opt not in known[key]:
            problems.append(f"{name}: `{cmd}`: {' '.join(key)} has no option {opt} (see its --help)")
    return problems


def test_readme_is_short_and_links_every_docs_page():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move depth to docs/"
    links = {t.split("#", 1)[0].removeprefix("./") for t in LINK.findall(README.read_text())}
    pages = sorted(_rel(p) for p in DOCS.rglob("*") if p.is_file())
    assert pages, "docs/ holds no pages"
    missing = [p for p in pages if p not in links]
    assert not missing, f"README.md does not link these docs pages: {missing}"


def anchors(md: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    text = FENCE.sub("", md.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#{1,6} +(.+?)#*$", text, re.M)}


def test_relative_links_resolve():
    broken = []
    for doc in doc_files():
        for target in LINK.findall(doc.read_text()):
            path, _, anchor = target.partition("#")
            if re.match(r"^[a-z][a-z0-9+.-]*:", path):
                continue  # a URL
            dest = doc.parent / path if path else doc
            if not dest.exists():
                broken.append(f"{_rel(doc)}: ({target}): no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{_rel(doc)}: ({target}): no heading with that anchor in {path or 'the page'}")
    assert not broken, "links that do not resolve:\n" + "\n".join(broken)


def test_every_documented_option_exists():
    docs = {_rel(p): p.read_text() for p in doc_files()}
    problems = option_problems(docs)
    assert not problems, "options the docs name that the command line does not have:\n" + "\n".join(problems)


def test_the_checker_finds_a_missing_option():
    text = ("Text.\n\n```bash\n.venv/bin/python build_submission.py dry-run --budget-seconds 600 \\\n"
            "    --no-such-option 3   # a comment --not-checked\n```\n\n"
            "Inline: `build_submission.py plan --model PATH`, `bundle --pyhton 3.11`, "
            "`.venv/bin/python benchmarks/ablation.py --limit 2 --bogus`, `build_submission.py frobnicate --x`.\n")
    problems = option_problems({"docs/example.md": text})
    assert problems == [
        "docs/example.md: `build_submission.py frobnicate --x`: build_submission.py has no subcommand 'frobnicate' "
        f"(it has {', '.join(sorted(subcommands()))})",
        "docs/example.md: `build_submission.py dry-run --budget-seconds 600 --no-such-option 3`: "
        "build_submission.py dry-run has no option --no-such-option (see its --help)",
        "docs/example.md: `bundle --pyhton 3.11`: build_submission.py bundle has no option --pyhton (see its --help)",
        "docs/example.md: `benchmarks/ablation.py --limit 2 --bogus`: benchmarks/ablation.py has no option --bogus "
        "(see its --help)",
    ]


@pytest.mark.parametrize("piece, expected", [
    ("bash scripts/setup_cpu.sh && .venv/bin/python build_submission.py dry-run --budget-seconds 600",
     [("build_submission.py", "dry-run", ["--budget-seconds"])]),
    ("kaggle datasets create -p out/bundle/dataset --dir-mode zip   # later: kaggle datasets version --dir-mode zip",
     []),
    (".venv/bin/python build_submission.py pretrain ... --resume", [("build_submission.py", "pretrain", ["--resume"])]),
    (".venv/bin/python benchmarks/gpu_check.py --cpu", [("benchmarks/gpu_check.py", None, ["--cpu"])]),
])
def test_command_parsing(piece, expected):
    got = [(s, sub, opts) for s, sub, _, opts in commands(piece, {"dry-run", "pretrain", "bundle"})]
    assert got == expected
