#!/usr/bin/python3
"""Generates assets/tiny_corpus.txt: the English text the tiny models' tokenizer is trained on.

Deterministic (fixed seed, stdlib only): rerunning it reproduces the checked-in file byte for byte.
The text mixes alpaca-style instruction/response pairs (simple facts, arithmetic, word tasks) with
plain prose, so a small BPE vocabulary covers what the demo fine-tunes on.

    /usr/bin/python3 assets/make_corpus.py > assets/tiny_corpus.txt
"""
import random
import sys

rng = random.Random(20240611)

HEADER = ("Below is an instruction that describes a task. "
          "Write a response that appropriately completes the request.")
HEADER_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.")

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Australia", "Canberra"), ("Russia", "Moscow"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
    ("Hungary", "Budapest"), ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Switzerland", "Bern"),
    ("South Korea", "Seoul"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"), ("Cuba", "Havana"), ("Iceland", "Reykjavik"), ("New Zealand", "Wellington"),
    ("United Kingdom", "London"), ("United States", "Washington, D.C."), ("Ghana", "Accra"), ("Iran", "Tehran"),
]
ANIMALS = [
    # name, sound, legs, home, food, kind
    ("cat", "meows", 4, "a house", "fish and meat", "mammal"), ("dog", "barks", 4, "a house", "meat", "mammal"),
    ("cow", "moos", 4, "a farm", "grass", "mammal"), ("horse", "neighs", 4, "a stable", "hay and oats", "mammal"),
    ("sheep", "bleats", 4, "a meadow", "grass", "mammal"), ("pig", "oinks", 4, "a farm", "almost anything", "mammal"),
    ("duck", "quacks", 2, "a pond", "seeds and insects", "bird"), ("owl", "hoots", 2, "a tree", "mice", "bird"),
    ("lion", "roars", 4, "the savanna", "meat", "mammal"), ("frog", "croaks", 4, "a pond", "insects", "amphibian"),
    ("bee", "buzzes", 6, "a hive", "nectar", "insect"), ("snake", "hisses", 0, "the grass", "mice and eggs", "reptile"),
    ("spider", "makes no sound", 8, "a web", "insects", "arachnid"), ("wolf", "howls", 4, "the forest", "meat", "mammal"),
    ("chicken", "clucks", 2, "a farm", "grain", "bird"), ("mouse", "squeaks", 4, "a hole in the wall", "cheese and seeds", "mammal"),
    ("elephant", "trumpets", 4, "the savanna", "leaves and grass", "mammal"), ("goat", "bleats", 4, "a hill", "grass", "mammal"),
]
COLORS = [
    ("the sky on a clear day", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("a ripe banana", "yellow"), ("a ripe tomato", "red"), ("an orange", "orange"), ("a lemon", "yellow"),
    ("milk", "white"), ("a carrot", "orange"), ("chocolate", "brown"), ("a strawberry", "red"),
    ("the sun in a drawing", "yellow"), ("an emerald", "green"), ("a plum", "purple"), ("ash", "grey"),
]
OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("up", "down"), ("open", "closed"),
    ("light", "dark"), ("early", "late"), ("full", "empty"), ("young", "old"), ("hard", "soft"), ("wet", "dry"),
    ("loud", "quiet"), ("strong", "weak"), ("rich", "poor"), ("inside", "outside"), ("begin", "end"),
    ("win", "lose"), ("buy", "sell"), ("tall", "short"), ("clean", "dirty"), ("near", "far"), ("true", "false"),
]
PLURALS = [
    ("cat", "cats"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("tooth", "teeth"),
    ("foot", "feet"), ("man", "men"), ("woman", "women"), ("city", "cities"), ("leaf", "leaves"),
    ("knife", "knives"), ("bus", "buses"), ("baby", "babies"), ("sheep", "sheep"), ("fish", "fish"),
    ("person", "people"), ("potato", "potatoes"), ("day", "days"), ("glass", "glasses"), ("wolf", "wolves"),
]
SYNONYMS = [
    ("happy", "glad"), ("big", "large"), ("small", "little"), ("quick", "fast"), ("begin", "start"),
    ("smart", "clever"), ("angry", "mad"), ("easy", "simple"), ("shut", "close"), ("gift", "present"),
    ("choose", "pick"), ("house", "home"), ("afraid", "scared"), ("finish", "end"), ("talk", "speak"),
]
WORDS = [
    "apple", "river", "garden", "window", "pencil", "yellow", "planet", "summer", "winter", "bottle", "orange",
    "teacher", "doctor", "kitchen", "bread", "music", "paper", "school", "market", "forest", "mountain", "ocean",
    "island", "bridge", "candle", "silver", "castle", "rabbit", "turtle", "basket", "letter", "number", "answer",
    "question", "friend", "family", "morning", "evening", "cloud", "storm", "flower", "tiger", "zebra", "piano",
    "guitar", "button", "pocket", "ladder", "rocket", "engine", "jacket", "violin", "carpet", "dragon", "butter",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
PLANETS = ["Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
NAMES = ["Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack", "Lena", "Max", "Nora",
         "Omar", "Paula", "Sam", "Tom", "Zoe"]
THINGS = ["apples", "books", "coins", "pencils", "marbles", "stickers", "cookies", "stamps", "shells", "cards"]


def cap(s):
    return s[0].upper() + s[1:]


def fact_pairs():
    out = []
    for country, city in CAPITALS:
        out.append((rng.choice(["What is the capital of {c}?", "Name the capital city of {c}.",
                                "Which city is the capital of {c}?"]).format(c=country),
                    rng.choice(["The capital of {c} is {k}.", "{k} is the capital of {c}."]).format(c=country, k=city)))
    for name, sound, legs, home, food, kind in ANIMALS:
        out.append((f"What sound does a {name} make?",
                    f"A {name} {sound}." if sound != "makes no sound" else f"A {name} usually makes no sound."))
        out.append((f"How many legs does a {name} have?", f"A {name} has {NUMBER_WORDS[legs]} legs."))
        out.append((f"Where does a {name} live?", f"A {name} often lives in {home}."))
        out.append((f"What does a {name} eat?", f"A {name} eats {food}."))
        out.append((f"Is a {name} a {kind}?", f"Yes, a {name} is a {kind}."))
    for thing, color in COLORS:
        out.append((f"What color is {thing}?", f"{cap(thing)} is {color}."))
    for i, day in enumerate(DAYS):
        out.append((f"What day comes after {day}?", f"The day after {day} is {DAYS[(i + 1) % 7]}."))
        out.append((f"What day comes before {day}?", f"The day before {day} is {DAYS[(i - 1) % 7]}."))
    for i, month in enumerate(MONTHS):
        out.append((f"Which month comes after {month}?", f"{MONTHS[(i + 1) % 12]} comes after {month}."))
        out.append((f"What number month is {month}?", f"{month} is month number {i + 1} of the year."))
    for i, planet in enumerate(PLANETS):
        out.append((f"Which planet is number {i + 1} from the sun?", f"{planet} is planet number {i + 1} from the sun."))
    out += [
        ("How many days are in a week?", "There are seven days in a week."),
        ("How many months are in a year?", "There are twelve months in a year."),
        ("How many hours are in a day?", "There are 24 hours in a day."),
        ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
        ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
        ("What do bees make?", "Bees make honey and wax."),
        ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius, which is 32 degrees Fahrenheit."),
        ("At what temperature does water boil?", "At sea level, water boils at 100 degrees Celsius."),
        ("What gas do plants take in?", "Plants take in carbon dioxide and give off oxygen."),
        ("What is the opposite of north?", "The opposite of north is south."),
        ("How many sides does a triangle have?", "A triangle has three sides."),
        ("How many sides does a square have?", "A square has four sides of equal length."),
        ("How many sides does a hexagon have?", "A hexagon has six sides."),
        ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
        ("Which is heavier, a kilogram of feathers or a kilogram of stones?", "They weigh the same: one kilogram each."),
    ]
    return out


def arithmetic_pairs(n):
    out = []
    for _ in range(n):
        kind = rng.randrange(6)
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if kind == 0:
            out.append((rng.choice(["What is {a} plus {b}?", "Add {a} and {b}.", "Calculate {a} + {b}."]).format(a=a, b=b),
                        rng.choice(["{a} plus {b} is {r}.", "{a} + {b} = {r}", "The sum is {r}."]).format(a=a, b=b, r=a + b)))
        elif kind == 1:
            a, b = max(a, b), min(a, b)
            out.append((rng.choice(["What is {a} minus {b}?", "Subtract {b} from {a}.", "Calculate {a} - {b}."]).format(a=a, b=b),
                        rng.choice(["{a} minus {b} is {r}.", "{a} - {b} = {r}", "The difference is {r}."]).format(a=a, b=b, r=a - b)))
        elif kind == 2:
            a, b = rng.randint(0, 12), rng.randint(0, 12)
            out.append((rng.choice(["What is {a} times {b}?", "Multiply {a} by {b}.", "Calculate {a} * {b}."]).format(a=a, b=b),
                        rng.choice(["{a} times {b} is {r}.", "{a} * {b} = {r}", "The product is {r}."]).format(a=a, b=b, r=a * b)))
        elif kind == 3:
            b = rng.randint(1, 12)
            r = rng.randint(0, 12)
            out.append((f"What is {b * r} divided by {b}?", f"{b * r} divided by {b} is {r}."))
        elif kind == 4:
            name = rng.choice(NAMES)
            thing = rng.choice(THINGS)
            x, y = rng.randint(1, 20), rng.randint(1, 20)
            out.append((f"{name} has {x} {thing} and gets {y} more. How many {thing} does {name} have now?",
                        f"{name} starts with {x} {thing} and gets {y} more, so {name} has {x} + {y} = {x + y} {thing}."))
        else:
            nums = [rng.randint(0, 50) for _ in range(rng.randint(3, 5))]
            task = rng.choice(["largest", "smallest", "sorted"])
            if task == "largest":
                out.append(("Find the largest number in the list.", ", ".join(map(str, nums)),
                            f"The largest number is {max(nums)}."))
            elif task == "smallest":
                out.append(("Find the smallest number in the list.", ", ".join(map(str, nums)),
                            f"The smallest number is {min(nums)}."))
            else:
                out.append(("Sort the numbers from smallest to largest.", ", ".join(map(str, nums)),
                            ", ".join(map(str, sorted(nums)))))
    return out


def word_pairs(n):
    out = []
    for _ in range(n):
        w = rng.choice(WORDS)
        kind = rng.randrange(9)
        if kind == 0:
            out.append(("Reverse the letters of the word.", w, f"The word reversed is \"{w[::-1]}\"."))
        elif kind == 1:
            out.append((f"Spell the word \"{w}\" letter by letter.", "-".join(w.upper())))
        elif kind == 2:
            out.append((f"How many letters are in the word \"{w}\"?", f"The word \"{w}\" has {len(w)} letters."))
        elif kind == 3:
            out.append((f"What is the first letter of \"{w}\"?", f"The first letter of \"{w}\" is \"{w[0]}\"."))
        elif kind == 4:
            out.append(("Write the word in capital letters.", w, w.upper()))
        elif kind == 5:
            a, b = rng.choice(OPPOSITES)
            out.append((f"What is the opposite of \"{a}\"?", f"The opposite of \"{a}\" is \"{b}\"."))
        elif kind == 6:
            s, p = rng.choice(PLURALS)
            out.append((f"What is the plural of \"{s}\"?", f"The plural of \"{s}\" is \"{p}\"."))
        elif kind == 7:
            a, b = rng.choice(SYNONYMS)
            out.append((f"Give a word that means the same as \"{a}\".", f"A word that means \"{a}\" is \"{b}\"."))
        else:
            ws = rng.sample(WORDS, rng.randint(3, 5))
            out.append(("Sort these words in alphabetical order.", ", ".join(ws), ", ".join(sorted(ws))))
    return out


PROSE = """\
The small town woke up slowly on Saturday morning. The baker opened his shop at six, and the smell of fresh bread
drifted down the street. Children walked to the market with their parents, and an old dog slept in the sun by the
fountain. Nobody was in a hurry, because the weekend had just begun.
Learning to read takes time. First a child learns the letters, then short words like "cat" and "sun", and later
whole sentences. Reading every day, even for ten minutes, helps a great deal. Good books make the work feel like
play.
Water moves in a cycle. The sun warms the ocean, water rises into the air as vapor, and the vapor forms clouds.
When the clouds grow heavy, rain or snow falls back to the ground. Rivers carry the water to the sea, and the
cycle starts again.
A healthy breakfast gives you energy for the day. Fruit, bread, eggs, milk and oats are all good choices. Drinking
a glass of water in the morning is a simple habit that many people find helpful.
The library is a quiet place full of books, maps and newspapers. Anyone can borrow a book for a few weeks and bring
it back when they are done. Librarians are happy to help you find what you are looking for.
Trains connect cities across the country. A fast train can travel more than 300 kilometers in an hour, while a
slow local train stops at every small station. Many people read, sleep or look out of the window during the trip.
To plant a tree, dig a hole twice as wide as the roots, place the tree in the middle, fill the hole with soil and
water it well. Young trees need water every week during their first summer.
Mathematics is the language of patterns. Counting, adding and measuring are things we do every day, often without
noticing. When you share a pizza equally among four friends, each friend gets one quarter of it.
The moon goes around the Earth about once a month. It has no light of its own; it shines because it reflects light
from the sun. Its shape seems to change from a thin crescent to a full circle and back again.
A good answer is short, correct and clear. It repeats the important words of the question, gives the result, and
explains the steps when the question asks for them.
"""


def render(pair):
    if len(pair) == 3:
        instr, inp, resp = pair
        return f"{HEADER_INPUT}\n\n### Instruction:\n{instr}\n\n### Input:\n{inp}\n\n### Response:\n{resp}\n"
    instr, resp = pair
    return f"{HEADER}\n\n### Instruction:\n{instr}\n\n### Response:\n{resp}\n"


def main():
    pairs = fact_pairs() * 2 + arithmetic_pairs(450) + word_pairs(450)
    rng.shuffle(pairs)
    paragraphs = [p for p in PROSE.split("\n") if p]
    chunks = []
    for i, pair in enumerate(pairs):
        chunks.append(render(pair))
        if i % 20 == 0:
            chunks.append(" ".join(paragraphs) + "\n" if i % 200 == 0 else rng.choice(paragraphs) + "\n")
    sys.stdout.write("\n".join(chunks))


if __name__ == "__main__":
    main()
