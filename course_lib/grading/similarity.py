"""The copy report: each submission's graded code against the solutions, course_lib and
the other submissions. It flags; it never changes a score (the instructor decides).

Fingerprints as MOSS makes them (Schleimer, Wilkerson and Aiken, "Winnowing", 2003):
the code becomes a stream of normalised tokens (names become ``N``, numbers ``0``,
strings ``S``; comments, layout and the names chosen are gone, keywords and operators
stay), every run of ``K`` tokens is hashed, and the minimum hash of each window of
``WINDOW`` hashes is kept. What the released notebook already holds (signatures,
docstrings) is subtracted, so only what the student wrote counts. A part is flagged
when at least ``THRESHOLD`` of its fingerprints are found in one source.

Some constructs have no business in an exercise and are flagged wherever they appear:
reading the caller's frames, walking the garbage collector, executing source text
(``exec(inspect.getsource(...))`` runs course_lib's code without importing it), importing
course_lib.

``python -m course_lib.grading.similarity ch01`` writes the report for a course folder;
``python -m course_lib.grading.autograde`` writes it after grading.
"""

from __future__ import annotations

import argparse
import io
import json
import keyword
import re
import sys
import tokenize
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["fingerprints", "graded_cells", "Finding", "compare_class", "write_report", "CONSTRUCTS"]

K = 8  # tokens per hashed run
WINDOW = 4  # hashes per winnowing window
THRESHOLD = 0.5  # share of a part's fingerprints found in one source that flags it
MIN_PRINTS = 8  # parts with fewer fingerprints of their own are too short to judge

CONSTRUCTS = {
    "reads the caller's frames": r"_getframe|\bf_(back|locals|globals)\b|inspect\.(stack|currentframe|getouterframes)",
    "walks the garbage collector": r"\bgc\.get_(objects|referrers|referents)\b",
    "executes source text": r"\b(exec|eval|compile)\s*\(|getsource",
    "imports course_lib": (r"^\s*(import|from)\s[^#\n]*\bcourse_lib\b"
                           r"|\b(__import__|import_module)\s*\(\s*['\"]course_lib"),
    "replaces library functions": r"^\s*(numpy|np|torch|math|builtins|course_lib)(\.\w+)+\s*=(?!=)",
}


def _tokens(code: str) -> list[str]:
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            kind, text = tok.type, tok.string
            if kind in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.ENDMARKER, tokenize.ENCODING):
                continue
            if kind == tokenize.NAME:
                out.append(text if keyword.iskeyword(text) else "N")
            elif kind == tokenize.NUMBER:
                out.append("0")
            elif kind == tokenize.STRING or kind == getattr(tokenize, "FSTRING_START", None):
                out.append("S")
            elif kind in (getattr(tokenize, "FSTRING_MIDDLE", None), getattr(tokenize, "FSTRING_END", None)):
                continue
            elif kind == tokenize.INDENT:
                out.append("{")
            elif kind == tokenize.DEDENT:
                out.append("}")
            else:
                out.append(text)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        out.extend(re.findall(r"\w+|[^\w\s]", code))  # code that does not tokenise: words and symbols
    return out


def fingerprints(code: str) -> set[int]:
    """The winnowed hashes of ``code``'s normalised token runs."""
    tokens = _tokens(code)
    hashes = [zlib.crc32(" ".join(tokens[i:i + K]).encode()) for i in range(len(tokens) - K + 1)]
    if len(hashes) <= WINDOW:
        return set(hashes)
    return {min(hashes[i:i + WINDOW]) for i in range(len(hashes) - WINDOW + 1)}


def graded_cells(nb: dict) -> dict[str, str]:
    """grade_id -> source of each cell the student writes (nbgrader solution cells)."""
    out = {}
    for cell in nb.get("cells", []):
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") == "code" and meta.get("solution"):
            source = cell.get("source", "")
            out[meta.get("grade_id", "?")] = "".join(source) if isinstance(source, list) else source
    return out


def _solution_region(source: str) -> str:
    match = re.search(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", source, re.S)
    return match.group(1) if match else source


def course_lib_sources(root: Path | None = None) -> dict[str, str]:
    """course_lib's teaching modules (the grading machinery left out), by file name."""
    import course_lib

    root = root or Path(course_lib.__file__).parent
    return {f"course_lib/{p.relative_to(root)}": p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))
            if "grading" not in p.relative_to(root).parts}


