"""course_lib.translation_data: the date task against datetime's own parsing (strptime,
isoformat, weekday) and hand-written examples, determinism and disjoint splits; the
character vocabularies and padding; the downloader against a local HTTP server on
127.0.0.1 (cache, checksum, HTTP errors, refused connections, timeouts) and the
sentence-pair reader on small generated files. Nothing here touches the internet."""

import datetime as dt
import hashlib
import http.server
import re
import socket
import threading
import time
import zipfile

import pytest
import torch

from course_lib.translation_data import (DATE_FORMATS, FIRST_DATE, LAST_DATE, SPLIT_SIZES, ChecksumError, CharVocab,
                                         DownloadError, collate, date_splits, date_vocabs, download, format_date,
                                         load_sentence_pairs, make_date_pairs, ordinal_suffix, ordinal_word,
                                         checksum_of, two_digit_year)

# ---------------------------------------------------------------------------- dates
D = dt.date(1999, 3, 3)  # a Wednesday
HAND = {  # format -> 1999-03-03 written by hand
    "d_month_yyyy": "3 March 1999",
    "month_d_yyyy": "March 3, 1999",
    "the_dth_of_month_yyyy": "the 3rd of March 1999",
    "month_dth_yy": "March 3rd 99",
    "weekday_month_d_yyyy": "Wednesday, March 3, 1999",
    "wdy_d_mon_yyyy": "Wed, 3 Mar 1999",
    "d_mon_yyyy": "3 Mar 1999",
    "mon_d_yy": "Mar 3 '99",
    "month_the_dword_yyyy": "March the third 1999",
    "the_dword_of_month_yyyy": "the third of March, 1999",
    "m/d/yyyy": "3/3/1999",
    "mm/dd/yy": "03/03/99",
    "dd.mm.yyyy": "03.03.1999",
}
ORDINALS = ("first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
            "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth twentieth twenty-first "
            "twenty-second twenty-third twenty-fourth twenty-fifth twenty-sixth twenty-seventh twenty-eighth "
            "twenty-ninth thirtieth thirty-first").split()
# The formats that datetime.strptime reads once an ordinal suffix is dropped ("3rd" -> "3").
# strptime's %y puts 50..68 in 2050..2068; the task's rule (RFC 5322) puts them in 1950..1968.
STRPTIME = {
    "d_month_yyyy": "%d %B %Y", "month_d_yyyy": "%B %d, %Y", "the_dth_of_month_yyyy": "the %d of %B %Y",
    "month_dth_yy": "%B %d %y", "weekday_month_d_yyyy": "%A, %B %d, %Y", "wdy_d_mon_yyyy": "%a, %d %b %Y",
    "d_mon_yyyy": "%d %b %Y", "mon_d_yy": "%b %d '%y", "m/d/yyyy": "%m/%d/%Y", "mm/dd/yy": "%m/%d/%y",
    "dd.mm.yyyy": "%d.%m.%Y",
}
WORDS = {"month_the_dword_yyyy": r"(?P<m>\w+) the (?P<d>[\w-]+) (?P<y>\d{4})",
         "the_dword_of_month_yyyy": r"the (?P<d>[\w-]+) of (?P<m>\w+), (?P<y>\d{4})"}
MONTHS = "january february march april may june july august september october november december".split()


def parse(source: str, fmt: str) -> dt.date:
    """The date ``source`` names, read independently of the module (strptime, or by hand)."""
    if fmt in WORDS:
        m = re.fullmatch(WORDS[fmt], source, flags=re.IGNORECASE)
        assert m, f"{source!r} does not look like {fmt}"
        return dt.date(int(m["y"]), MONTHS.index(m["m"].lower()) + 1, ORDINALS.index(m["d"].lower()) + 1)
    parsed = dt.datetime.strptime(re.sub(r"(\d)(st|nd|rd|th)\b", r"\1", source, flags=re.IGNORECASE),
                                  STRPTIME[fmt]).date()
    if "%A" in STRPTIME[fmt] or "%a" in STRPTIME[fmt]:  # strptime ignores the weekday: check it
        name = source.split(",")[0].lower()
        assert parsed.strftime("%A" if "%A" in STRPTIME[fmt] else "%a").lower() == name, source
    return parsed.replace(year=parsed.year - 100) if parsed.year > 2049 else parsed


def test_every_format_is_checked():
    assert set(HAND) == set(DATE_FORMATS) == set(STRPTIME) | set(WORDS)


