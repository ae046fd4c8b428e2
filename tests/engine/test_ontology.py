"""The ontology: YAML and inline forms, category ids, and one exact message per broken rule."""

from __future__ import annotations

import pytest

from grounded_sam.engine.ontology import Ontology, OntologyClass, load_ontology
from grounded_sam.errors import InputError

FULL = """\
classes:
  - name: cat
    prompts: [a cat, a kitten]   # several captions, one class
    threshold: 0.35
  - name: dog
    prompts: [a dog]
  - bird
negatives: [a stuffed toy]
"""


def test_yaml_ontology(tmp_path):
    path = tmp_path / "classes.yaml"
    path.write_text(FULL)
    onto = load_ontology(path)
    assert onto.classes == (
        OntologyClass("cat", ("a cat", "a kitten"), 0.35),
        OntologyClass("dog", ("a dog",)),
        OntologyClass("bird", ("bird",)),
    )
    assert onto.negatives == ("a stuffed toy",)
    # one detector pass asks for every caption: class prompts in class order, then negatives
    assert onto.phrases == ["a cat", "a kitten", "a dog", "bird", "a stuffed toy"]
    assert onto.categories() == [
        {"id": 1, "name": "cat", "prompts": ["a cat", "a kitten"]},
        {"id": 2, "name": "dog", "prompts": ["a dog"]},
        {"id": 3, "name": "bird", "prompts": ["bird"]},
    ]
    assert onto.category_of("a kitten") == 1 and onto.category_of("A Dog") == 2
    assert onto.category_of("a stuffed toy") is None and onto.is_negative("a stuffed toy")
    # the canonical form reads back to the same ontology, with the same fingerprint
    again = Ontology.from_dict(onto.to_dict())
    assert again == onto and again.fingerprint() == onto.fingerprint()
    assert load_ontology(str(path)) == onto


def test_inline_and_whitespace():
    onto = load_ontology(" cat ,  big   dog")
    assert onto.names == ["cat", "big dog"] and onto.phrases == ["cat", "big dog"]
    assert onto.fingerprint() != load_ontology("cat,dog").fingerprint()


