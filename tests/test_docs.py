"""The user docs stay true to the repository: their relative links resolve,
and nothing points outside it.

Every `[text](target)` and `![alt](target)` in README.md and docs/*.md whose
target is relative must name a file of the repository, and a `#anchor` must
be a heading of that file (GitHub's slugs). The method specification lives
in docs/method.md: no file outside docs/ may cite another copy of it or a
path above the repository.
"""

import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]

# [text](target) or ![alt](target), target up to whitespace or ')'; an
# optional "title" after it is ignored.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")

# Spelled in pieces so that this file does not match itself.
_UP_AND_SHARED = ".." + "/shared"
_SHARED_DESIGN = "shared" + "/design"
_OLD_SPEC = re.compile(r"\b" + "METH" + "OD" + r"(\.md)?\b")


def _doc_files():
  return [REPO / "README.md"] + sorted((REPO / "docs").glob("*.md"))


def _prose_lines(path):
  """(line number, text) of the lines outside fenced code blocks."""
  fenced = False
  for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      yield number, line


def _without_code_spans(line):
  return re.sub(r"`[^`]*`", "", line)


def slug(heading):
  """GitHub's anchor of a heading: lowercase, punctuation other than '-'
  and '_' dropped, spaces to '-'."""
  text = re.sub(r"`([^`]*)`", r"\1", heading)          # code spans keep their text
  text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
  text = text.strip().lower()
  text = re.sub(r"[^\w\- ]", "", text)
  return text.replace(" ", "-")


def anchors(path):
  """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes
  for repeated headings."""
  seen, result = {}, set()
  for _, line in _prose_lines(path):
    match = _HEADING.match(line)
    if not match:
      continue
    base = slug(match.group(2))
    count = seen.get(base, 0)
    seen[base] = count + 1
    result.add(base if count == 0 else f"{base}-{count}")
  return result


def links(path):
  """(line number, target) of every link in the file's prose."""
  for number, line in _prose_lines(path):
    for match in _LINK.finditer(_without_code_spans(line)):
      yield number, match.group(1)


def broken_links(path):
  """'file:line: target (why)' for each relative link that does not resolve."""
  problems = []
  for number, target in links(path):
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:
      continue
    where = f"{path.relative_to(REPO)}:{number}: {target}"
    file_part, _, anchor = target.partition("#")
    linked = (path.parent / file_part).resolve() if file_part else path
    try:
      linked.relative_to(REPO)
    except ValueError:
      problems.append(f"{where} (outside the repository)")
      continue
    if not linked.exists():
      problems.append(f"{where} (no such file)")
      continue
    if anchor and linked.suffix == ".md" and anchor not in anchors(linked):
      problems.append(f"{where} (no heading with this anchor in {linked.name})")
  return problems


def _tracked_files():
  try:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                            check=True, timeout=30).stdout.decode().split("\0")
    return [REPO / name for name in listed if name]
  except (OSError, subprocess.SubprocessError):
    # No git (e.g. an unpacked archive): every file but version control
    # and build outputs.
    skip = {".git", "build", "runs", "data", "__pycache__"}
    return [p for p in REPO.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(REPO).parts)
            and not p.relative_to(REPO).parts[0].startswith("bazel-")]


def outside_references():
  """'file:line: text' for each mention of a path above the repository, and
  for each citation of the method other than docs/method.md outside docs/."""
  problems = []
  for path in _tracked_files():
    relative = path.relative_to(REPO)
    if not path.is_file():
      continue
    try:
      text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
      continue                                      # binary files (PNG, ...)
    in_docs = relative.parts[0] == "docs"
    for number, line in enumerate(text.splitlines(), 1):
      if _UP_AND_SHARED in line or _SHARED_DESIGN in line:
        problems.append(f"{relative}:{number}: {line.strip()}")
      elif not in_docs and _OLD_SPEC.search(line):
        problems.append(f"{relative}:{number}: {line.strip()}")
  return problems


def test_slugs_follow_github():
  assert slug("8. Evaluation with ground-truth depth") == "8-evaluation-with-ground-truth-depth"
  assert slug("Why the main job's settings differ") == "why-the-main-jobs-settings-differ"
  assert slug("The second backend: tensorflow-graphics' kernel") == \
      "the-second-backend-tensorflow-graphics-kernel"
  assert slug("`--renderer_xla` and XLA") == "--renderer_xla-and-xla"


def test_link_checker_finds_broken_links(tmp_path, monkeypatch):
  monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
  (tmp_path / "a.md").write_text("# Top\n\n## Next part\n")
  page = tmp_path / "b.md"
  page.write_text("[ok](a.md#next-part) [ok](#here) ![img](a.md)\n# Here\n"
                  "[gone](missing.md) [bad](a.md#nowhere) [up](../x.md)\n"
                  "```\n[in code](missing.md)\n```\n`[span](missing.md)` [web](https://x.org)\n")
  problems = broken_links(page)
  assert len(problems) == 3, problems
  assert "b.md:3: missing.md (no such file)" in problems
  assert any("a.md#nowhere" in p and "no heading" in p for p in problems)
  assert any("../x.md" in p and "outside" in p for p in problems)


def test_relative_links_and_anchors_resolve():
  problems = [p for path in _doc_files() for p in broken_links(path)]
  assert not problems, "broken links in the docs:\n" + "\n".join(problems)


def test_no_references_outside_the_repository():
  problems = outside_references()
  assert not problems, ("cite docs/method.md §N instead (run the sweep), and no path "
                        "above the repository:\n" + "\n".join(problems))