@pytest.mark.parametrize("fmt", DATE_FORMATS)
def test_format_by_hand(fmt):
    assert format_date(D, fmt) == HAND[fmt]
    assert format_date(D, fmt, "upper") == HAND[fmt].upper()
    assert format_date(D, fmt, "lower") == HAND[fmt].lower()


@pytest.mark.parametrize("fmt", DATE_FORMATS)
def test_sources_name_their_targets(fmt):
    for source, target in make_date_pairs(300, seed=1, formats=[fmt]):
        assert parse(source, fmt).isoformat() == target, (fmt, source, target)


def test_targets_are_iso_dates_in_range():
    for _, target in make_date_pairs(2000, seed=2):
        date = dt.date.fromisoformat(target)  # raises on anything that is not a real date
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", target) and date.isoformat() == target
        assert FIRST_DATE <= date <= LAST_DATE


def test_every_format_and_case_appears():
    pairs = make_date_pairs(3000, seed=3)
    seen = {fmt for fmt in DATE_FORMATS for s, t in pairs if _reads_as(s, t, fmt)}
    assert seen == set(DATE_FORMATS)
    letters = [s for s, _ in pairs if any(c.isalpha() for c in s)]
    assert any(s == s.upper() for s in letters) and any(s == s.lower() for s in letters)
    assert any(s != s.upper() and s != s.lower() for s in letters)


def _reads_as(source, target, fmt) -> bool:
    try:
        return parse(source, fmt).isoformat() == target
    except (ValueError, AssertionError):
        return False


def test_determinism():
    assert make_date_pairs(500, seed=7) == make_date_pairs(500, seed=7)
    assert make_date_pairs(500, seed=7) != make_date_pairs(500, seed=8)
    assert make_date_pairs(0) == []
    assert make_date_pairs(3, seed=0) == [("FRIDAY, FEBRUARY 15, 2019", "2019-02-15"), ("jun 18 '25", "2025-06-18"),
                                          ("07.04.1957", "1957-04-07")]  # the module docstring's example


def test_splits_fixed_and_disjoint():
    splits = date_splits(seed=0)
    assert list(splits) == ["train", "valid", "test"]
    assert {k: len(v) for k, v in splits.items()} == SPLIT_SIZES == {"train": 20_000, "valid": 1_000, "test": 1_000}
    dates = {k: {t for _, t in v} for k, v in splits.items()}
    assert {k: len(v) for k, v in dates.items()} == SPLIT_SIZES  # no date twice within a split either
    assert not dates["train"] & dates["valid"] and not dates["train"] & dates["test"]
    assert not dates["valid"] & dates["test"]
    assert date_splits(seed=0) == splits and date_splits(seed=1)["test"] != splits["test"]


