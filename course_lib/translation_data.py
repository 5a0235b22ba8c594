"""Data for sequence-to-sequence models: dates to normalise, sentence pairs to translate (chapter 5).

Chapters 1 to 4 modelled one sequence; chapter 5 maps a source sequence to a target
sequence. Two tasks, one offline and one online:

- **Dates** (offline, the default). An English date written one of many ways becomes
  its ISO 8601 form ``YYYY-MM-DD``. The task is small enough to train on a CPU in minutes,
  and an alignment is there to be found: the day digits of the target come from the day
  word of the source, wherever the format put it, so attention maps show it::

      >>> make_date_pairs(3, seed=0)
      [('FRIDAY, FEBRUARY 15, 2019', '2019-02-15'), ("jun 18 '25", '2025-06-18'), ('07.04.1957', '1957-04-07')]

- **English-French sentence pairs** (online). ``download`` fetches a file once, checks its
  checksum (SHA-256, or the SHA-1 a file was published with) and caches it;
  ``load_sentence_pairs`` reads the tab-separated ``English<TAB>French<TAB>attribution``
  lines of the widely used Tatoeba-derived ``fra-eng`` files (a ``.txt``, or the ``.zip`` that holds ``fra.txt``).

Conventions of the date task (each format is in ``DATE_FORMATS``):

- dates run from 1950-01-01 to 2049-12-31; a two-digit year ``yy`` means 20yy if
  yy < 50 and 19yy otherwise (the rule of RFC 5322, section 4.3), so every source has
  exactly one reading;
- numeric dates with **slashes are month first** (US: ``3/14/1999``) and numeric dates
  with **dots are day first** (``14.03.1999``); the separator decides, so the model must
  read it;
- month names may be full or abbreviated, in any of three cases (as written, lower,
  upper); day numbers may be digits, ordinals (``3rd``) or ordinal words (``third``);
  weekdays, when written, are the true ones.

``date_splits`` gives fixed train / valid / test sets (``SPLIT_SIZES``) in which no date
(as its ISO target) appears in two splits, so the test measures dates never seen.

Characters are the tokens: ``CharVocab`` numbers the characters after four specials,
``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3. ``collate`` pads a batch: sources
and decoder inputs with ``<pad>`` (0), decoder targets with -1, the course's "ignore this
position" for the loss (``course_lib.train``'s contract), so padding never counts.

Scope: the download uses the standard library only (``urllib``), no resuming of broken
downloads, no proxies beyond what ``urllib`` picks up from the environment. No default URL
or checksum is built in: the chapter's notebook passes both, so the file it was written
for is the file it gets; this module is tested offline, against a local HTTP server.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import random
import re
import socket
import string
import tempfile
import unicodedata
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import torch

__all__ = ["DATE_FORMATS", "DATE_SOURCE_CHARS", "FIRST_DATE", "LAST_DATE", "SPLIT_SIZES", "SPLITS",
           "ordinal_suffix", "ordinal_word", "two_digit_year",
           "format_date", "make_date_pairs", "date_splits", "CharVocab", "date_vocabs", "collate",
           "DownloadError", "ChecksumError", "checksum_of", "download", "load_sentence_pairs"]

FIRST_DATE, LAST_DATE = dt.date(1950, 1, 1), dt.date(2049, 12, 31)  # every two-digit year has one reading
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 20_000, "valid": 1_000, "test": 1_000}  # pairs per split, one date each

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]  # date.weekday() order
_ONES = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
_TEENS = ["tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth", "sixteenth", "seventeenth",
          "eighteenth", "nineteenth"]


# ---------------------------------------------------------------------------- dates
def ordinal_suffix(day: int) -> str:
    """1 -> "1st", 2 -> "2nd", 3 -> "3rd", 4 -> "4th", 11 -> "11th", 22 -> "22nd"."""
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def ordinal_word(day: int) -> str:
    """The ordinal of a day of the month in words: 3 -> "third", 21 -> "twenty-first", 30 -> "thirtieth"."""
    if not 1 <= day <= 31:
        raise ValueError(f"expected a day of the month in 1..31, got {day!r}")
    if day < 10:
        return _ONES[day]
    if day < 20:
        return _TEENS[day - 10]
    tens, ones = divmod(day, 10)
    prefix = {2: "twenty", 3: "thirty"}[tens]
    return f"{prefix}-{_ONES[ones]}" if ones else {2: "twentieth", 3: "thirtieth"}[tens]


def two_digit_year(yy: int) -> int:
    """The year a two-digit year stands for (RFC 5322, 4.3): 0..49 -> 2000..2049, 50..99 -> 1950..1999.

        >>> two_digit_year(99), two_digit_year(7)
        (1999, 2007)
    """
    if not 0 <= yy <= 99:
        raise ValueError(f"expected a two-digit year in 0..99, got {yy!r}")
    return 2000 + yy if yy < 50 else 1900 + yy


# Each format: a function of the date's parts. m = full month name, mon = its first three
# letters, wd / wdy = weekday full / abbreviated; words get a random case afterwards.
_FORMATS = {
    "d_month_yyyy": lambda d: f"{d.day} {_m(d)} {d.year}",  # 3 March 1999
    "month_d_yyyy": lambda d: f"{_m(d)} {d.day}, {d.year}",  # March 3, 1999
    "the_dth_of_month_yyyy": lambda d: f"the {ordinal_suffix(d.day)} of {_m(d)} {d.year}",  # the 3rd of March 1999
    "month_dth_yy": lambda d: f"{_m(d)} {ordinal_suffix(d.day)} {d.year % 100:02d}",  # March 3rd 99
    "weekday_month_d_yyyy": lambda d: f"{WEEKDAYS[d.weekday()]}, {_m(d)} {d.day}, {d.year}",  # Wednesday, March 3, 1999
    "wdy_d_mon_yyyy": lambda d: f"{WEEKDAYS[d.weekday()][:3]}, {d.day} {_m(d)[:3]} {d.year}",  # Wed, 3 Mar 1999
    "d_mon_yyyy": lambda d: f"{d.day} {_m(d)[:3]} {d.year}",  # 3 Mar 1999
    "mon_d_yy": lambda d: f"{_m(d)[:3]} {d.day} '{d.year % 100:02d}",  # Mar 3 '99
    "month_the_dword_yyyy": lambda d: f"{_m(d)} the {ordinal_word(d.day)} {d.year}",  # March the third 1999
    "the_dword_of_month_yyyy": lambda d: f"the {ordinal_word(d.day)} of {_m(d)}, {d.year}",  # the third of March, 1999
    "m/d/yyyy": lambda d: f"{d.month}/{d.day}/{d.year}",  # 3/14/1999: slashes are month first
    "mm/dd/yy": lambda d: f"{d.month:02d}/{d.day:02d}/{d.year % 100:02d}",  # 03/14/99
    "dd.mm.yyyy": lambda d: f"{d.day:02d}.{d.month:02d}.{d.year}",  # 14.03.1999: dots are day first
}
DATE_FORMATS = tuple(_FORMATS)
_CASES = ("as written", "lower", "upper")


def _m(d: dt.date) -> str:
    return MONTHS[d.month - 1]


def format_date(date: dt.date, fmt: str, case: str = "as written") -> str:
    """``date`` written in format ``fmt`` (one of ``DATE_FORMATS``) and ``case``.

        >>> format_date(dt.date(1999, 3, 3), "the_dword_of_month_yyyy", "upper")
        'THE THIRD OF MARCH, 1999'
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown date format {fmt!r}; expected one of {', '.join(DATE_FORMATS)}")
    if case not in _CASES:
        raise ValueError(f"unknown case {case!r}; expected one of {', '.join(map(repr, _CASES))}")
    if not isinstance(date, dt.date) or not FIRST_DATE <= date <= LAST_DATE:
        raise ValueError(f"expected a datetime.date from {FIRST_DATE} to {LAST_DATE}, got {date!r}")
    text = _FORMATS[fmt](date)
    return text.lower() if case == "lower" else text.upper() if case == "upper" else text


