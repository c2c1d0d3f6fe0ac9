"""mkdocs hook: the pages generated from the code, so the reference never drifts from it.

- ``index.md`` — README.md, its links made relative to ``docs/``;
- ``methods/<name>.md`` — one page per built-in method: description, docstring, paper, the options with
  their defaults and help (the same ``describe`` as ``cilearn list --options``), the method section with
  every default;
- ``config.md`` — every config section from the schema, and ``cilearn.schema.json`` (``cilearn schema``);
- ``datasets.md``, ``models.md`` — the data and model registries;
- ``api/<module>.md`` — mkdocstrings pages for the public modules.

Everything is sorted and free of timestamps: the same code gives the same pages.  Nav entries written as a
folder (``methods/``, ``api/``) in mkdocs.yml are replaced by the generated pages of that folder.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml
from mkdocs.structure.files import File

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling griffe extension
from griffe_rst import rst_to_markdown  # noqa: E402

from cilearn.data.registry import DATASETS  # noqa: E402
from cilearn.methods import METHODS  # noqa: E402
from cilearn.models.registry import MODELS  # noqa: E402
from cilearn.schema import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# The public modules the API reference documents, in the order data flows through them.
API_MODULES = [
    "cilearn.experiment", "cilearn.results", "cilearn.data", "cilearn.data.adapters", "cilearn.scenarios",
    "cilearn.streams", "cilearn.augment", "cilearn.models",
    "cilearn.registry", "cilearn.methods", "cilearn.methods.parts.components", "cilearn.methods.parts.distill",
    "cilearn.methods.parts.buffers", "cilearn.methods.parts.memory", "cilearn.methods.parts.exemplars",
    "cilearn.methods.parts.exemplars.collage", "cilearn.methods.parts.exemplars.deepinversion",
    "cilearn.methods.parts.classifiers", "cilearn.losses", "cilearn.engine.assembly", "cilearn.engine.train",
    "cilearn.engine.evaluate", "cilearn.metrics", "cilearn.engine.runner", "cilearn.engine.recorder",
    "cilearn.engine.events", "cilearn.loggers", "cilearn.rundir", "cilearn.engine.checkpoints", "cilearn.transfer",
    "cilearn.config", "cilearn.sections", "cilearn.schema", "cilearn.plugins", "cilearn.summary", "cilearn.sweep.spec",
    "cilearn.sweep.execute", "cilearn.log", "cilearn.errors",
]


def markdown(text: str) -> str:
    """reST roles and literals of docstrings (``x``, :class:`x`) as Markdown code spans."""
    return rst_to_markdown(text)


def cell(value) -> str:
    """Text for a table cell: one line, pipes escaped, and <, > outside code spans kept as text (not HTML)."""
    parts = str(value).replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(part if i % 2 else part.replace("<", "&lt;").replace(">", "&gt;") for i, part in enumerate(parts))


def options_table(rows) -> str:
    lines = ["| option | type | default | description |", "| --- | --- | --- | --- |"]
    for name, kind, default, help_text in rows:
        shown = "required" if default == "required" else f"`{json.dumps(default)}`"
        lines.append(f"| `{name}` | {cell(kind)} | {cell(shown)} | {cell(markdown(help_text))} |")
    return "\n".join(lines)


# --- pages ----------------------------------------------------------------------------------------------
def index_page() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")

    def link(match: re.Match) -> str:
        label, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+:|#", target):
            return match.group(0)
        if target.startswith("docs/"):
            return f"[{label}]({target[len('docs/'):]})"
        return f"{label} (`{target}` in the repository)"  # a file of the repository, not of the site

    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", link, text)


def method_pages() -> dict[str, str]:
    import inspect

    from cilearn.schema import build_section, to_dict

    pages = {}
    rows = []
    builtin = {name: c.factory for name, c in METHODS.components().items() if not c.plugin}
    for name, cls in sorted(builtin.items()):
        paper = getattr(cls, "paper", "")  # an optional class attribute: the paper the method implements
        defaults = to_dict(build_section(cls.Options, {"name": name}, "method"))
        parts = [f"# {name}", "", markdown(cls.description), ""]
        if paper:
            parts += [f"**Paper:** {markdown(paper)}", ""]
        doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")  # its own, not Method's
        if doc:
            parts += [markdown(doc), ""]
        parts += ["## Options", "", options_table(describe(cls.Options)), "",
                  "## The method section with every default", "",
                  "```yaml", yaml.safe_dump({"method": defaults}, sort_keys=False).rstrip(), "```", "",
                  f"Source: `{cls.__module__}`, class `{cls.__qualname__}`.", ""]
        pages[f"methods/{name}.md"] = "\n".join(parts)
        rows.append(f"| [{name}]({name}.md) | {cell(markdown(cls.description))} |")
    pages["methods/index.md"] = "\n".join([
        "# Methods", "", "Every built-in method, with its options (as `cilearn list --options` shows them). "
        "How to write one: [Writing a method](../method_guide.md).", "", "| method | idea |", "| --- | --- |",
        *rows, ""])
    return pages


def config_page() -> str:
    from cilearn import config
    from cilearn.streams import STREAM_OPTIONS

    sections = [("data", config.DataConfig), ("scenario", config.ScenarioConfig), ("model", config.ModelConfig),
                ("train", config.TrainConfig), ("output", config.OutputConfig)]
    top = [row for row in describe(config.Config) if row[0] in ("seed", "name")]
    parts = ["# Configuration", "",
             "One YAML file per experiment. Every key is checked before any work starts; the resolved "
             "`config.yaml` of a run lists every default. This page is generated from the same schema.", "",
             "## Editor support", "",
             "[`cilearn.schema.json`](cilearn.schema.json) is the JSON Schema of a config file (`cilearn schema "
             "--out cilearn.schema.json` writes it, with the methods of installed plugins too). With the YAML "
             "language server (VS Code's YAML extension, and others), a first line",
             "", "```yaml", "# yaml-language-server: $schema=cilearn.schema.json", "```", "",
             "gives completion, the help of every key and checks as you type.", "",
             "## Top level", "",
             "| key | meaning |", "| --- | --- |",
             "| `data`, `scenario`, `model`, `train`, `output` | the sections below |",
             "| `method` | one method: a mapping with `name` and its [options](methods/index.md), or just the name |",
             "| `methods` | several methods (a list of such sections): one run each, compared in a summary |",
             "| `seed` / `seeds` | one seed, or several (one run each, mean ± std) |", "",
             options_table(top), ""]
    for name, cls in sections:
        parts += [f"## `{name}`", "", options_table(describe(cls)), ""]
    parts += ["## Domain streams (`scenario.options`)", "",
              "With `scenario.type: domain_incremental`, `scenario.options.stream` picks the stream; its options:", ""]
    for kind, cls in STREAM_OPTIONS.items():
        parts += [f"### `{kind}`", "", options_table([r for r in describe(cls) if r[0] != "stream"]), ""]
    return "\n".join(parts)


def component_options(component) -> str:
    """A registered component's options with their defaults (``required`` where the user must give one)."""
    if component.options is None:
        return "as its package defines them"
    rows = [row for row in describe(component.options) if row[0] != "opener"]  # opener: tests only
    return ", ".join(f"`{name}` (required)" if default == "required" else f"`{name}: {json.dumps(default)}`"
                     for name, _, default, _ in rows) or "none"


