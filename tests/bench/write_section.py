"""Replace (or append) one marked section of docs/benchmarks.md.

    write_section.py DOC NAME SECTION_FILE

The section file starts with <!-- NAME:start --> and ends with <!-- NAME:end -->;
each benchmark script owns one section, so they can run separately.
"""
import os
import re
import sys

doc, name, section_file = sys.argv[1:4]
section = open(section_file).read().strip() + "\n"
text = open(doc).read() if os.path.exists(doc) else (
    "# Benchmarks\n\nEvery figure here is written by `make bench`; ratios within one run matter more than absolute numbers.\n\n"
)
start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
if start in text:
    text = re.sub(re.escape(start) + r".*?" + re.escape(end) + r"\n?", lambda m: section, text, flags=re.S)
else:
    text = text.rstrip("\n") + "\n\n" + section
open(doc, "w").write(text)
print(f"wrote {doc} ({name})")
