"""The documentation against the code: every setting documented with its true default, every
link resolving, the README short.

Settings are enumerated from the code, not from a list kept here: the names the environment
reader is asked for while ``Settings.from_env`` runs, the names passed as literals to its
reader methods anywhere in the package, and the variables the package reads directly
(``os.environ``, ``os.getenv``, ``dg.EnvVar``). A new setting without a row on
docs/configuration.md fails here, naming the variable.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

import agent_metrics_pipeline
from agent_metrics_pipeline.core.errors import ConfigError
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline_tests.certificates import make_certificates

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(agent_metrics_pipeline.__file__).resolve().parent
README = REPO_ROOT / "README.md"
DOCS_DIR = REPO_ROOT / "docs"
CONFIGURATION = DOCS_DIR / "configuration.md"
TROUBLESHOOTING = DOCS_DIR / "troubleshooting.md"
README_MAX_LINES = 150

# The methods of core.environment.Environment that read one variable each, named by their
# first argument.
READER_METHODS = {
    "text",
    "flag",
    "number",
    "url",
    "date",
    "dates",
    "items",
    "cron",
    "owners",
    "choice",
    "s3_prefix",
}
VARIABLE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")
# Documented defaults: a value in backticks, or this word for a setting without one.
UNSET = "unset"
# Values tried, in order, to show what an "unset" setting fills when it is set.
SAMPLE_VALUES = (
    "sample",
    "1",
    "https://example.invalid/hook",
    "2020-01-01",
    "team:sample",
    "0 0 * * *",
    "AES256",
    "123456789012",
)


# --- Enumerating the settings from the code ---------------------------------------------------


class _RecordingEnviron(Mapping[str, str]):
    """An environment that remembers every variable looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.asked: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.asked.append(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def variables_asked_at_load() -> set[str]:
    """The variables ``Settings.from_env`` looks up, loading the defaults."""
    environ = _RecordingEnviron({})
    Settings.from_env(environ)
    return set(environ.asked)


def _module_strings(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "literal"`` constants, to resolve a variable named by a constant."""
    strings = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                    strings[target.id] = node.value.value
    return strings


def _is_os_environ(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "environ"
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def variables_in_source(source: str) -> tuple[set[str], set[str]]:
    """(names passed to an environment reader method, names read directly) in ``source``.

    Direct reads: ``os.environ[...]`` (loaded, not assigned), ``os.environ.get(...)``,
    ``os.getenv(...)`` and ``EnvVar(...)`` / ``dg.EnvVar(...)`` / ``EnvVar.int(...)``, with a
    literal or a module-level constant. A direct read of anything else cannot be resolved, and
    fails the test rather than pass unseen.
    """
    tree = ast.parse(source)
    constants = _module_strings(tree)
    reader, direct = set(), set()

    def resolve(node: ast.expr, where: str) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name) and node.id in constants:
            return constants[node.id]
        raise AssertionError(
            f"{where} reads an environment variable named by {ast.unparse(node)!r}, which this "
            "test cannot resolve: name it with a literal or a module-level string constant"
        )

    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_os_environ(node.value):
            if isinstance(node.ctx, ast.Load):
                direct.add(resolve(node.slice, f"line {node.lineno}"))
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func, first = node.func, node.args[0]
        where = f"line {node.lineno}"
        if isinstance(func, ast.Attribute):
            if func.attr in READER_METHODS:
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    if VARIABLE_NAME.match(first.value):
                        reader.add(first.value)
            elif func.attr == "get" and _is_os_environ(func.value):
                direct.add(resolve(first, where))
            elif func.attr == "getenv" and isinstance(func.value, ast.Name):
                direct.add(resolve(first, where))
            elif func.attr == "EnvVar" or (
                isinstance(func.value, ast.Name) and func.value.id == "EnvVar"
            ):
                direct.add(resolve(first, where))
        elif isinstance(func, ast.Name) and func.id in ("EnvVar", "getenv"):
            direct.add(resolve(first, where))
    return reader, direct


def variables_in_package() -> tuple[set[str], set[str]]:
    reader, direct = set(), set()
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        try:
            found_reader, found_direct = variables_in_source(path.read_text())
        except AssertionError as error:
            raise AssertionError(f"{path.relative_to(REPO_ROOT)}: {error}") from None
        reader |= found_reader
        direct |= found_direct
    return reader, direct


# --- Reading the documentation ------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def markdown_tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """Every table of ``text``: its header cells and its rows' cells."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        is_table = (
            line.lstrip().startswith("|")
            and index + 1 < len(lines)
            and re.fullmatch(r"\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*", lines[index + 1])
        )
        if not is_table:
            index += 1
            continue
        header = _cells(line)
        rows = []
        index += 2
        while index < len(lines) and lines[index].lstrip().startswith("|"):
            rows.append(_cells(lines[index]))
            index += 1
        yield header, rows


def _backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def documented_settings() -> dict[str, str | None]:
    """Variable → documented default (``None`` for "unset"), from the tables of
    docs/configuration.md whose header is Variable | Default | Meaning."""
    settings: dict[str, str | None] = {}
    for header, rows in markdown_tables(CONFIGURATION.read_text()):
        if [cell.lower() for cell in header] != ["variable", "default", "meaning"]:
            continue
        for row in rows:
            names, default = _backticked(row[0]), row[1]
            assert len(names) == 1, f"docs/configuration.md: one variable per row, got {row[0]!r}"
            name = names[0]
            assert name not in settings, f"docs/configuration.md lists {name} twice"
            if default.lower() == UNSET:
                settings[name] = None
            else:
                match = re.fullmatch(r"`([^`]*)`", default)
                assert match, (
                    f"docs/configuration.md: the default of {name} is {default!r}: write it as a "
                    f"value in backticks, or as '{UNSET}'"
                )
                settings[name] = match.group(1)
    return settings


def documented_variables() -> set[str]:
    """Every variable named in the first column of any table of docs/configuration.md."""
    names = set()
    for _, rows in markdown_tables(CONFIGURATION.read_text()):
        for row in rows:
            names.update(name for name in _backticked(row[0]) if VARIABLE_NAME.match(name))
    return names


# --- Settings -----------------------------------------------------------------------------------


def test_the_enumeration_finds_known_variables():
    """The enumeration itself works: were it broken, finding nothing would document nothing."""
    assert {"CLICKHOUSE_HOST", "S3_BUCKET", "AGENT_METRICS_STATUSES"} <= variables_asked_at_load()
    reader, _ = variables_in_package()
    assert {"CLICKHOUSE_HOST", "S3_PREFIX", "AGENT_METRICS_OBSERVE_CRON"} <= reader
    reader, direct = variables_in_source(
        "import os\nimport dagster as dg\nNAME = 'E'\n"
        "os.environ.get('A'); os.getenv('B'); dg.EnvVar('C'); os.environ['D']; os.environ[NAME]\n"
        "os.environ['WRITTEN'] = '1'\nenv.number('VAR_F', int, minimum=1); env.text(name)\n"
    )
    assert (reader, direct) == ({"VAR_F"}, {"A", "B", "C", "D", "E"})
    assert "CLICKHOUSE_HOST" in documented_settings()


def test_every_setting_the_code_reads_is_documented():
    reader, direct = variables_in_package()
    settings = variables_asked_at_load() | reader
    documented = documented_settings()
    missing = sorted(settings - set(documented))
    assert not missing, (
        f"The code reads {', '.join(missing)}, which docs/configuration.md does not document: "
        "add a row (Variable | Default | Meaning) for each, with its default"
    )
    missing_direct = sorted(direct - documented_variables())
    assert not missing_direct, (
        f"The code reads {', '.join(missing_direct)} from the environment directly; name each "
        "in a table of docs/configuration.md"
    )


def test_every_documented_setting_is_read_by_the_code():
    reader, _ = variables_in_package()
    stale = sorted(set(documented_settings()) - variables_asked_at_load() - reader)
    assert not stale, (
        f"docs/configuration.md documents {', '.join(stale)} as settings, but the code no "
        "longer reads them: remove the rows, or move them to 'Other variables'"
    )


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    """A settings object as dotted field names and leaf values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        flat: dict[str, object] = {}
        for item in dataclasses.fields(value):
            flat |= _flat(getattr(value, item.name), f"{prefix}{item.name}.")
        return flat
    return {prefix.rstrip("."): value}


def _load(environ: dict[str, str]) -> Settings | None:
    try:
        return Settings.from_env(environ)
    except ConfigError:
        return None


@pytest.fixture(scope="module")
def samples_with_context(tmp_path_factory) -> dict[str, tuple[dict[str, str], tuple[str, ...]]]:
    """For settings that apply only alongside others, or name files read at load: the settings
    each is tried with, and its sample values (certificates made here)."""
    certificates = make_certificates(tmp_path_factory.mktemp("certificates"))
    https = {"CLICKHOUSE_SECURE": "true"}
    combined = str(certificates.client_combined)
    return {
        "CLICKHOUSE_CA_CERT": (https, (str(certificates.ca),)),
        "CLICKHOUSE_CLIENT_CERT": (https, (combined,)),
        "CLICKHOUSE_CLIENT_KEY": (
            {**https, "CLICKHOUSE_CLIENT_CERT": combined},
            (str(certificates.client_key),),
        ),
        "CLICKHOUSE_SERVER_NAME": (https, SAMPLE_VALUES),
    }


@pytest.mark.parametrize("name", sorted(documented_settings()))
def test_documented_default_is_the_codes(name: str, samples_with_context):
    """A backticked default must change nothing when set; "unset" must be a setting that, set,
    fills fields that are otherwise empty (None or ()), and changes no field with a value."""
    defaults = Settings.from_env({})
    documented = documented_settings()[name]
    if documented is not None:
        try:
            settings = Settings.from_env({name: documented})
        except ConfigError as error:
            pytest.fail(
                f"docs/configuration.md gives {name} the default {documented!r}, which the code "
                f"refuses: {error}"
            )
        changed = {
            field: (before, _flat(settings)[field])
            for field, before in _flat(defaults).items()
            if _flat(settings)[field] != before
        }
        assert not changed, (
            f"docs/configuration.md gives {name} the default {documented!r}, but the code's "
            f"default differs: setting {name}={documented!r} changes "
            + ", ".join(f"{field} from {old!r} to {new!r}" for field, (old, new) in changed.items())
        )
        return
    context, samples = samples_with_context.get(name, ({}, SAMPLE_VALUES))
    defaults = Settings.from_env(context)
    for sample in samples:
        settings = _load({**context, name: sample})
        if settings is None or settings == defaults:
            continue
        before, after = _flat(defaults), _flat(settings)
        changed = {field: before[field] for field in before if after[field] != before[field]}
        with_a_value = {
            field: value
            for field, value in changed.items()
            if value is not None and value != () and value is not False
        }
        assert not with_a_value and any(
            value is None or value == () for value in changed.values()
        ), (
            f"docs/configuration.md says {name} is {UNSET} by default, but the code gives it a "
            "default: "
            + ", ".join(
                f"{field} = {value!r}" for field, value in (with_a_value or changed).items()
            )
        )
        return
    pytest.fail(
        f"No value of {SAMPLE_VALUES} is accepted for {name} and changes the settings, so its "
        f"'{UNSET}' default cannot be checked: add a sample value to SAMPLE_VALUES"
    )


# --- Links and the README -----------------------------------------------------------------------

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where a link is not a link."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading.strip())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", path.read_text(), flags=re.S | re.M)
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        anchor = github_anchor(match.group(1))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def pages() -> list[Path]:
    return [README, *sorted(DOCS_DIR.glob("*.md"))]


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(_prose(path.read_text()))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:
    ]


@pytest.mark.parametrize("page", pages(), ids=lambda page: page.relative_to(REPO_ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading with the anchor #{anchor})")
    assert not broken, f"{page.relative_to(REPO_ROOT)} links to: " + "; ".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {
        (README.parent / target.partition("#")[0]).resolve() for target in relative_links(README)
    }
    unlinked = [page.name for page in sorted(DOCS_DIR.glob("*.md")) if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link docs/{', docs/'.join(unlinked)}"


def test_the_readme_is_short():
    lines = len(README.read_text().splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines, more than {README_MAX_LINES}: move the detail to a page "
        "under docs/ and link it"
    )


def test_the_link_checker_finds_links_and_anchors():
    """The checks above would pass vacuously on a parser that found nothing."""
    readme_links = relative_links(README)
    assert "docs/configuration.md" in readme_links
    assert "docs/screenshots/partitions.png" in readme_links
    assert github_anchor("Read-only by construction") == "read-only-by-construction"
    assert github_anchor("Proven here: `make image-test`") == "proven-here-make-image-test"
    assert "read-only-by-construction" in anchors(DOCS_DIR / "source-table.md")


# --- Errors -------------------------------------------------------------------------------------


def test_every_error_class_has_a_troubleshooting_entry():
    """Each exception class the package defines is named on docs/troubleshooting.md."""
    classes = set()
    for path in PACKAGE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and re.search(r"(Error|Exception)$", node.name):
                classes.add(node.name)
    assert {"ConfigError", "TransientError", "PermanentError"} <= classes
    text = TROUBLESHOOTING.read_text()
    missing = sorted(name for name in classes if f"`{name}`" not in text)
    assert not missing, (
        f"docs/troubleshooting.md does not name {', '.join(missing)}: add each to its "
        "'Error classes' table, and its messages to the tables above it"
    )