def _pairs_for(dates, rng: random.Random, formats) -> list[tuple[str, str]]:
    pairs = []
    for date in dates:
        fmt, case = rng.choice(formats), rng.choice(_CASES)
        pairs.append((format_date(date, fmt, case), date.isoformat()))
    return pairs


def _check_formats(formats):
    formats = DATE_FORMATS if formats is None else tuple(formats)
    if not formats:
        raise ValueError("formats is empty: give at least one of DATE_FORMATS (or None for all)")
    for fmt in formats:
        if fmt not in _FORMATS:
            raise ValueError(f"unknown date format {fmt!r}; expected one of {', '.join(DATE_FORMATS)}")
    return formats


def make_date_pairs(n: int, seed: int = 0, formats=None) -> list[tuple[str, str]]:
    """``n`` pairs (source, ISO target) of dates drawn uniformly from 1950..2049, each in a
    format drawn uniformly from ``formats`` (default: all of ``DATE_FORMATS``) and a random
    case. The same ``seed`` gives the same pairs on every machine (Python's ``random``).

        >>> make_date_pairs(1, seed=0, formats=["dd.mm.yyyy"])
        [('15.02.2019', '2019-02-15')]
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    formats = _check_formats(formats)
    rng = random.Random(seed)
    span = (LAST_DATE - FIRST_DATE).days
    dates = [FIRST_DATE + dt.timedelta(days=rng.randint(0, span)) for _ in range(n)]
    return _pairs_for(dates, rng, formats)


def date_splits(seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Fixed splits of the date task: ``{"train": [...], "valid": [...], "test": [...]}``
    of ``SPLIT_SIZES`` pairs, every date (ISO target) in at most one pair of one split.

    All dates of 1950..2049 are shuffled with ``seed``; test takes the first ones, valid
    the next, train the next 20,000, and each gets a random format and case.
    """
    rng = random.Random(seed)
    span = (LAST_DATE - FIRST_DATE).days
    dates = [FIRST_DATE + dt.timedelta(days=i) for i in range(span + 1)]
    rng.shuffle(dates)
    out, start = {}, 0
    for name in ("test", "valid", "train"):
        size = SPLIT_SIZES[name]
        out[name] = _pairs_for(dates[start:start + size], rng, DATE_FORMATS)
        start += size
    return {name: out[name] for name in SPLITS}


