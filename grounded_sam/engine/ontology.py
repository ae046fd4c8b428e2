"""The labelling ontology: which classes to label and the captions that find them.

A YAML file::

    classes:
      - name: cat
        prompts: [a cat, a kitten]   # several captions, one class
        threshold: 0.35              # optional: this class's box threshold
      - name: dog                    # prompts default to [name]
      - bird                         # shorthand: name = prompt
    negatives: [a stuffed toy]       # optional: their matches suppress overlapping positives

or an inline list, ``"cat,dog"`` (each class name is its one prompt).

Rules (each broken rule is one :class:`~grounded_sam.errors.InputError` naming where):

- keys other than the ones above are refused (a typo would silently change the labels);
- class names are non-empty strings, unique ignoring case; category ids follow the file's
  order starting at 1;
- prompts are non-empty strings without ``"."`` (the phrase separator: ``"a cat. a dog"`` is
  two captions, so it must be written as two list items), whitespace collapsed; a prompt
  (ignoring case) belongs to one class only and is not also a negative, since a detection is
  labelled with the prompt that matched and must map back to one class;
- ``threshold`` is a number in [0, 1]: boxes of this class are kept when their detector score
  is above it, instead of above the detector's ``box_threshold``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grounded_sam.errors import InputError

__all__ = ["OntologyClass", "Ontology", "load_ontology"]

_TOP_KEYS = ("classes", "negatives")
_CLASS_KEYS = ("name", "prompts", "threshold")


@dataclass(frozen=True)
class OntologyClass:
    """One class: its name (the COCO category name), captions and optional box threshold."""

    name: str
    prompts: tuple[str, ...]
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "prompts": list(self.prompts)}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        return out


@dataclass(frozen=True)
class Ontology:
    """Classes in category-id order (id = position + 1) and negative captions.

    Build with :func:`load_ontology` (file or inline text) or :meth:`from_dict`; the
    constructor checks the same rules.
    """

    classes: tuple[OntologyClass, ...]
    negatives: tuple[str, ...] = ()
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        _check(self.classes, self.negatives, self.source)

    # ------------------------------------------------------------------ views
    @property
    def names(self) -> list[str]:
        """Class names in category-id order."""
        return [c.name for c in self.classes]

    @property
    def phrases(self) -> list[str]:
        """Every caption the detector is asked for in one pass: class prompts in class order,
        then negatives."""
        return [p for c in self.classes for p in c.prompts] + list(self.negatives)

    def category_of(self, prompt: str) -> int | None:
        """Category id (1-based) of a class prompt; ``None`` for a negative or unknown text."""
        key = prompt.casefold()
        for i, c in enumerate(self.classes):
            if any(p.casefold() == key for p in c.prompts):
                return i + 1
        return None

    def is_negative(self, prompt: str) -> bool:
        key = prompt.casefold()
        return any(n.casefold() == key for n in self.negatives)

    def threshold_of(self, category_id: int) -> float | None:
        return self.classes[category_id - 1].threshold

    def categories(self) -> list[dict[str, Any]]:
        """COCO ``categories``: ``{"id", "name", "prompts"}`` in id order."""
        return [
            {"id": i + 1, "name": c.name, "prompts": list(c.prompts)}
            for i, c in enumerate(self.classes)
        ]

    # ------------------------------------------------------------- (de)serialise
    def to_dict(self) -> dict[str, Any]:
        """The canonical form (what :meth:`from_dict` reads back; written to ``label.json``)."""
        out: dict[str, Any] = {"classes": [c.to_dict() for c in self.classes]}
        if self.negatives:
            out["negatives"] = list(self.negatives)
        return out

    def fingerprint(self) -> str:
        """BLAKE2b-128 hex of the canonical form: equal for equal ontologies."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    @classmethod
    def from_dict(cls, data: object, source: str = "<dict>") -> Ontology:
        """Parse the YAML/JSON structure described in the module docstring.

        Raises:
            InputError: one message for the first broken rule, naming ``source`` and where.
        """
        where = f"ontology {source}"
        if not isinstance(data, Mapping):
            raise InputError(
                f"{where}: expected a mapping with a 'classes' list, got {_kind(data)}"
            )
        _no_unknown_keys(data, _TOP_KEYS, where)
        if "classes" not in data:
            raise InputError(f"{where}: missing 'classes' (a list of classes, e.g. [cat, dog])")
        raw = data["classes"]
        if not isinstance(raw, list) or not raw:
            raise InputError(
                f"{where}: 'classes' must be a non-empty list of classes, got {_kind(raw)}"
            )
        classes = [_parse_class(item, i, where) for i, item in enumerate(raw)]
        negatives = data.get("negatives")
        if negatives is None:
            negatives = []
        if not isinstance(negatives, list):
            raise InputError(
                f"{where}: 'negatives' must be a list of captions, got {_kind(negatives)}"
            )
        negs = tuple(_clean_prompt(p, f"{where}: negatives[{j}]") for j, p in enumerate(negatives))
        return cls(tuple(classes), negs, source)

    @classmethod
    def inline(cls, text: str) -> Ontology:
        """``"cat,dog"`` -> two classes whose one prompt is their name."""
        if "." in text:
            raise InputError(
                f"--classes {text!r}: separate classes with commas (e.g. --classes 'cat,dog'); "
                "'.' separates the phrases of segment --text, and a class with several "
                "captions needs a YAML ontology"
            )
        items = [" ".join(t.split()) for t in text.split(",")]
        if not any(items):
            raise InputError(
                f"--classes {text!r} names no class; give e.g. --classes 'cat,dog' or a YAML file"
            )
        if not all(items):
            raise InputError(
                f"--classes {text!r} has an empty class name between commas; give e.g. 'cat,dog'"
            )
        return cls.from_dict({"classes": items}, source=f"--classes {text!r}")


