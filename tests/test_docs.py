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
