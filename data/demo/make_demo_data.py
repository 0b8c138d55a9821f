#!/usr/bin/python3
"""Writes the demo dataset data/demo/train.jsonl and data/demo/eval.jsonl (alpaca format).

Deterministic (fixed seed, no dependencies): run `/usr/bin/python3 data/demo/make_demo_data.py` from the repo
root (or pass an output folder) and the files come out byte-identical.

The tasks are small and regular on purpose, so a tiny 4-layer model fine-tuned for a few hundred steps on a CPU
shows visibly learned behaviour: every answer follows one fixed style ("The capital of France is Paris.",
"7 plus 5 is 12.", "The opposite of hot is cold.", "APPLE"). Eval examples are held out from the same pools
(other phrasings of the same facts, other number pairs), so eval loss falls as the style and facts are learned.
"""
import json
import os
import random
import sys

SEED = 1234

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Russia", "Moscow"), ("Poland", "Warsaw"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Australia", "Canberra"),
    ("New Zealand", "Wellington"), ("South Korea", "Seoul"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"), ("Cuba", "Havana"), ("Iceland", "Reykjavik"),
]
CAPITAL_QUESTIONS = [
    "What is the capital of {c}?",
    "Name the capital of {c}.",
    "Which city is the capital of {c}?",
    "Tell me the capital city of {c}.",
    "What city is the capital of {c}?",
    "Do you know the capital of {c}?",
    "Which city serves as the capital of {c}?",
]

ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("old", "young"),
    ("up", "down"), ("open", "closed"), ("early", "late"), ("full", "empty"), ("hard", "soft"), ("high", "low"),
    ("long", "short"), ("rich", "poor"), ("strong", "weak"), ("wet", "dry"), ("loud", "quiet"), ("thick", "thin"),
    ("clean", "dirty"), ("cheap", "expensive"), ("first", "last"), ("near", "far"), ("inside", "outside"),
    ("true", "false"), ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("begin", "end"), ("day", "night"),
    ("left", "right"), ("north", "south"), ("east", "west"), ("heavy", "light"), ("good", "bad"), ("new", "old"),
]
ANTONYM_QUESTIONS = ["What is the opposite of {w}?", "Give the antonym of {w}.", "What word means the opposite of {w}?"]

WORDS = [
    "apple", "river", "stone", "cloud", "tiger", "green", "house", "bread", "music", "light", "water", "chair",
    "table", "plant", "smile", "train", "horse", "beach", "dream", "paper", "glass", "sugar", "storm", "ocean",
    "eagle", "lemon", "piano", "heart", "night", "world", "cat", "dog", "sun", "moon", "tree", "bird", "fish",
    "book", "door", "road", "ship", "star", "rain", "snow", "fire", "wind", "milk", "salt", "gold", "king",
]
UPPER_INSTRUCTIONS = ["Convert the word to uppercase.", "Write this word in capital letters."]
PLURALS = {
    "cat": "cats", "dog": "dogs", "tree": "trees", "bird": "birds", "book": "books", "house": "houses", "box": "boxes",
    "bus": "buses", "child": "children", "mouse": "mice", "foot": "feet", "tooth": "teeth", "man": "men",
    "woman": "women", "city": "cities", "baby": "babies", "leaf": "leaves", "knife": "knives", "glass": "glasses",
    "apple": "apples", "star": "stars", "ship": "ships", "horse": "horses", "story": "stories", "wolf": "wolves",
}


def records():
    out = []
    for country, capital in CAPITALS:
        for q in CAPITAL_QUESTIONS:
            out.append(("capital", q.format(c=country), "", f"The capital of {country} is {capital}."))
    for a in range(0, 21):
        for b in range(0, 21):
            out.append(("plus", f"What is {a} plus {b}?", "", f"{a} plus {b} is {a + b}."))
            if a >= b:
                out.append(("minus", f"What is {a} minus {b}?", "", f"{a} minus {b} is {a - b}."))
    for a in range(1, 11):
        for b in range(1, 11):
            out.append(("times", f"What is {a} times {b}?", "", f"{a} times {b} is {a * b}."))
    for w, o in ANTONYMS:
        for q in ANTONYM_QUESTIONS:
            out.append(("antonym", q.format(w=w), "", f"The opposite of {w} is {o}."))
            out.append(("antonym", q.format(w=o), "", f"The opposite of {o} is {w}."))
    for w in WORDS:
        for ins in UPPER_INSTRUCTIONS:
            out.append(("upper", ins, w, w.upper()))
    for w, p in PLURALS.items():
        out.append(("plural", f"What is the plural of {w}?", "", f"The plural of {w} is {p}."))
    for n in range(0, 100):
        out.append(("next", f"What number comes after {n}?", "", f"The number after {n} is {n + 1}."))
    pair_rng = random.Random(SEED + 1)
    pairs = set()
    while len(pairs) < 200:
        a, b = pair_rng.randrange(0, 100), pair_rng.randrange(0, 100)
        if a != b:
            pairs.add((a, b))
    for a, b in sorted(pairs):
        big, small = max(a, b), min(a, b)
        out.append(("larger", f"Which is larger, {a} or {b}?", "", f"{big} is larger than {small}."))
    return out


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    rng = random.Random(SEED)
    recs = records()
    rng.shuffle(recs)
    # Hold out ~100 examples, spread over the kinds in proportion to their counts.
    eval_recs, train_recs = recs[:100], recs[100:]
    for name, rows in (("train.jsonl", train_recs), ("eval.jsonl", eval_recs)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8", newline="\n") as f:
            for _kind, instruction, inp, output in rows:
                f.write(json.dumps({"instruction": instruction, "input": inp, "output": output}, ensure_ascii=False) + "\n")
    print(f"wrote {len(train_recs)} train and {len(eval_recs)} eval examples to {out_dir}")


if __name__ == "__main__":
    main()
