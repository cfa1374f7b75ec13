"""The manual keeps up with the code: every config field and metric has an entry, every page is
linked from the README, and no relative link points at a file (or heading) that is not there."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from autoinfer.config import Config
from autoinfer.metrics import METRICS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The pydantic models an annotation names, through Optional, list, Annotated and the like."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> Iterator[str]:
    """Every key a config accepts, as a dotted path: a nested section is walked into
    (`search.max_other_cpu_pct`); a list of models is a key itself and its items' keys follow with
    `[]` (`accuracy.tasks`, `accuracy.tasks[].name`)."""
    for name, field in model.model_fields.items():
        path = prefix + name
        annotation = field.annotation
        nested = _models_in(annotation)
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            yield from config_keys(annotation, path + ".")
        elif nested:
            yield path
            for sub in nested:
                yield from config_keys(sub, path + "[].")
        else:
            yield path


def documented_keys(text: str) -> set[str]:
    """Keys with a row of their own: a table row whose first cell is the key in backticks."""
    return set(re.findall(r"^\|\s*`([^`]+)`\s*\|", text, flags=re.MULTILINE))


def test_config_walk_sees_nested_and_list_fields() -> None:
    keys = list(config_keys())
    assert "search.max_other_cpu_pct" in keys
    assert "model.source" in keys
    assert "accuracy.tasks" in keys and "accuracy.tasks[].data_files" in keys
    assert "constraints[].op" in keys
    assert "search" not in keys  # a section is walked into, not listed itself
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("key", list(config_keys()))
def test_every_config_key_is_in_the_reference(key: str) -> None:
    text = (DOCS / "configuration.md").read_text()
    assert key in documented_keys(text), (
        f"config key {key!r} (autoinfer/config.py) has no row in docs/configuration.md; "
        f"add `| `{key}` | type | default | meaning |` to its section's table"
    )


def test_the_reference_lists_no_key_the_config_lacks() -> None:
    text = (DOCS / "configuration.md").read_text()
    stale = documented_keys(text) - set(config_keys())
    assert not stale, f"docs/configuration.md documents keys autoinfer/config.py does not have: {sorted(stale)}"


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_in_the_metrics_page(name: str) -> None:
    text = (DOCS / "metrics.md").read_text()
    assert f"`{name}`" in text, f"metric {name!r} (autoinfer/metrics.py) is not described in docs/metrics.md"


def test_there_are_docs_pages() -> None:
    names = {p.name for p in PAGES}
    for expected in ("concepts.md", "configuration.md", "metrics.md", "engines.md", "drafts.md",
                     "scaling-out.md", "deploying.md", "benchmarks.md"):  # fmt: skip
        assert expected in names


# [text](target) and ![alt](target); the target up to whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())  # links inside code blocks are code, not links
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE) and not target.startswith("//")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.MULTILINE):
        s = slug(heading)
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def test_slug_matches_github() -> None:
    assert slug("Qwen2.5-Coder-1.5B, llama.cpp, 66 points") == "qwen25-coder-15b-llamacpp-66-points"
    assert slug("`auto` (the default)") == "auto-the-default"
    assert slug("autoinfer serve") == "autoinfer-serve"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_docs_page_is_linked_from_the_readme(page: Path) -> None:
    targets = {t.split("#")[0] for t in links(README) if _relative(t)}
    assert f"docs/{page.name}" in targets, f"README.md does not link docs/{page.name}"


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files(page: Path) -> None:
    broken = []
    for target in links(page):
        if not _relative(target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: {broken}"


# --- Figures and their results files ------------------------------------------------------------
# Every measured figure the README states sits in a paragraph, list item or table row that names the
# file in scripts/results/ it comes from, and the file holds it (to the digits the README gives).

RESULTS = ROOT / "scripts" / "results"
# A figure: a number that is not part of a name, version, date or range of hyphenated words
# (b16, cpu:2, Q4_0, SmolLM2-135M, AVX-512, torch 2.13.0, 2026-12-03 are not figures).
FIGURE = re.compile(r"(?<![\w.:/\-])(\d+(?:\.\d+)?)(?![\w:/]|[.\-]\w)")
# What makes a number a measurement in the README's prose: its unit.
# (× only right after the number: 7.3× is a ratio, "batch 16 × 1 thread" is not).
UNIT = re.compile(r"(×)|\s?(tok/s|tok/J|ms\b|s\b|min\b|h\b|%|GB\b|MB\b|GiB\b)")
RATIO = "×"


def _results_file(name: str) -> Path | None:
    path = RESULTS / name
    return path if path.is_file() else None


def cited_files(text: str) -> list[Path]:
    """Results files a block names: `scripts/results/X`, or in a table a bare `X.txt` that is one,
    with `.json` (and the like) standing for the same name's other file."""
    names: list[str] = []
    for match in re.finditer(r"scripts/results/([\w.\-]+)|`([\w.\-]*\.(?:txt|csv|json|png))`", text):
        path, bare = match.groups()
        if path:
            names.append(path.rstrip("."))
        elif bare.startswith("."):  # `.json` beside `x.txt`: x.json
            names += [Path(n).stem + bare for n in names if not n.endswith(bare)]
        elif _results_file(bare):
            names.append(bare)
    return [p for n in dict.fromkeys(names) if (p := _results_file(n))]


