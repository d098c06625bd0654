"""The documentation travels with the code and stays true to it.

- No tracked file points at a path outside the repository: a clone has nothing there.
- Every repository path the documents (README.md, docs/*.md) name exists.
- Every test docs/*.md cites exists, and every end-to-end DNS case it cites is a case of
  tests/integration/test_dns_conformance.py; every rule with such a case has a row.
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

from tests.integration import test_dns_conformance as conformance

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFORMANCE = ROOT / "docs" / "dns-conformance.md"

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s)>`'\"]+")
UP_PATH = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.-][\w./-]*)")
MARKDOWN_NAME = re.compile(r"(?<![\w./-])([\w./-]*[\w-]\.md)\b")
# A path into one of the repository's own top-level folders. A match followed by `<` is a
# template (the Consul KV key `bridge/clusters/<cluster_id>`), not a path.
TOP_LEVEL = ("bridge", "tests", "docs", "deploy", "config", "examples", "bench")
# Names shaped like paths that are not: annotation keys the bridge writes on objects, and
# the Consul KV prefix of the clusters' claims.
NOT_PATHS = frozenset({"bridge/consul-service", "bridge/clusters/"})
REPO_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP_LEVEL) + r")/[\w./*-]*)")
CITED_TEST = re.compile(r"`(test_\w+)(?:\[([^\]`]*)\])?`")
DEFINED_TEST = re.compile(r"^\s*(?:async\s+)?def (test_\w+)", re.MULTILINE)
RULE_ROW = re.compile(r"^\| (\d+) \|", re.MULTILINE)


@functools.cache
def tracked() -> tuple[Path, ...]:
    """Every file git tracks in this checkout, and the new ones it does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True)
    return tuple(sorted({ROOT / name for name in listed.stdout.decode().split("\0") if name}))


def texts() -> list[tuple[Path, str]]:
    """The tracked text files (binary ones are skipped) with their contents."""
    out = []
    for path in tracked():
        try:
            out.append((path, path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
            continue
    return out


def where(path: Path, text: str, index: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, index) + 1}"


def test_no_tracked_file_refers_to_the_shared_folder():
    needle = "../" + "shared"  # spelt in two parts so that this file does not match itself
    found = [where(path, text, text.index(needle)) for path, text in texts() if needle in text]
    assert not found, f"a clone has no {needle} folder; refer to the repository's own docs: {found}"


def test_no_relative_path_leaves_the_repository():
    found = []
    for path, text in texts():
        for match in UP_PATH.finditer(text):
            target = (path.parent / match.group(1)).resolve()
            if not target.is_relative_to(ROOT):
                found.append(f"{where(path, text, match.start())}: {match.group(1)}")
    assert not found, f"paths outside the repository: {found}"


def test_no_absolute_path_into_the_folder_beside_the_checkout():
    # The developers' notes sit beside the checkout, in `shared/`; a clone does not have
    # them. (Not every path under the checkout's parent: a clone may live in /tmp, and
    # tests rightly name /tmp paths.)
    outside = f"{ROOT.parent}/shared"
    found = [where(path, text, text.index(outside)) for path, text in texts() if outside in text]
    assert not found, f"paths into {outside}, which a clone does not have: {found}"


def test_every_markdown_file_named_is_in_the_repository():
    names = {path.relative_to(ROOT).as_posix() for path in tracked()}
    found = []
    for path, text in texts():
        text = URL.sub(lambda m: " " * len(m.group()), text)  # links to other sites are fine
        for match in MARKDOWN_NAME.finditer(text):
            name = match.group(1).removeprefix("./")
            beside = (path.parent / name).resolve()
            if beside.is_relative_to(ROOT) and beside.relative_to(ROOT).as_posix() in names:
                continue
            if any(known == name or known.endswith("/" + name) for known in names):
                continue
            found.append(f"{where(path, text, match.start())}: {name}")
    assert not found, f"markdown files that are not in the repository: {found}"


def test_every_repository_path_the_documents_name_exists():
    missing = []
    for doc in DOCUMENTS:
        text = URL.sub(lambda m: " " * len(m.group()), doc.read_text(encoding="utf-8"))
        for match in REPO_PATH.finditer(text):
            if text[match.end():match.end() + 1] == "<":
                continue
            name = match.group(1).rstrip(".,;:")
            if name in NOT_PATHS:
                continue
            exists = any(ROOT.glob(name.rstrip("/"))) if "*" in name else (ROOT / name).exists()
            if not exists:
                missing.append(f"{where(doc, text, match.start())}: {name}")
    assert not missing, f"named in the documents but not in the repository: {missing}"


def test_the_documents_name_the_modules_they_describe():
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = {m.group(1).rstrip(".,;:") for m in REPO_PATH.finditer(architecture)}
    for module in ("bridge/app.py", "bridge/threads.py", "bridge/retry.py", "bridge/catalog/sink.py",
                   "bridge/reconcile/plans.py", "bridge/dns/workers.py", "bridge/ha/elector.py",
                   "bridge/testing/timers.py", "tests/conftest.py"):
        assert module in named, f"docs/architecture.md no longer names {module}"


def defined_tests() -> set[str]:
    return {name for path in (ROOT / "tests").rglob("test_*.py")
            for name in DEFINED_TEST.findall(path.read_text(encoding="utf-8"))}


def test_every_cited_test_exists():
    defined = defined_tests()
    cases = {case.id for case in conformance.CASES}
    missing = []
    for doc in sorted((ROOT / "docs").glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for match in CITED_TEST.finditer(text):
            name, param = match.groups()
            if param is not None and "<" in param:
                continue  # a template: `test_rule[rule<N>-<what>]`
            at = where(doc, text, match.start())
            if name not in defined:
                missing.append(f"{at}: no `def {name}` in tests/")
            elif param is not None and name != "test_rule":
                missing.append(f"{at}: cite {name} without a parameter")
            elif param is not None and param not in cases:
                missing.append(f"{at}: test_dns_conformance.py has no case {param}")
    assert not missing, "cited tests that do not exist:\n" + "\n".join(missing)


def test_every_conformance_rule_has_a_row_citing_its_cases():
    text = CONFORMANCE.read_text(encoding="utf-8")
    rows = {int(number) for number in RULE_ROW.findall(text)}
    rules = {case.rule for case in conformance.CASES}
    assert rules <= rows, f"rules with end-to-end cases but no row: {sorted(rules - rows)}"
    cited = {param for name, param in CITED_TEST.findall(text) if name == "test_rule"}
    uncited = sorted(rule for rule in rules
                     if not any(param.startswith(f"rule{rule}-") for param in cited))
    assert not uncited, f"rules whose row cites none of their cases: {uncited}"