def test_ordinals_and_two_digit_years():
    assert [ordinal_word(d) for d in range(1, 32)] == ORDINALS
    assert [ordinal_suffix(d) for d in (1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"]
    assert [two_digit_year(y) for y in (0, 49, 50, 99)] == [2000, 2049, 1950, 1999]
    with pytest.raises(ValueError, match="0..99"):
        two_digit_year(100)


def test_date_errors():
    with pytest.raises(ValueError, match="unknown date format 'iso'"):
        make_date_pairs(3, formats=["iso"])
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        make_date_pairs(-1)
    with pytest.raises(ValueError, match="from 1950-01-01 to 2049-12-31"):
        format_date(dt.date(2050, 1, 1), "dd.mm.yyyy")
    with pytest.raises(ValueError, match="unknown case"):
        format_date(D, "dd.mm.yyyy", "title")


# ---------------------------------------------------------------------------- vocabularies
def test_vocab_round_trip():
    v = CharVocab.from_texts(["héllo", "wörld", " "])
    assert v.itos[:4] == ["<pad>", "<s>", "</s>", "<unk>"] and (v.pad_id, v.bos_id, v.eos_id, v.unk_id) == (0, 1, 2, 3)
    assert len(v) == 4 + len(set("héllo wörld"))
    for text in ["", "h", "wörld héllo", "ooo"]:
        ids = v.encode(text, bos=True, eos=True)
        assert ids[0] == 1 and ids[-1] == 2 and len(ids) == len(text) + 2
        assert v.decode(ids) == text and v.decode(torch.tensor(ids + [0, 0])) == text
    assert v.encode("hix") == [v.stoi["h"], 3, 3] and v.decode(v.encode("hix")) == "h" + "\N{REPLACEMENT CHARACTER}" * 2
    assert v.decode([v.stoi["h"], 2, v.stoi["é"]]) == "h"  # everything after </s> is dropped
    with pytest.raises(ValueError, match="not in the vocabulary"):
        v.decode([len(v)])


def test_date_vocabs_cover_every_source():
    src_vocab, tgt_vocab = date_vocabs()
    assert len(tgt_vocab) == 15
    for source, target in make_date_pairs(3000, seed=4):
        assert CharVocab.unk_id not in src_vocab.encode(source) and CharVocab.unk_id not in tgt_vocab.encode(target)
        assert src_vocab.decode(src_vocab.encode(source)) == source


def test_collate_by_hand():
    v = CharVocab("ab")  # a = 4, b = 5
    src, lengths, tgt_in, tgt_out = collate([("ab", "b"), ("a", "ab")], v, v)
    for t in (src, lengths, tgt_in, tgt_out):
        assert t.dtype == torch.long
    assert src.tolist() == [[4, 5], [4, 0]] and lengths.tolist() == [2, 1]
    assert tgt_in.tolist() == [[1, 5, 0], [1, 4, 5]] and tgt_out.tolist() == [[5, 2, -1], [4, 5, 2]]


def test_collate_shapes_and_padding():
    src_vocab, tgt_vocab = date_vocabs()
    pairs = make_date_pairs(17, seed=5) + [("1.1.1999", "1999-01-01")]
    src, lengths, tgt_in, tgt_out = collate(pairs, src_vocab, tgt_vocab)
    S = max(len(s) for s, _ in pairs)
    assert src.shape == (18, S) and lengths.shape == (18,) and tgt_in.shape == tgt_out.shape == (18, 11)
    for b, (s, t) in enumerate(pairs):
        assert lengths[b] == len(s) and src_vocab.decode(src[b]) == s and (src[b, len(s):] == 0).all()
        assert tgt_vocab.decode(tgt_out[b]) == t and tgt_out[b, len(t)] == 2
    assert torch.equal(tgt_in[:, 1:], tgt_out[:, :-1])  # the decoder reads what it was to predict one step before
    assert (tgt_in[:, 0] == 1).all()
    with pytest.raises(ValueError, match="empty source"):
        collate([("", "x")], src_vocab, tgt_vocab)
    with pytest.raises(ValueError, match="at least one"):
        collate([], src_vocab, tgt_vocab)


# ---------------------------------------------------------------------------- download
PAIRS_TEXT = ("Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & #1158250 (Wittydev)\n"
              "Hi.\tSalut\u202f!\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM)\n"
              "\n"
              "Run!\tCours\u00a0!\n"
              "I  see.\tJe  comprends.\tattribution\n"
              "Who are you?\tQui êtes-vous ?\tattribution\n")
EXPECTED_PAIRS = [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours !"), ("I see.", "Je comprends."),
                  ("Who are you?", "Qui êtes-vous ?")]


def _zip_bytes(tmp_path) -> bytes:
    path = tmp_path / "built.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("_about.txt", "About this file.\n")
        z.writestr("fra.txt", PAIRS_TEXT)
    return path.read_bytes()


class Server:
    """A local HTTP server in a thread, serving ``files`` (path -> bytes) and counting requests."""

    def __init__(self, files):
        self.files, self.requests = files, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def server(tmp_path):
    s = Server({"/pairs.txt": PAIRS_TEXT.encode(), "/fra-eng.zip": _zip_bytes(tmp_path)})
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_download_then_cache(server, tmp_path):
    dest = tmp_path / "cache" / "pairs.txt"
    body = server.files["/pairs.txt"]
    assert download(server.url + "/pairs.txt", dest, sha(body)) == dest
    assert dest.read_bytes() == body and checksum_of(dest) == sha(body)
    assert server.requests == ["/pairs.txt"]
    assert download(server.url + "/pairs.txt", dest, sha(body).upper()) == dest  # valid cache: no request
    assert server.requests == ["/pairs.txt"]
    assert leftovers(dest.parent) == ["pairs.txt"]  # no temporary file left
    dest.write_bytes(b"damaged")  # a cached file that fails the check is fetched again
    download(server.url + "/pairs.txt", dest, sha(body))
    assert dest.read_bytes() == body and len(server.requests) == 2


def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    dest = tmp_path / "pairs.txt"
    with pytest.raises(ChecksumError, match=r"has sha256 [0-9a-f]{64}, expected 0{64}.*Nothing was saved"):
        download(server.url + "/pairs.txt", dest, "0" * 64)
    assert leftovers(tmp_path) == ["built.zip"]  # no pairs.txt, no .part file


def test_http_404(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404 Not Found.*needs the internet.*date task"):
        download(server.url + "/missing.txt", tmp_path / "x.txt", "0" * 64)
    assert leftovers(tmp_path) == ["built.zip"]


def test_unreachable_host(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: the connection is refused
    with pytest.raises(DownloadError, match=r"could not download .*refused.*needs the internet.*works without it"):
        download(f"http://127.0.0.1:{port}/pairs.txt", tmp_path / "x.txt", "0" * 64, timeout=5)
    assert leftovers(tmp_path) == []


def test_timeout(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)  # the kernel completes the connection, but nobody ever answers
    try:
        start = time.perf_counter()
        with pytest.raises(DownloadError, match=r"no answer within 0.3 s.*needs the internet"):
            download(f"http://127.0.0.1:{s.getsockname()[1]}/pairs.txt", tmp_path / "x.txt", "0" * 64,
                     timeout=0.3)
        assert time.perf_counter() - start < 10
    finally:
        s.close()
    assert leftovers(tmp_path) == []


def test_download_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="64 hex digits"):
        download("http://127.0.0.1/x", tmp_path / "x", "abc")
    with pytest.raises(ValueError, match="http"):
        download("ftp://127.0.0.1/x", tmp_path / "x", "0" * 64)
    with pytest.raises(ValueError, match="timeout"):
        download("http://127.0.0.1/x", tmp_path / "x", "0" * 64, timeout=0)
    with pytest.raises(ValueError, match="exactly one"):
        download("http://127.0.0.1/x", tmp_path / "x")
    with pytest.raises(ValueError, match="exactly one"):
        download("http://127.0.0.1/x", tmp_path / "x", "0" * 64, sha1="0" * 40)
    with pytest.raises(ValueError, match="sha1 as 40 hex digits"):
        download("http://127.0.0.1/x", tmp_path / "x", sha1="0" * 64)


def test_download_with_sha1(server, tmp_path):
    """Files published with a SHA-1 (the chapter's English-French file) are checked with it."""
    body = server.files["/pairs.txt"]
    dest = tmp_path / "pairs.txt"
    assert download(server.url + "/pairs.txt", dest, sha1=hashlib.sha1(body).hexdigest()) == dest
    assert dest.read_bytes() == body and checksum_of(dest, algorithm="sha1") == hashlib.sha1(body).hexdigest()
    download(server.url + "/pairs.txt", dest, sha1=hashlib.sha1(body).hexdigest())  # cached: no request
    assert server.requests == ["/pairs.txt"]
    with pytest.raises(ChecksumError, match=r"has sha1 [0-9a-f]{40}, expected 0{40}"):
        download(server.url + "/pairs.txt", tmp_path / "other.txt", sha1="0" * 40)
    assert not (tmp_path / "other.txt").exists()


# ---------------------------------------------------------------------------- sentence pairs
def test_load_sentence_pairs_txt(tmp_path):
    path = tmp_path / "fra.txt"
    path.write_text(PAIRS_TEXT, encoding="utf-8")
    assert load_sentence_pairs(path) == EXPECTED_PAIRS
    assert load_sentence_pairs(path, max_pairs=2) == EXPECTED_PAIRS[:2]
    assert load_sentence_pairs(path, max_len=4) == [("Go.", "Va !")]  # both sides at most 4 characters
    assert load_sentence_pairs(path, max_len=7) == EXPECTED_PAIRS[:3]
    assert load_sentence_pairs(path, max_len=7, max_pairs=2) == EXPECTED_PAIRS[:2]


def test_load_sentence_pairs_zip_end_to_end(server, tmp_path):
    body = server.files["/fra-eng.zip"]
    path = download(server.url + "/fra-eng.zip", tmp_path / "fra-eng.zip", sha(body))
    assert load_sentence_pairs(path) == EXPECTED_PAIRS
    with pytest.raises(ValueError, match="line 1: expected 'English<TAB>French"):
        load_sentence_pairs(path, member="_about.txt")
    with pytest.raises(ValueError, match="no member 'eng.txt'"):
        load_sentence_pairs(path, member="eng.txt")


def test_load_sentence_pairs_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="download it first"):
        load_sentence_pairs(tmp_path / "nothing.txt")
    path = tmp_path / "bad.txt"
    path.write_text("Go.\tVa !\nno tab here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        load_sentence_pairs(path)
    with pytest.raises(ValueError, match="max_len must be an integer > 0"):
        load_sentence_pairs(path, max_len=0)