def blocks(text: str) -> list[tuple[int, str, str]]:
    """(first line number, kind, text) of each paragraph, list item, table row and fenced block."""
    out: list[tuple[int, str, str]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            out.append((i + 1, "code", "\n".join(lines[i + 1 : end])))
            i = end + 1
        elif line.startswith("|"):
            out.append((i + 1, "row", line))
            i += 1
        elif not line.strip() or line.startswith("#"):
            i += 1
        else:
            j = i + 1
            while j < len(lines) and lines[j].strip() and not re.match(r"(```|\||#|- )", lines[j]):
                j += 1
            out.append((i + 1, "prose", "\n".join(lines[i:j])))
            i = j
    return out


def _prose(text: str) -> str:
    """The block without what is not a stated figure: code spans, link targets, bold markers."""
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return text.replace("**", "")


def _figures(prose: str) -> list[tuple[str, str, int, int]]:
    """(number as written, unit or '', start, end) of every figure in prose."""
    out = []
    for m in FIGURE.finditer(prose):
        u = UNIT.match(prose, m.end())
        out.append((m[1], (u[1] or u[2]) if u else "", m.start(), u.end() if u else m.end()))
    return out


def figures(text: str) -> list[tuple[str, str]]:
    """(number as written, unit or '') of every figure in a block."""
    return [(written, unit) for written, unit, _, _ in _figures(_prose(text))]


def file_values(path: Path) -> dict[str, list[float]]:
    """Every number in a results file (''), its durations in minutes ('min': '8.9 min', '154 s',
    '55m10.230s', '0:42:55') and its sizes by unit ('GB', 'MB', 'GiB')."""
    text = path.read_text(errors="replace")
    number = r"(\d+(?:\.\d+)?)"
    values = {"": [float(x) for x in re.findall(number, text)]}
    minutes = [float(x) for x in re.findall(number + r"\s?min\b", text)]
    minutes += [float(x) * 60 for x in re.findall(number + r"\s?h\b", text)]
    minutes += [float(s) / 60 for s in re.findall(number + r"\s?s\b", text)]
    minutes += [int(m) + float(s) / 60 for m, s in re.findall(r"\b(\d+)m" + number + r"s\b", text)]
    minutes += [int(h) * 60 + int(m) + int(s) / 60 for h, m, s in re.findall(r"\b(\d+):(\d\d):(\d\d)\b", text)]
    values["min"] = minutes
    for unit in ("GB", "MB", "GiB"):
        values[unit] = [float(x) for x in re.findall(number + r"\s?" + unit + r"\b", text)]
    return values


def rounds_to(written: str, value: float) -> bool:
    """A figure written with d decimals stands for every value that rounds to it (5.63 for 5.634,
    0.99 for 0.988, 1.80 for 1.8, 14 for 13.95)."""
    decimals = len(written.partition(".")[2])
    return abs(value - float(written)) <= 0.5 * 10**-decimals + 1e-9


def unbacked_figures(text: str, files: list[Path]) -> list[str]:
    """The block's figures that none of its files holds. Durations in minutes or hours must be
    durations in the file and sizes sizes; a ratio followed by its operands ('4.3× the next engine,
    62.3 against 14.4 tok/s') must be their quotient, and they must be in the file."""
    values: dict[str, list[float]] = {}
    for path in files:
        for kind, found in file_values(path).items():
            values.setdefault(kind, []).extend(found)
    prose = _prose(text)
    stated = _figures(prose)
    missing = []
    for i, (written, unit, _, _) in enumerate(stated):
        pair = stated[i + 1 : i + 3]
        if unit == RATIO and len(pair) == 2 and prose[pair[0][3] : pair[1][2]].strip() == "against":
            a, b = (float(w) for w, _, _, _ in pair)  # '4.3×, 62.3 against 14.4': the quotient, nothing else
            if b and rounds_to(written, a / b):
                continue
        else:
            kind = "min" if unit in ("min", "h") else unit if unit in ("GB", "MB", "GiB") else ""
            scale = 60 if unit == "h" else 1
            if any(rounds_to(written, v / scale) for v in values.get(kind, [])):
                continue
        missing.append(written + (f" {unit}" if unit else ""))
    return missing


def test_figures_and_blocks_are_read_as_meant() -> None:
    text = "SmolLM2-135M Q4_0 b16 on cpu:2, 2-core AVX-512, torch 2.13.0 (2026-12-03): **7.3×** [6.7, 7.8]"
    text += ", 47 %, 2.6 min"
    assert figures(text) == [("7.3", "×"), ("6.7", ""), ("7.8", ""), ("47", "%"), ("2.6", "min")]
    assert figures("4 of 100 items, `bench 5.5 s` and [x](a.md#qwen25-15b)") == [("4", ""), ("100", "")]
    assert figures("bf16 × batch 16 × 1 thread") == [("16", ""), ("1", "")]
    assert rounds_to("0.99", 0.988) and rounds_to("1.80", 1.8) and not rounds_to("5.63", 5.64)
    assert unbacked_figures("4.3× (62.3 against 14.4 tok/s)", []) == ["62.3", "14.4 tok/s"]
    assert unbacked_figures("4.3× (14.4 against 62.3)", []) == ["4.3 ×", "14.4", "62.3"]
    assert cited_files("`bench_overhead_vllm.txt`, `.json`") == [
        RESULTS / "bench_overhead_vllm.txt",
        RESULTS / "bench_overhead_vllm.json",
    ]
    kinds = [kind for _, kind, _ in blocks("a\nb\n\n- c\n- d\n\n| r |\n\n```\nx\n```\n")]
    assert kinds == ["prose", "prose", "prose", "row", "code"]


def _readme_blocks() -> list[tuple[int, str, str, list[Path]]]:
    """README blocks with the files they cite; a fenced block quotes the files its lead-in names."""
    out: list[tuple[int, str, str, list[Path]]] = []
    for line, kind, text in blocks(README.read_text()):
        files = cited_files(text) if kind != "code" else (out[-1][3] if out and out[-1][1] == "prose" else [])
        out.append((line, kind, text, files))
    return out


CITING = [b for b in _readme_blocks() if b[3]]


@pytest.mark.parametrize(("line", "kind", "text", "files"), CITING, ids=[f"README.md:{b[0]}" for b in CITING])
def test_readme_figures_match_the_results_files_they_cite(line: int, kind: str, text: str, files: list[Path]) -> None:
    names = ", ".join(p.name for p in files)
    if kind == "code":  # quoted output: every line is in the file as printed (commands aside)
        quoted = "\n".join(p.read_text(errors="replace") for p in files)
        lines = [s for s in (raw.strip() for raw in text.split("\n")) if s and not s.startswith("$ ")]
        stale = [s for s in lines if s not in quoted]
        assert not stale, f"README.md:{line}: quoted output not in {names}: {stale[:3]}"
    else:
        missing = unbacked_figures(text, files)
        assert not missing, (
            f"README.md:{line}: figures not in {names} (to the digits given): {missing}; correct them from "
            "the file, cite the file that holds them next to them, or follow a derived ratio with its two "
            "operands ('4.3×, 62.3 against 14.4')"
        )


def test_every_readme_measurement_cites_a_results_file() -> None:
    uncited = [
        f"README.md:{line}: {written} {unit}"
        for line, kind, text, files in _readme_blocks()
        if kind != "code" and not files
        for written, unit in figures(text)
        if unit
    ]
    assert not uncited, f"measured figures with no results file named beside them: {uncited}"


def _named_results(text: str) -> Iterator[str]:
    yield from re.findall(r"scripts/results/([\w.\-{},*]+\w)", text)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_named_results_files_exist(page: Path) -> None:
    missing = []
    for name in _named_results(page.read_text()):
        group = re.search(r"\{([^}]*)\}", name)
        names = [name[: group.start()] + g + name[group.end() :] for g in group[1].split(",")] if group else [name]
        missing += [n for n in names if not list(RESULTS.glob(n))]
    assert not missing, f"{page.relative_to(ROOT)} names results files that are not there: {missing}"


def _results_table_rows() -> list[str]:
    text = (DOCS / "benchmarks.md").read_text()
    table = text.split("## Every results file", 1)[1].split("\n## ", 1)[0]
    return [line for line in table.split("\n") if line.startswith("| `")]


def test_the_results_table_lists_every_results_file_and_no_other() -> None:
    listed: set[Path] = set()
    for row in _results_table_rows():
        cell = row.split("|")[1]
        named = re.findall(r"`([^`]+)`", cell)
        stems = [Path(n).stem for n in named if not n.startswith(".")]
        for n in named:
            matches = [RESULTS / (s + n) for s in stems] if n.startswith(".") else list(RESULTS.glob(n))
            assert matches and all(m.is_file() for m in matches), f"docs/benchmarks.md lists {n!r}: no such file"
            listed.update(matches)
    unlisted = sorted(p.name for p in RESULTS.iterdir() if p.is_file() and p not in listed)
    assert not unlisted, f"results files with no row in docs/benchmarks.md's table: {unlisted}"