@dataclass
class Finding:
    student: str
    part: str
    source: str  # where the best match is: "solutions", "course_lib/<file>", "student <id>"
    share: float  # of the part's own fingerprints found there
    prints: int  # the part's own fingerprints
    constructs: list

    @property
    def flagged(self) -> bool:
        return (self.prints >= MIN_PRINTS and self.share >= THRESHOLD) or bool(self.constructs)


def compare_class(submissions: dict[str, dict], solution: dict | None, release: dict | None,
                  library: dict[str, str]) -> list[Finding]:
    """Findings for every (student, part): ``submissions`` student -> notebook (as JSON)."""
    base = {gid: fingerprints(src) for gid, src in graded_cells(release or {}).items()}
    sol = {gid: fingerprints(_solution_region(src)) for gid, src in graded_cells(solution or {}).items()}
    lib = {name: fingerprints(src) for name, src in library.items()}
    prints = {s: {gid: fingerprints(src) - base.get(gid, set()) for gid, src in graded_cells(nb).items()}
              for s, nb in submissions.items()}
    findings = []
    for student, parts in prints.items():
        cells = graded_cells(submissions[student])
        for gid, mine in parts.items():
            own = _solution_region(cells[gid]) if "### BEGIN SOLUTION" in cells[gid] else cells[gid]
            constructs = [what for what, pattern in CONSTRUCTS.items() if re.search(pattern, own, re.M)]
            candidates = [("solutions", sol.get(gid, set()))]
            candidates += list(lib.items())
            candidates += [(f"student {other}", theirs.get(gid, set()))
                           for other, theirs in prints.items() if other != student]
            best, share = "", 0.0
            for name, theirs in candidates:
                if mine:
                    s = len(mine & theirs) / len(mine)
                    if s > share:
                        best, share = name, s
            findings.append(Finding(student, gid, best, share, len(mine), constructs))
    return findings


def write_report(course: Path, assignment: str, out: Path | None = None) -> Path:
    """Compare every ``submitted/<student>/<assignment>/*.ipynb`` and write the report
    (Markdown, flagged parts first) and the same as JSON beside it."""
    course = Path(course)
    submissions = {}
    for path in sorted(course.glob(f"submitted/*/{assignment}/*.ipynb")):
        try:
            submissions[path.parts[-3]] = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            continue
    def first(pattern):
        found = sorted(course.glob(pattern))
        return json.loads(found[0].read_text()) if found else None
    findings = compare_class(submissions, first(f"solutions/{assignment}/*.ipynb"),
                             first(f"exercises/{assignment}/*.ipynb") or first(f"release/{assignment}/*.ipynb"),
                             course_lib_sources())
    out = Path(out or course / "autograded" / f"{assignment}-similarity.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    flagged = [f for f in findings if f.flagged]
    lines = [f"# Copy report: {assignment}", "",
             f"{len(submissions)} submissions, {len(findings)} graded cells, {len(flagged)} flagged. A flag is a "
             f"reason to look, not a verdict: scores are unchanged.",
             f"A cell is flagged when {THRESHOLD:.0%} or more of its fingerprints (normalised runs of {K} tokens, "
             f"winnowed; at least {MIN_PRINTS} of its own) are found in one source, or when it holds a construct "
             "listed below.", "",
             "| student | cell | closest source | share | fingerprints | constructs | flag |",
             "|---|---|---|---:|---:|---|---|"]
    for f in sorted(findings, key=lambda f: (not f.flagged, -f.share, f.student, f.part)):
        lines.append(f"| {f.student} | {f.part} | {f.source or '-'} | {f.share:.0%} | {f.prints} | "
                     f"{'; '.join(f.constructs) or '-'} | {'FLAG' if f.flagged else ''} |")
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps([dict(vars(f), flagged=f.flagged) for f in findings], indent=1))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m course_lib.grading.similarity", description=__doc__.split("\n")[0])
    p.add_argument("assignment")
    p.add_argument("--course", default=".")
    args = p.parse_args(argv)
    path = write_report(Path(args.course), args.assignment)
    print(f"copy report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