# ---------------------------------------------------------------------------- vocabularies
class CharVocab:
    """Characters numbered after four specials: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3.

        >>> v = CharVocab("ab")
        >>> v.encode("ba", bos=True, eos=True), v.decode([1, 5, 4, 2, 0])
        ([1, 5, 4, 2], 'ba')

    ``encode`` maps a character missing from the vocabulary to ``<unk>``; ``decode`` skips
    ``<pad>`` and ``<s>``, stops at the first ``</s>`` and writes ``<unk>`` as U+FFFD (�).
    """

    SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3
    UNK_CHAR = "\N{REPLACEMENT CHARACTER}"

    def __init__(self, chars):
        chars = sorted(set(chars))
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise ValueError(f"expected single characters, got {c!r}")
        self.itos = list(self.SPECIALS) + chars  # id -> token
        self.stoi = {c: i for i, c in enumerate(self.itos) if i >= len(self.SPECIALS)}  # character -> id

    @classmethod
    def from_texts(cls, texts) -> CharVocab:
        """The vocabulary of every character in ``texts`` (an iterable of strings)."""
        return cls(set().union(*map(set, texts)))

    def __len__(self) -> int:
        return len(self.itos)

    def __repr__(self) -> str:
        return f"CharVocab({len(self)} ids: 4 specials and {len(self) - 4} characters)"

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        """"ab" -> [4, 5]; with ``bos`` / ``eos`` the ids of ``<s>`` / ``</s>`` around it."""
        if not isinstance(text, str):
            raise TypeError(f"expected a string, got {type(text).__name__}")
        ids = [self.stoi.get(c, self.unk_id) for c in text]
        return [self.bos_id] * bos + ids + [self.eos_id] * eos

    def decode(self, ids) -> str:
        """[1, 4, 5, 2, 0] -> "ab": ``<s>`` and ``<pad>`` skipped, everything after ``</s>`` dropped."""
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if not isinstance(i, int) or not 0 <= i < len(self):
                raise ValueError(f"id {i!r} is not in the vocabulary (ids 0..{len(self) - 1})")
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            out.append(self.UNK_CHAR if i == self.unk_id else self.itos[i])
        return "".join(out)


DATE_SOURCE_CHARS = string.ascii_letters + string.digits + " ,./'-"  # all a date format can write


