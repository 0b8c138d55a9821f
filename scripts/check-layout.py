#!/usr/bin/env python3
"""The house layout, checked (CONTRIBUTING.md): one-way dependencies between folders, file and function sizes.

  scripts/check-layout.py [--root DIR]      exit 0 when the tree keeps the rules, 1 with one line per breach

Rules
- A library folder includes headers only from itself and the folders below it (ALLOWED, which mirrors the DEPS in
  each folder's CMakeLists.txt). apps/, bench/, tests/ may include any library.
- A source file is at most MAX_FILE_LINES lines, a function at most MAX_FUNCTION_LINES, unless a comment says why:
  `// Size: <reason>` in a file's first 20 lines (for the file), or within the 4 lines above a function's first line
  or its first 2 body lines (for the function).
"""
import argparse
import os
import re
import sys

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80

# Direct dependencies of each library folder (the closure is computed below).
DEPS = {
    "common": [],
    "quant": ["common"],
    "io": ["quant"],
    "tokenizer": ["common"],
    "ops": ["io"],
    "model": ["ops"],
    "plan": ["io"],
    "lora": ["model"],
    "data": ["tokenizer"],
    "tools": ["io", "tokenizer"],
    "trainer/dist": ["common"],
    "trainer": ["data", "lora", "plan", "trainer/dist"],
    "gguf": ["lora", "tokenizer"],
}
TOP = ["apps", "bench", "fuzz", "tests"]  # may include anything
SOURCE_EXT = (".h", ".cpp", ".cu", ".cuh")


def closure():
    allowed = {}

    def visit(f):
        if f not in allowed:
            allowed[f] = {f}
            for d in DEPS[f]:
                allowed[f] |= visit(d)
        return allowed[f]

    for f in DEPS:
        visit(f)
    return allowed


def folder_of(rel):
    """The library folder a path belongs to (longest match: trainer/dist before trainer), or None."""
    best = None
    for f in list(DEPS) + TOP:
        if rel == f or rel.startswith(f + "/"):
            if best is None or len(f) > len(best):
                best = f
    return best


FUNC_START = re.compile(r"^(?!namespace\b|struct\b|class\b|enum\b|union\b|extern\b|template\s*<[^>]*>\s*(struct|class)\b)"
                        r"[A-Za-z_~].*\)\s*(const\s*)?(noexcept\s*)?(override\s*)?(->\s*[\w:<>]+\s*)?\{\s*(//.*)?$")
TEST_START = re.compile(r"^(TEST|TEST_F|TEST_P)\(.*\)\s*\{\s*$")


def has_reason(lines, lo, hi):
    return any("// Size:" in lines[i] for i in range(max(lo, 0), min(hi, len(lines))))


def long_functions(lines):
    """(first line, length) of each namespace-scope function body (clang-format style: starts and ends at column 0)."""
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        start = None
        if FUNC_START.match(line) or TEST_START.match(line):
            start = i
        elif line[:1].isalpha() and not line.rstrip().endswith(";") and not line.startswith(("namespace", "struct", "class", "enum", "using", "template", "typedef", "static_assert", "extern", "union")):
            # a signature wrapped over several lines: find its `{` line (indented continuation ending in `{`)
            j = i + 1
            while j < len(lines) and j < i + 6 and lines[j].startswith(" ") and not lines[j].rstrip().endswith(";"):
                if lines[j].rstrip().endswith("{") and ")" in lines[j]:
                    start = i
                    break
                j += 1
        if start is None:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not (lines[j].startswith("}") and not lines[j].startswith("}  // namespace")):
            j += 1
        body = j - i - 1
        if body > MAX_FUNCTION_LINES and not has_reason(lines, i - 4, i + 3):
            out.append((i + 1, body, line.strip()[:80]))
        i = j + 1
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()
    root = args.root
    allowed = closure()
    problems = []
    include_re = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    for folder in list(DEPS) + TOP:
        base = os.path.join(root, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d not in ("fixtures", "__pycache__")]
            for name in sorted(filenames):
                if not name.endswith(SOURCE_EXT):
                    continue
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, root)
                owner = folder_of(rel)
                if owner != folder:
                    continue  # trainer/dist files are visited as their own folder
                with open(path, encoding="utf-8") as fh:
                    lines = fh.read().split("\n")
                if owner in DEPS:
                    for n, line in enumerate(lines, 1):
                        m = include_re.match(line)
                        if not m:
                            continue
                        target = folder_of(m.group(1))
                        if target is None or target in TOP:
                            problems.append(f"{rel}:{n}: includes \"{m.group(1)}\", which is not a library header")
                        elif target not in allowed[owner]:
                            problems.append(f"{rel}:{n}: {owner}/ must not include {target}/ (\"{m.group(1)}\"): "
                                            f"dependencies point one way (CONTRIBUTING.md)")
                if len(lines) > MAX_FILE_LINES and not has_reason(lines, 0, 20):
                    problems.append(f"{rel}: {len(lines)} lines (> {MAX_FILE_LINES}) and no `// Size:` reason at its top")
                for first, length, sig in long_functions(lines):
                    problems.append(f"{rel}:{first}: function of {length} lines (> {MAX_FUNCTION_LINES}) and no "
                                    f"`// Size:` reason at its top: {sig}")
    for p in problems:
        print(p)
    if problems:
        print(f"check-layout: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("check-layout: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
