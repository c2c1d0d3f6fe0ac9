"""The generated pages of the documentation site (``make docs`` builds the whole site strictly)."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("mkdocs", reason="the docs extra (mkdocs) builds the documentation site")

from helpers import load_script  # noqa: E402

from cilearn.config import TrainConfig, json_schema  # noqa: E402
from cilearn.methods import METHODS  # noqa: E402


@pytest.fixture(scope="module")
def gen_pages():
    return load_script("docs/gen_pages.py")


def test_generated_pages_are_deterministic_and_cover_the_registries(gen_pages):
    pages = gen_pages.generated()
    assert pages == gen_pages.generated()
    for name, cls in ((n, c.factory) for n, c in METHODS.components().items()):
        page = pages[f"methods/{name}.md"]
        assert page.startswith(f"# {name}\n") and cls.description.split()[0] in page
        for option in dataclasses.fields(cls.Options):
            assert f"| `{option.name}` |" in page, (name, option.name)
        if getattr(cls, "paper", ""):
            assert "**Paper:**" in page
    assert all(f"| `{f.name}` |" in pages["config.md"] for f in dataclasses.fields(TrainConfig))
    assert "`path` (required)" in pages["datasets.md"] and "`depth` (required)" in pages["models.md"]
    assert json.loads(pages["cilearn.schema.json"])["$defs"].keys() == json_schema()["$defs"].keys()
    assert "](architecture.md)" in pages["index.md"] and "](docs/" not in pages["index.md"]


def test_docstring_roles_become_code_spans(gen_pages):
    assert gen_pages.markdown("a :class:`~cilearn.data.ImageData` of ``uint8``") == "a `ImageData` of `uint8`"
    assert gen_pages.cell("<root>/<class> `a<b>`") == "&lt;root&gt;/&lt;class&gt; `a<b>`"
