"""Every relative link in README.md and docs/ resolves to a file or folder of the repository."""

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Pages of the documentation that are written separately and not yet in this tree; remove each
# entry when its page lands (the test then checks links to it like any other).
EXPECTED_LATER = set()  # pages a link may name before they exist: none
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files():
    return [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                recursive=True))


def relative_links(path):
    text = re.sub(r"```.*?```", "", open(path).read(), flags=re.S)  # code blocks hold no links
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        yield target.split("#", 1)[0]


def test_relative_links_resolve():
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            resolved = os.path.normpath(os.path.join(os.path.dirname(path), target))
            rel = os.path.relpath(resolved, ROOT)
            if not os.path.exists(resolved) and rel not in EXPECTED_LATER:
                broken.append(f"{os.path.relpath(path, ROOT)} -> {target}")
    assert not broken, broken


def test_the_link_pattern_finds_links():
    links = set(relative_links(os.path.join(ROOT, "README.md")))
    assert {"docs/method.md", "LICENSE", "ts_dpm.png"} <= links
