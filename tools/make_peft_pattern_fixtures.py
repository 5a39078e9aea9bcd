#!/usr/bin/env python3
"""Writes tests/io/fixtures/peft_patterns.jsonl: rank_pattern keys and module names with what
Python's `re` says, the reference for lowrank's matcher (lowrank/io/detail/peft_regex.hpp).

Each line is a JSON array [key, module, expected]; expected is "match" or "no match" for
PEFT's rule, re.match(rf"(.*\\.)?({key})$", module), or "error" when Python's `re` rejects the
key, on its own or in that pattern (lowrank parses a key on its own, so a key such as
"a)|(b", which only balances inside PEFT's pattern, is an error for both). Keys come from a
grammar of the supported syntax and from random characters (which also make errors and
unsupported syntax); a case that Python matches slowly (backtracking) is left out.

Run once offline with CPython 3.11 (no other dependency) and commit the output:

    python3 tools/make_peft_pattern_fixtures.py [output_file]
"""

import json
import pathlib
import random
import re
import signal
import sys
import warnings


class Slow(Exception):
    pass


def _alarm(*_):
    raise Slow()


# Atoms of the grammar with a sampler of a string each matches (a class: some of its
# members; an anchor: ""), so that modules near a key's language are easy to make.
ATOMS = [("a", "a"), ("b", "b"), ("\\.", "."), (".", "ab._0é-"), ("_", "_"), ("0", "0"),
         ("x", "x"), ("[ab]", "ab"), ("[^a]", "b._0é"), ("[a-c]", "abc"), ("[\\d_]", "0_9"),
         ("[^\\w]", ".-é]"), ("[.]", "."), ("[]a]", "]a"), ("[a-]", "a-"), ("[-a]", "-a"),
         ("\\d", "09"), ("\\w", "a_0"), ("\\s", " \t"), ("\\W", ".-"), ("\\D", "a."),
         ("[\\W\\d]", ".0"), ("[\\x61-b]", "ab"), ("\\n", "\n"), ("[\\n]", "\n"), ("é", "é"),
         ("[é-ë]", "éë"), ("\\x41", "A"), ("\\t", "\t"), ("\\-", "-"), ("[\\]]", "]"),
         ("\\S", "a."), ("[^\\n]", "a ."), ("[\\s\\-]", " -"), ("\\]", "]"), ("]", "]"),
         ("}", "}"), ("{", "{"), ("{x}", "{x}"), ("[^-a]", "b.")]
QUANTIFIERS = [("", 1, 1), ("", 1, 1), ("", 1, 1), ("*", 0, 3), ("+", 1, 3), ("?", 0, 1),
               ("*?", 0, 2), ("{2}", 2, 2), ("{1,3}", 1, 3), ("{,2}", 0, 2), ("{2,}", 2, 4),
               ("{0}", 0, 0), ("{0,1}?", 0, 1), ("{,}", 0, 2)]
TEXT = "ab.\n_0é-]A \tx"
CHARS = list("ab.\\()[]{}|*+?^$-,0123dwsxPn:<>=!_é")


def generate(rng):
    """A key, and a string that its grammar could make (not always a match: anchors)."""

    def sample_of(choices):
        if len(choices) == 1 or choices in ("{x}",):
            return choices
        return rng.choice(choices)

    def atom(depth):
        r = rng.random()
        if depth > 2 or r < 0.5:
            pattern, sample = rng.choice(ATOMS)
            return pattern, (lambda: sample if len(sample) <= 1 or pattern.startswith("{")
                             else rng.choice(sample))
        if r < 0.55:
            name = "(?P<n%d>a)" % rng.randint(0, 3)
            return name, lambda: "a"
        if r < 0.62:
            return rng.choice(["^", "$"]), lambda: ""
        inner, sample = alternation(depth + 1)
        return ("(" if r < 0.8 else "(?:") + inner + ")", sample

    def concat(depth):
        parts = []
        for _ in range(rng.randint(0, 3)):
            pattern, sample = atom(depth)
            quantifier, low, high = rng.choice(QUANTIFIERS)
            parts.append((pattern + quantifier, sample, low, high))
        return ("".join(p for p, _, _, _ in parts),
                lambda: "".join("".join(s() for _ in range(rng.randint(lo, hi)))
                                for _, s, lo, hi in parts))

    def alternation(depth):
        branches = [concat(depth) for _ in range(rng.randint(1, 3))]
        return ("|".join(p for p, _ in branches), lambda: rng.choice(branches)[1]())

    if rng.random() < 0.8:
        return alternation(0)
    key = "".join(rng.choice(CHARS) for _ in range(rng.randint(0, 8)))
    return key, lambda: key


def module_for(rng, sample):
    """A module name near the key's language: a sample, maybe after a prefix, maybe mutated."""
    text = sample()
    r = rng.random()
    if r < 0.3:
        text = rng.choice(["x.", "a.b.", "ab", "layers.0.", ".", ""]) + text
    elif r < 0.5:
        text = "".join(rng.choice(TEXT) for _ in range(rng.randint(0, 10)))
    if rng.random() < 0.25 and text:
        k = rng.randrange(len(text))
        text = text[:k] + rng.choice(TEXT) + text[k + 1:]
    return text


def expected(key, module):
    try:
        re.compile(key)
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        try:
            return "match" if re.match(rf"(.*\.)?({key})$", module) else "no match"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except (re.error, OverflowError, RecursionError):
        return "error"


def main():
    out = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                       pathlib.Path(__file__).resolve().parent.parent /
                       "tests/io/fixtures/peft_patterns.jsonl")
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _alarm)
    rng = random.Random(20240613)
    lines = []
    while len(lines) < 2500:
        key, sample = generate(rng)
        module = module_for(rng, sample)
        if len(key) > 40 or len(module) > 24:
            continue
        try:
            lines.append(json.dumps([key, module, expected(key, module)]))
        except Slow:
            continue
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