def test_string_prompts_and_mapping_input():
    onto = load_ontology({"classes": [{"name": "cat", "prompts": "a  cat"}]})
    assert onto.classes[0].prompts == ("a cat",)


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "o.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_ontology(path)
    message = str(e.value)
    assert "\n" not in message
    return message.replace(f"ontology {path}", "ontology o.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "clases:\n  - cat\n",
            "ontology o.yaml: unknown key 'clases' (known keys: classes, negatives); "
            "did you mean 'classes'?",
        ),
        (
            "classes:\n  - name: cat\n    prompt: [a cat]\n",
            "ontology o.yaml: classes[0] ('cat'): unknown key 'prompt' (known keys: name, "
            "prompts, threshold); did you mean 'prompts'?",
        ),
        (
            "classes:\n  - name: cat\n    prompts: []\n",
            "ontology o.yaml: classes[0] ('cat'): 'prompts' is empty; give at least one "
            "caption, e.g. prompts: [a cat]",
        ),
        (
            "classes:\n  - name: cat\n    prompts: [a cat, '  ']\n",
            "ontology o.yaml: classes[0] ('cat'): prompts[1] is empty; give a caption such as "
            "'a cat'",
        ),
        (
            "classes:\n  - cat\n  - dog\n  - name: Cat\n    prompts: [a kitten]\n",
            "ontology o.yaml: duplicate class name 'Cat' (classes[0] and classes[2]); class "
            "names must be unique",
        ),
        (
            "classes:\n  - name: cat\n    prompts: [a pet]\n  - name: dog\n    prompts: [A Pet]\n",
            "ontology o.yaml: prompt 'A Pet' is in both classes 'cat' and 'dog'; each prompt "
            "must belong to one class (prompts are compared ignoring case)",
        ),
        (
            "classes:\n  - name: cat\n    prompts: [a cat, A cat]\n",
            "ontology o.yaml: prompt 'A cat' is twice in class 'cat'; each prompt must belong "
            "to one class (prompts are compared ignoring case)",
        ),
        (
            "classes:\n  - name: cat\n    prompts: [a cat]\nnegatives: [a cat]\n",
            "ontology o.yaml: negative 'a cat' is also a prompt of class 'cat'; a caption is "
            "either a class prompt or a negative",
        ),
        (
            "classes:\n  - name: cat\n    threshold: 1.5\n",
            "ontology o.yaml: classes[0] ('cat'): 'threshold' must be a number in [0, 1], got 1.5",
        ),
        (
            "negatives: [a toy]\n",
            "ontology o.yaml: missing 'classes' (a list of classes, e.g. [cat, dog])",
        ),
        (
            "classes: []\n",
            "ontology o.yaml: 'classes' must be a non-empty list of classes, got an empty list",
        ),
        (
            "classes:\n  - name: cat\n    prompts: [a cat. a dog]\n",
            "ontology o.yaml: classes[0] ('cat'): prompts[0] 'a cat. a dog' contains '.', which "
            "separates captions; give each caption as its own list item",
        ),
        (
            "classes:\n  - prompts: [a cat]\n",
            "ontology o.yaml: classes[0]: 'name' must be a non-empty text, got nothing",
        ),
        (
            "- cat\n- dog\n",
            "ontology o.yaml: expected a mapping with a 'classes' list, got a list",
        ),
        (
            "classes: [cat\n",
            "ontology o.yaml: not valid YAML at line 2, column 1: expected ',' or ']', but got "
            "'<stream end>'",
        ),
        (
            "classes: [cat]\nnegatives: a toy\n",
            "ontology o.yaml: 'negatives' must be a list of captions, got the text 'a toy'",
        ),
    ],
    ids=[
        "unknown-top-key",
        "unknown-class-key",
        "empty-prompts",
        "empty-prompt",
        "duplicate-names",
        "prompt-in-two-classes",
        "prompt-twice",
        "negative-is-prompt",
        "threshold-range",
        "no-classes",
        "empty-classes",
        "dot-in-prompt",
        "no-name",
        "not-a-mapping",
        "bad-yaml",
        "negatives-not-list",
    ],
)
def test_ontology_errors(tmp_path, text, message):
    assert _error(tmp_path, text) == message


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "cat,,dog",
            "--classes 'cat,,dog' has an empty class name between commas; give e.g. 'cat,dog'",
        ),
        (" , ", "--classes ' , ' names no class; give e.g. --classes 'cat,dog' or a YAML file"),
        ("missing.yaml", "ontology file 'missing.yaml' not found"),
        (
            "a cat. a dog.",
            "--classes 'a cat. a dog.': separate classes with commas (e.g. --classes 'cat,dog'); "
            "'.' separates the phrases of segment --text, and a class with several captions "
            "needs a YAML ontology",
        ),
        (
            "cat, dog , cat",
            "ontology --classes 'cat, dog , cat': duplicate class name 'cat' (classes[0] and "
            "classes[2]); class names must be unique",
        ),
    ],
)
def test_inline_errors(spec, message):
    with pytest.raises(InputError) as e:
        load_ontology(spec)
    assert str(e.value) == message


def test_a_labelling_config_pickles_for_distributed_workers(tmp_path):
    """A configuration of names (what the CLI builds) crosses process boundaries intact."""
    import pickle

    from grounded_sam.engine.labeler import CandidateOptions, LabelConfig

    path = tmp_path / "classes.yaml"
    path.write_text(FULL)
    cfg = LabelConfig.create(
        path, detector="grounding-dino", sam="mobile_sam", candidates=CandidateOptions(8)
    )
    again = pickle.loads(pickle.dumps(cfg))
    assert again == cfg and again.identity() == cfg.identity()