def date_vocabs() -> tuple[CharVocab, CharVocab]:
    """(source vocabulary, target vocabulary) of the date task, fixed: they do not depend on
    the data drawn. The targets use "0123456789-" only: 4 specials + 11 = 15 ids."""
    return CharVocab(DATE_SOURCE_CHARS), CharVocab(string.digits + "-")


def collate(pairs, src_vocab: CharVocab, tgt_vocab: CharVocab):
    """Encode and pad a batch of (source, target) strings.

    Returns ``src`` (B, S), ``src_lengths`` (B,), ``tgt_in`` (B, T), ``tgt_out`` (B, T),
    all int64, where S is the longest source and T the longest target plus one:

        tgt_in  = <s> y_1 ... y_n            padded with <pad> (0): the decoder reads it
        tgt_out = y_1 ... y_n </s>           padded with -1: the loss skips those positions

    Sources are padded with ``<pad>`` (0) on the right; ``src_lengths`` holds the real lengths.

        >>> v = CharVocab("ab")
        >>> [t.tolist() for t in collate([("ab", "b"), ("a", "ab")], v, v)]
        [[[4, 5], [4, 0]], [2, 1], [[1, 5, 0], [1, 4, 5]], [[5, 2, -1], [4, 5, 2]]]
    """
    pairs = list(pairs)
    if not pairs:
        raise ValueError("expected at least one (source, target) pair, got none")
    for p in pairs:
        if not (isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p)):
            raise ValueError(f"expected (source, target) pairs of strings, got {p!r}")
        if not p[0]:
            raise ValueError(f"empty source in pair {p!r}: every source needs at least one character")
    srcs = [src_vocab.encode(s) for s, _ in pairs]
    tgts = [tgt_vocab.encode(t) for _, t in pairs]
    B, S, T = len(pairs), max(map(len, srcs)), max(map(len, tgts)) + 1
    src = torch.full((B, S), src_vocab.pad_id, dtype=torch.long)  # (B, S)
    tgt_in = torch.full((B, T), tgt_vocab.pad_id, dtype=torch.long)  # (B, T)
    tgt_out = torch.full((B, T), -1, dtype=torch.long)  # (B, T)
    for b, (s, t) in enumerate(zip(srcs, tgts)):
        src[b, :len(s)] = torch.tensor(s)
        tgt_in[b, :len(t) + 1] = torch.tensor([tgt_vocab.bos_id] + t)
        tgt_out[b, :len(t) + 1] = torch.tensor(t + [tgt_vocab.eos_id])
    src_lengths = torch.tensor([len(s) for s in srcs], dtype=torch.long)  # (B,)
    return src, src_lengths, tgt_in, tgt_out


# ---------------------------------------------------------------------------- download
class DownloadError(OSError):
    """The file could not be fetched (no network, HTTP error, timeout)."""


class ChecksumError(ValueError):
    """The bytes fetched are not the file expected: their checksum differs."""


_OFFLINE_HINT = ("This part of chapter 5 needs the internet (e.g. on Colab); the date task "
                 "(course_lib.translation_data.date_splits) works without it.")


_DIGITS = {"sha256": 64, "sha1": 40}  # hex digits of each accepted checksum


