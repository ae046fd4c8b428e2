"""Text prompts: parsed once into phrases, with one label policy for every detector.

``"A cat. a dog."`` and ``["A cat", "a dog"]`` both become ``["A cat", "a dog"]``:

- each item is split on ``"."`` (the only separator: a comma does *not* separate phrases,
  so ``"a red, shiny car"`` is one phrase, as in LangSAM and Grounding DINO's captions;
  the ``label`` command's class list is a different format); whitespace is collapsed to
  single spaces; empty phrases, and phrases with no letter or digit (``","``, ``"-"``,
  ``"..."``), are dropped;
- case is kept as written, and a phrase that differs from an earlier one only by case is a
  duplicate (``"a cat. A Cat."`` gives ``["a cat"]``): detectors match text case-insensitively
  (Grounding DINO's BERT and CLIP's tokenizer both lower-case), so two such phrases would be
  the same query;
- every detector labels a box with one of these phrases exactly as returned here, so the same
  prompt gives the same labels whichever detector runs.
"""

from __future__ import annotations

from collections.abc import Sequence

from grounded_sam.errors import InputError

__all__ = ["parse_phrases", "join_phrases"]


def parse_phrases(text: str | Sequence[str]) -> list[str]:
    """Split and clean a text prompt into phrases (see the module docstring).

    ``"."`` separates phrases; commas do not (``"a red, shiny car. a dog"`` gives
    ``["a red, shiny car", "a dog"]``). Phrases without any letter or digit are dropped.

    Idempotent: ``parse_phrases(parse_phrases(t)) == parse_phrases(t)``.

    Raises:
        InputError: ``text`` is not a string or a list/tuple of strings, or no phrase is left
            (an empty prompt, or one of punctuation only such as ``",,,"``).
    """
    if isinstance(text, str):
        items = [text]
    elif isinstance(text, (list, tuple)):
        bad = [t for t in text if not isinstance(t, str)]
        if bad:
            raise InputError(
                f"text must be a string or a list of strings, got a list containing "
                f"{type(bad[0]).__name__} ({bad[0]!r})"
            )
        items = list(text)
    else:
        raise InputError(
            f"text must be a string like 'a cat. a dog.' or a list of strings, "
            f"got {type(text).__name__}"
        )
    phrases: list[str] = []
    seen: set[str] = set()
    for item in items:
        for part in item.split("."):
            phrase = " ".join(part.split())
            key = phrase.casefold()
            if key not in seen and any(c.isalnum() for c in phrase):
                seen.add(key)
                phrases.append(phrase)
    if not phrases:
        raise InputError(
            f"text prompt {text!r} has no phrases; give e.g. 'a cat. a dog.' or ['a cat', 'a dog']"
        )
    return phrases


def join_phrases(phrases: Sequence[str]) -> str:
    """``["a cat", "a dog"]`` -> ``"a cat. a dog."`` (the form Grounding DINO was trained on)."""
    return " ".join(f"{p}." for p in phrases)
