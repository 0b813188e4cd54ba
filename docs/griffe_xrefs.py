"""Griffe extension: numpy/Sphinx cross-reference roles in docstrings become mkdocs-autorefs links.

The docstrings say ``:func:`legend```, ``:class:`~landcover.grid.Grid```, ``:mod:`landcover.schema``` the
way numpydoc writes them; mkdocstrings renders Markdown and would show the role verbatim. This extension
(``extensions: [docs/griffe_xrefs.py]`` in ``mkdocs.yml``) rewrites every role once the package is loaded:

- the target is resolved in the scope of the documented object, the way Python would see the name there
  (members, the module's imports, parent scopes; ``.name`` means a member of the enclosing class or module);
- a target inside ``landcover`` becomes ``[`title`][landcover.full.path]``, an autorefs link that
  ``mkdocs build --strict`` checks: a role naming a public object that no page renders fails the build;
- a target no page renders (a ``_name`` component, hidden by the ``!^_`` filter, an object without a
  docstring such as a dataclass field, or a module no ``::: module`` block in ``docs/`` shows, such as
  ``landcover.cli``) becomes an *optional* autoref: plain code, no broken link;
- a target outside the project (numpy, xarray, the standard library) stays code: the build is offline,
  so there is no inventory to link it to;
- ``~`` shows only the last component, as in Sphinx.

Names exported lazily by ``landcover/__init__.py`` (its ``_LAZY`` table, invisible to static analysis) are
followed to the module that defines them. Unresolvable ``landcover`` targets are logged as MkDocs warnings:
``--strict`` turns them into a failed build.
"""

from __future__ import annotations

import ast
import functools
import html
import logging
import re
from pathlib import Path
from typing import Any

import griffe

_log = logging.getLogger("mkdocs.plugins.griffe_xrefs")  # counted by mkdocs --strict

ROLE_RE = re.compile(r":(?:py:)?(?P<role>func|class|mod|meth|attr|data|obj|exc|const):`(?P<target>[^`]+)`")
ROOT = "landcover"


def _lookup(collection: Any, path: str) -> Any | None:
    try:
        return collection[path]
    except (KeyError, ValueError, AttributeError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


LAZY: dict[str, str] = {}  # landcover.<name> -> module that defines it, from landcover._LAZY


def _final_path(collection: Any, path: str) -> str | None:
    head, _, rest = path.partition(".")
    name, _, tail = rest.partition(".")
    if head == ROOT and name in LAZY:
        path = f"{LAZY[name]}.{name}" + (f".{tail}" if tail else "")
    obj = _lookup(collection, path)
    if obj is None:
        return None
    if obj.is_alias:
        try:
            return str(obj.final_target.path)
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return str(obj.target_path)
    return str(obj.path)


def resolve(obj: Any, target: str, collection: Any) -> str | None:
    """Full path that ``target`` names in the scope of ``obj``, or None when it cannot be found.

    Parameters
    ----------
    obj : griffe.Object
        The object whose docstring holds the role.
    target : str
        The role's target without ``~``, e.g. ``legend``, ``Grid.from_bounds`` or ``landcover.schema``.
    collection : griffe.ModulesCollection
        The loaded modules, to look up dotted paths.

    Returns
    -------
    str or None
        The canonical path of the target (aliases followed), or None.
    """
    if target.startswith("."):
        scope = obj if obj.is_class or obj.is_module else obj.parent
        while scope is not None:
            found = _final_path(collection, f"{scope.path}{target}")
            if found:
                return found
            scope = scope.parent
        return None
    head, _, rest = target.partition(".")
    if head == ROOT:
        return _final_path(collection, target)
    scope = obj
    try:
        base = scope.resolve(head)
    except griffe.NameResolutionError:
        return None
    path = f"{base}.{rest}" if rest else base
    return _final_path(collection, path) or path


DOCS = Path("docs")  # relative to the MkDocs project root, where mkdocs runs


@functools.cache
def _pages_render() -> tuple[frozenset[str], frozenset[str]]:
    """Identifiers of the ``::: identifier`` blocks in the docs: (with members, module only)."""
    deep, shallow = set(), set()
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text(encoding="utf-8")
        for m in re.finditer(r"^::: (\S+)\n((?:[ \t]+.*\n)*)", text, flags=re.MULTILINE):
            (shallow if re.search(r"members:\s*false", m.group(2)) else deep).add(m.group(1))
    return frozenset(deep), frozenset(shallow)


def _rendered(path: str, collection: Any) -> bool:
    """Whether an API page renders ``path``, i.e. whether it has an anchor to link to.

    It must be public (the ``!^_`` filter), documented (mkdocstrings shows no object without a
    docstring, ``show_if_no_docstring: false``: e.g. a dataclass field or a constant without one)
    and inside a module that some page renders (``::: module`` in ``docs/``).
    """
    if any(part.startswith("_") for part in path.split(".")):
        return False
    deep, shallow = _pages_render()
    if path not in shallow and not any(path == d or path.startswith(d + ".") for d in deep):
        return False
    obj = _lookup(collection, path)
    return obj is not None and (obj.is_module or obj.docstring is not None)


def rewrite(text: str, obj: Any, collection: Any) -> str:
    """Docstring ``text`` with every cross-reference role replaced by Markdown (see the module docstring)."""

    def sub(match: re.Match[str]) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~")
        if "<" in target and target.endswith(">"):  # Sphinx's "title <target>" form
            title, _, target = target[:-1].partition("<")
            title = title.strip()
        else:
            title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        if match["role"] in {"func", "meth"} and not title.endswith(")"):
            title = f"{title}()"
        path = resolve(obj, target, collection)
        if path is None or not path.startswith(f"{ROOT}.") and path != ROOT:
            if path is None and target.startswith((f"{ROOT}.", ".")):
                _log.warning("%s: cross-reference %s cannot be resolved", obj.path, match.group(0))
            return f"`{title}`"
        if not _rendered(path, collection):
            code = f"<code>{html.escape(title)}</code>"
            return f'<autoref optional identifier="{html.escape(path)}">{code}</autoref>'
        return f"[`{title}`][{path}]"

    return ROLE_RE.sub(sub, text)


class CrossReferenceRoles(griffe.Extension):
    """Rewrite ``:func:`` / ``:class:`` / ``:mod:``... roles in every docstring of the loaded package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Walk the whole package once it is loaded (all imports are known then)."""
        if pkg.name != ROOT:
            return
        lazy = pkg.members.get("_LAZY")
        if lazy is not None and not lazy.is_alias and lazy.value is not None:
            LAZY.update(ast.literal_eval(str(lazy.value)))
        seen: set[str] = set()
        stack: list[Any] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.is_alias or obj.path in seen:
                continue
            seen.add(obj.path)
            if obj.docstring is not None and ":" in obj.docstring.value:
                obj.docstring.value = rewrite(obj.docstring.value, obj, loader.modules_collection)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