# --------------------------------------------------------------------------- parsing
def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, (list, dict)) and not value:
        return f"an empty {type(value).__name__}"
    return f"a {type(value).__name__}"


def _no_unknown_keys(data: Mapping, known: Sequence[str], where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"{where}: unknown key {key!r} (known keys: {', '.join(known)}){hint}")


def _clean_prompt(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where} must be a caption (text), got {_kind(value)}")
    text = " ".join(value.split())
    if not text:
        raise InputError(f"{where} is empty; give a caption such as 'a cat'")
    if "." in text:
        raise InputError(
            f"{where} {text!r} contains '.', which separates captions; give each caption as "
            "its own list item"
        )
    return text


def _parse_class(item: object, i: int, where: str) -> OntologyClass:
    if isinstance(item, str):
        item = {"name": item}
    if not isinstance(item, Mapping):
        raise InputError(
            f"{where}: classes[{i}] must be a name or a mapping with 'name' and 'prompts', "
            f"got {_kind(item)}"
        )
    name = item.get("name")
    label = f"{where}: classes[{i}]" + (f" ({name!r})" if isinstance(name, str) else "")
    _no_unknown_keys(item, _CLASS_KEYS, label)
    if not isinstance(name, str) or not " ".join(name.split()):
        raise InputError(f"{label}: 'name' must be a non-empty text, got {_kind(name)}")
    name = " ".join(name.split())
    if "prompts" in item:
        prompts = item["prompts"]
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list):
            raise InputError(f"{label}: 'prompts' must be a list of captions, got {_kind(prompts)}")
        if not prompts:
            raise InputError(
                f"{label}: 'prompts' is empty; give at least one caption, e.g. prompts: [a {name}]"
            )
    else:
        prompts = [name]
    cleaned = tuple(_clean_prompt(p, f"{label}: prompts[{j}]") for j, p in enumerate(prompts))
    threshold = item.get("threshold")
    if threshold is not None:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0.0 <= float(threshold) <= 1.0
        ):
            raise InputError(f"{label}: 'threshold' must be a number in [0, 1], got {threshold!r}")
        threshold = float(threshold)
    return OntologyClass(name, cleaned, threshold)


def _check(classes: Sequence[OntologyClass], negatives: Sequence[str], source: str) -> None:
    """The cross-class rules: unique names, each prompt in one place only."""
    where = f"ontology {source}"
    if not classes:
        raise InputError(f"{where}: no classes; give at least one")
    names: dict[str, int] = {}
    owner: dict[str, str] = {}
    for i, c in enumerate(classes):
        key = c.name.casefold()
        if key in names:
            raise InputError(
                f"{where}: duplicate class name {c.name!r} (classes[{names[key]}] and "
                f"classes[{i}]); class names must be unique"
            )
        names[key] = i
        if not c.prompts:
            raise InputError(f"{where}: class {c.name!r} has no prompts")
        for p in c.prompts:
            pk = p.casefold()
            if pk in owner:
                other = owner[pk]
                what = (
                    f"twice in class {c.name!r}"
                    if other == c.name
                    else f"in both classes {other!r} and {c.name!r}"
                )
                raise InputError(
                    f"{where}: prompt {p!r} is {what}; each prompt must belong to one class "
                    "(prompts are compared ignoring case)"
                )
            owner[pk] = c.name
    seen: set[str] = set()
    for n in negatives:
        nk = n.casefold()
        if nk in owner:
            raise InputError(
                f"{where}: negative {n!r} is also a prompt of class {owner[nk]!r}; "
                "a caption is either a class prompt or a negative"
            )
        if nk in seen:
            raise InputError(f"{where}: negative {n!r} is listed twice")
        seen.add(nk)


def load_ontology(spec: str | os.PathLike | Mapping | Ontology) -> Ontology:
    """An :class:`Ontology` from a YAML/JSON file path, an inline ``"cat,dog"`` list, a mapping
    or an ``Ontology``.

    A string is read as a file when it names an existing file or ends in ``.yaml``, ``.yml``
    or ``.json``; otherwise as an inline comma-separated list of class names.

    Raises:
        InputError: a missing or unreadable file, invalid YAML, or a broken rule (see the
            module docstring).
    """
    if isinstance(spec, Ontology):
        return spec
    if isinstance(spec, Mapping):
        return Ontology.from_dict(spec)
    if not isinstance(spec, (str, os.PathLike)):
        raise InputError(
            f"classes must be a YAML file, an inline 'cat,dog' list or a mapping, got {_kind(spec)}"
        )
    text = os.fspath(spec)
    path = Path(text).expanduser()
    is_file = isinstance(spec, os.PathLike) or path.is_file()
    if not is_file and path.suffix.lower() in (".yaml", ".yml", ".json"):
        raise InputError(f"ontology file {text!r} not found")
    if not is_file:
        return Ontology.inline(text)
    import yaml

    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"ontology file {text!r} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"ontology file {text!r} cannot be read: {e}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"ontology {text}: not valid YAML{where}: {problem}") from None
    return Ontology.from_dict(data, source=text)