def datasets_page() -> str:
    lines = ["# Datasets", "",
             "`data.name` picks one; `data.options` takes the options listed (`cilearn list --options` gives "
             "their types and help). Files are looked up in `data.root`, else `$CILEARN_DATA`, else "
             "`~/.cache/cilearn/data`.", "",
             "| name | what | options (defaults) |", "| --- | --- | --- |"]
    for name, component in sorted(DATASETS.components().items()):
        if not component.plugin:
            lines.append(f"| `{name}` | {cell(component.description)} | {cell(component_options(component))} |")
    return "\n".join(lines + [""])


def models_page() -> str:
    lines = ["# Models", "", "`model.name` picks one; `model.options` overrides the defaults listed "
             "(`cilearn list --options` gives their types and help).", "",
             "| name | what | options (defaults) |", "| --- | --- | --- |"]
    for name, component in sorted(MODELS.components().items()):
        if not component.plugin:
            lines.append(f"| `{name}` | {cell(component.description)} | {cell(component_options(component))} |")
    return "\n".join(lines + [""])


def api_pages() -> dict[str, str]:
    pages = {f"api/{module}.md": f"# `{module}`\n\n::: {module}\n    options:\n      show_root_heading: false\n"
             for module in API_MODULES}
    pages["api/index.md"] = "\n".join(
        ["# API reference", "", "Generated from the docstrings, one page per module, in the order data flows:", ""]
        + [f"- [`{m}`]({m}.md)" for m in API_MODULES] + [""])
    return pages


def generated() -> dict[str, str]:
    from cilearn.config import json_schema

    pages = {"index.md": index_page(), "config.md": config_page(), "datasets.md": datasets_page(),
             "models.md": models_page(), **method_pages(), **api_pages()}
    # The built-in methods only, whatever plugins the building machine has installed: the site is the same.
    schema = json_schema()
    plugins = [name for name in schema["$defs"] for prefix, registry in (("method.", METHODS), ("model.", MODELS),
               ("dataset.", DATASETS)) if name.startswith(prefix) and registry.get(name[len(prefix):]).plugin]
    for name in plugins:
        del schema["$defs"][name]
    pages["cilearn.schema.json"] = json.dumps(schema, indent=2) + "\n"
    return pages


# --- mkdocs events ----------------------------------------------------------------------------------------
def on_config(config):
    """Nav entries written as a folder (``methods/``) list that folder's generated pages."""
    pages = sorted(generated())

    def expand(entries):
        out = []
        for entry in entries:
            if isinstance(entry, dict):
                (title, value), = entry.items()
                if isinstance(value, str) and value.endswith("/"):
                    index = f"{value}index.md"
                    value = [index] + [p for p in pages if p.startswith(value) and p != index]
                elif isinstance(value, list):
                    value = expand(value)
                out.append({title: value})
            else:
                out.append(entry)
        return out

    config["nav"] = expand(config["nav"])
    return config


def on_files(files, config):
    for path, content in generated().items():
        if files.get_file_from_path(path) is None:
            files.append(File.generated(config, path, content=content))
    return files


def _check() -> None:  # python docs/gen_pages.py: print what would be generated (a quick look, no build)
    for path, content in generated().items():
        print(f"--- {path} ({len(content)} characters)")


if __name__ == "__main__":
    _check()