def checksum_of(path, chunk_size: int = 1 << 20, algorithm: str = "sha256") -> str:
    """The SHA-256 (or ``algorithm``: "sha1") of a file's bytes, as lowercase hex digits."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest, sha256: str | None = None, timeout: float = 30.0, chunk_size: int = 1 << 16, *,
             sha1: str | None = None) -> Path:
    """Fetch ``url`` to ``dest`` once and check it; return ``dest`` as a ``Path``.

    The expected checksum is given as ``sha256`` (64 hex digits) or, for files published
    with one, ``sha1`` (40 hex digits): exactly one of the two. If ``dest`` already holds a
    file with that checksum, nothing is fetched.
    Otherwise the body is streamed to a temporary file next to ``dest`` while its SHA-256
    is computed; only if it matches is the file renamed to ``dest`` (``os.replace``, atomic
    on one file system), so ``dest`` is never a partial or wrong file. On a mismatch the
    temporary file is deleted and ``ChecksumError`` raised; on no network, an HTTP error or
    no answer within ``timeout`` seconds (per connection attempt and per read), the
    temporary file is deleted and ``DownloadError`` raised.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://", "file://")):
        raise ValueError(f"expected an http(s):// or file:// URL, got {url!r}")
    if (sha256 is None) == (sha1 is None):
        raise ValueError("give the expected checksum as sha256=... or sha1=... (exactly one)")
    algorithm, expected = ("sha256", sha256) if sha1 is None else ("sha1", sha1)
    if not isinstance(expected, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{_DIGITS[algorithm]}}}", expected):
        raise ValueError(f"expected {algorithm} as {_DIGITS[algorithm]} hex digits (e.g. from `{algorithm}sum FILE`), "
                         f"got {expected!r}")
    if not (isinstance(timeout, (int, float)) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    expected, dest = expected.lower(), Path(dest)
    if dest.is_file() and checksum_of(dest, algorithm=algorithm) == expected:
        return dest  # cached
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.new(algorithm)
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    while chunk := response.read(chunk_size):
                        h.update(chunk)
                        f.write(chunk)
            except urllib.error.HTTPError as e:
                raise DownloadError(f"could not download {url}: the server answered HTTP {e.code} "
                                    f"{e.reason}. {_OFFLINE_HINT}") from e
            except urllib.error.URLError as e:
                why = (f"no answer within {timeout} s" if isinstance(e.reason, (TimeoutError, socket.timeout))
                       else f"{e.reason}")
                raise DownloadError(f"could not download {url}: {why}. {_OFFLINE_HINT}") from e
            except (TimeoutError, socket.timeout) as e:
                raise DownloadError(f"could not download {url}: no answer within {timeout} s. {_OFFLINE_HINT}") from e
            except OSError as e:
                raise DownloadError(f"could not download {url}: {e}. {_OFFLINE_HINT}") from e
        got = h.hexdigest()
        if got != expected:
            raise ChecksumError(f"the file downloaded from {url} has {algorithm} {got}, expected {expected}: it is not "
                                "the file this chapter was written for (changed on the server, or damaged on the "
                                f"way). Nothing was saved to {dest}.")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


# ---------------------------------------------------------------------------- sentence pairs
def _normalise(text: str) -> str:
    """NFC, and every run of whitespace (the no-break spaces of French typography included)
    becomes one space: "Va\u202f!" -> "Va !"."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def _read_lines(path: Path, member: str | None) -> list[str]:
    if not zipfile.is_zipfile(path):
        return path.read_text(encoding="utf-8").splitlines()
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        if member is None:  # the one text file that is not an "_about.txt"-style note
            texts = [n for n in names if n.endswith(".txt") and not Path(n).name.startswith("_")]
            if len(texts) != 1:
                raise ValueError(f"{path} holds {names}: pass member= to say which file holds the pairs")
            member = texts[0]
        if member not in names:
            raise ValueError(f"{path} has no member {member!r}; it holds {names}")
        return z.read(member).decode("utf-8").splitlines()


def load_sentence_pairs(path, max_pairs: int | None = None, max_len: int | None = None,
                        member: str | None = None) -> list[tuple[str, str]]:
    """(English, French) pairs from a tab-separated file, in the file's order.

    Each line is ``English<TAB>French`` with optional further fields (the Tatoeba files
    add an attribution), which are ignored; blank lines are skipped. Both sides are
    normalised (NFC, whitespace runs to one space). ``max_len`` keeps only pairs whose two
    sides have at most that many characters (the chapter's models read characters);
    ``max_pairs`` stops after that many pairs kept (the Tatoeba files are sorted from
    short to long, so the first pairs are the shortest). ``path`` may be a ``.zip``: its one
    ``.txt`` member not starting with "_" (``fra.txt``) is read, or ``member``.

        "Go.\\tVa !\\tCC-BY 2.0 (France) Attribution: tatoeba.org ..." -> ("Go.", "Va !")
    """
    for name, value in [("max_pairs", max_pairs), ("max_len", max_len)]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{name} must be an integer > 0 or None, got {value!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path}: download it first (see download())")
    pairs = []
    for n, line in enumerate(_read_lines(path, member), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            raise ValueError(f"{path}, line {n}: expected 'English<TAB>French[<TAB>...]', got {line[:80]!r}")
        en, fr = _normalise(fields[0]), _normalise(fields[1])
        if max_len is not None and (len(en) > max_len or len(fr) > max_len):
            continue
        pairs.append((en, fr))
        if max_pairs is not None and len(pairs) == max_pairs:
            break
    return pairs
