"""Short Q&A and thinking-mode drills whose answers are computed, so they are always right.

Arithmetic, unit conversion, capitals, spelling, Python how-tos, definitions; in thinking mode, a
few steps of reasoning before the answer. Each family has its own question templates per split;
the knowledge is shared, so held-out questions ask the same things in words never trained on.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Any, Callable

from . import synthetic as world
from .conversations import Chat, listed, system_turn, user_turn
from .synthetic import SYSTEM_PROMPTS


# --- short Q&A ---------------------------------------------------------------------------------

WORDS = ("apple", "garden", "python", "window", "orange", "rocket", "planet", "silver", "bridge",
         "candle", "forest", "guitar", "island", "jacket", "kitten", "lemon", "market", "pencil",
         "rabbit", "sunset", "tomato", "violin", "winter", "yellow", "castle", "dragon", "flower",
         "hammer", "strawberry", "banana", "letter", "coffee", "mirror", "puzzle", "balloon", "river")
CAPITALS = (("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Italy", "Rome"),
            ("Spain", "Madrid"), ("Portugal", "Lisbon"), ("Egypt", "Cairo"), ("Peru", "Lima"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Kenya", "Nairobi"), ("India", "New Delhi"),
            ("China", "Beijing"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Greece", "Athens"),
            ("Poland", "Warsaw"), ("Finland", "Helsinki"), ("Ireland", "Dublin"), ("Austria", "Vienna"),
            ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"),
            ("Vietnam", "Hanoi"), ("Thailand", "Bangkok"), ("Turkey", "Ankara"), ("Morocco", "Rabat"),
            ("South Korea", "Seoul"), ("Netherlands", "Amsterdam"), ("Denmark", "Copenhagen"),
            ("Hungary", "Budapest"), ("Cuba", "Havana"))
PYTHON_HOWTO = (
    ("get the length of a list", "Use len(items)."),
    ("reverse a list", "Use items.reverse() or items[::-1]."),
    ("sort a list", "Use sorted(items), or items.sort() to sort in place."),
    ("read a whole file", "Use with open(path) as f: text = f.read()."),
    ("convert a string to an integer", "Use int(text)."), ("join a list of strings", "Use ', '.join(words)."),
    ("check if a key is in a dict", "Use key in d."), ("strip whitespace from a string", "Use text.strip()."),
    ("make a string uppercase", "Use text.upper()."), ("get the last item of a list", "Use items[-1]."),
    ("loop over a dict's keys and values", "Use for key, value in d.items():."),
    ("parse a JSON string", "Use json.loads(text)."), ("add an item to a list", "Use items.append(x)."),
    ("round a number to 2 decimals", "Use round(x, 2)."),
    ("split a string on commas", "Use text.split(',')."),
    ("create an empty set", "Use set(); {} is an empty dict."),
    ("get today's date", "Use datetime.date.today()."),
    ("count how often x is in a list", "Use items.count(x)."),
    ("copy a list", "Use items.copy() or list(items)."),
)
TERMS = (
    ("variable", "A variable is a name that refers to a value."),
    ("function", "A function is a named block of code that you can call with arguments."),
    ("loop", "A loop repeats a block of code."), ("dictionary", "A dictionary maps keys to values."),
    ("string", "A string is a sequence of characters."), ("integer", "An integer is a whole number."),
    ("API", "An API is a set of rules that lets programs talk to each other."),
    ("JSON", "JSON is a text format for data made of objects, arrays, strings, numbers, booleans and null."),
    ("compiler", "A compiler translates source code into machine code."),
    ("algorithm", "An algorithm is a step-by-step procedure for solving a problem."),
    ("bug", "A bug is a mistake in a program that makes it behave wrongly."),
    ("recursion", "Recursion is when a function calls itself."),
    ("prime number", "A prime number is a whole number above 1 divisible only by 1 and itself."),
    ("noun", "A noun is a word that names a person, place or thing."),
    ("planet", "A planet is a large body that orbits a star."),
    ("tokenizer", "A tokenizer splits text into tokens, the units a language model reads."),
)
UNITS = (("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("kilograms", "grams", 1000),
         ("hours", "minutes", 60), ("minutes", "seconds", 60), ("days", "hours", 24),
         ("liters", "milliliters", 1000), ("weeks", "days", 7), ("feet", "inches", 12))

Make = Callable[[random.Random], tuple[dict, Any]]  # -> (template slots, reply)


@dataclass(frozen=True)
class Family:
    """One sort of question: its templates in each split, and how to make slots and the reply."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    make: Make


def _arith(r: random.Random) -> tuple[dict, str]:
    op = r.choice("+-*")
    if op == "*":
        a, b = r.randint(2, 12), r.randint(2, 12)
    else:
        b, a = sorted((r.randint(1, 99), r.randint(1, 99)))  # no negative differences
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return {"a": a, "op": op, "b": b}, f"{a} {op} {b} = {result}."


def _convert(r: random.Random) -> tuple[dict, str]:
    big, small, factor = r.choice(UNITS)
    n = r.randint(2, 12)
    return {"n": n, "big": big, "small": small}, f"{n} {big} is {n * factor} {small}."


def _capital(r: random.Random) -> tuple[dict, str]:
    country, capital = r.choice(CAPITALS)
    return {"country": country}, f"The capital of {country} is {capital}."


def _word(answer: Callable[[str], str]) -> Make:
    def make(r: random.Random) -> tuple[dict, str]:
        word = r.choice(WORDS)
        return {"word": word}, answer(word)
    return make


def _pair(pool: tuple, slot: str) -> Make:
    def make(r: random.Random) -> tuple[dict, str]:
        key, answer = r.choice(pool)
        return {slot: key}, answer
    return make


def _compare(r: random.Random) -> tuple[dict, str]:
    a, b = r.sample(range(1, 1000), 2)
    return {"a": a, "b": b}, f"{max(a, b)} is larger."


def _parity(r: random.Random) -> tuple[dict, str]:
    n = r.randint(1, 999)
    return {"n": n}, f"{n} is {'odd' if n % 2 else 'even'}."


QA = {
    "arith": Family(("What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "{a} {op} {b} = ?",
                     "Quick math: {a} {op} {b}"),
                    ("How much is {a} {op} {b}?", "Work out {a} {op} {b} for me."), _arith),
    "convert": Family(("How many {small} are in {n} {big}?", "Convert {n} {big} to {small}."),
                      ("{n} {big} equals how many {small}?",), _convert),
    "capital": Family(("What is the capital of {country}?", "Name the capital city of {country}.",
                       "Capital of {country}?"),
                      ("Which city is the capital of {country}?",), _capital),
    "spell": Family(("Spell the word {word}.", "Spell {word} letter by letter."), ("How do you spell {word}?",),
                    _word(lambda w: f"{w} is spelled {'-'.join(w)}.")),
    "reverse": Family(("Reverse the word {word}.", "What is {word} spelled backwards?"),
                      ("Write {word} backwards.",), _word(lambda w: f"{w} reversed is {w[::-1]}.")),
    "length": Family(("How many letters are in the word {word}?", "Count the letters in {word}."),
                     ("Tell me the number of letters in {word}.",),
                     _word(lambda w: f"The word {w} has {len(w)} letters.")),
    "python": Family(("How do I {topic} in Python?", "In Python, how can I {topic}?",
                      "Python question: how to {topic}?"),
                     ("What's the Python way to {topic}?",), _pair(PYTHON_HOWTO, "topic")),
    "define": Family(("Define {term}.", "What does {term} mean?", "Give a short definition of {term}."),
                     ("Explain the term {term} briefly.",), _pair(TERMS, "term")),
    "compare": Family(("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?"),
                      ("Out of {a} and {b}, which is greater?",), _compare),
    "parity": Family(("Is {n} even or odd?",), ("Tell me whether {n} is odd or even.",), _parity),
}


def _ask(rng: random.Random, families: dict[str, Family], split: str) -> tuple[str, Any]:
    family = families[rng.choice(tuple(families))]
    slots, reply = family.make(rng)
    return rng.choice(getattr(family, split)).format(**slots), reply


def qa(rng: random.Random, split: str) -> Chat:
    messages = list(system_turn(rng, 0.2, SYSTEM_PROMPTS + ("Answer briefly.",)))
    for _ in range(rng.choice((0, 0, 0, 1, 2))):  # sometimes a turn or two of history
        question, answer = _ask(rng, QA, split)
        messages += [user_turn(question), {"role": "assistant", "content": answer}]
    question, answer = _ask(rng, QA, split)
    return Chat(tuple(messages) + (user_turn(question),), {"role": "assistant", "content": answer})


# --- thinking mode: short step-by-step reasoning, then the answer ----------------------------

def _steps(r: random.Random) -> tuple[dict, tuple[str, str]]:
    a, b, c = r.randint(2, 12), r.randint(2, 12), r.randint(1, 50)
    form = r.randrange(3)
    if form == 0:
        expr, result = f"{a} * {b} + {c}", a * b + c
        steps = f"First multiply: {a} * {b} = {a * b}. Then add: {a * b} + {c} = {result}."
    elif form == 1:
        expr, result = f"{c} + {a} * {b}", c + a * b
        steps = f"Multiplication comes first: {a} * {b} = {a * b}. Then {c} + {a * b} = {result}."
    else:
        expr, result = f"({c} + {a}) * {b}", (c + a) * b
        steps = f"The parentheses come first: {c} + {a} = {c + a}. Then {c + a} * {b} = {result}."
    return {"expr": expr}, (steps, f"{expr} = {result}.")


def _story(r: random.Random) -> tuple[dict, tuple[str, str]]:
    name = r.choice(world.FIRST_NAMES)
    things = r.choice(("apples", "marbles", "stickers", "coins", "pencils"))
    a, b = r.randint(5, 40), r.randint(1, 20)
    c = r.randint(1, a + b)
    steps = (f"{name} starts with {a} {things}. Getting {b} more gives {a} + {b} = {a + b}. "
             f"Giving away {c} leaves {a + b} - {c} = {a + b - c}.")
    slots = {"name": name, "things": things, "a": a, "b": b, "c": c}
    return slots, (steps, f"{name} has {a + b - c} {things} now.")


def _letters(r: random.Random) -> tuple[dict, tuple[str, str]]:
    word = r.choice(WORDS)
    absent = [c for c in string.ascii_lowercase if c not in word]
    letter = r.choice(word) if r.random() < 0.85 else r.choice(absent)
    at = [i + 1 for i, c in enumerate(word) if c == letter]
    found = f"The letter {letter} is at position{'s' if len(at) > 1 else ''} {listed(at)}." if at else \
        f"The letter {letter} does not appear."
    steps = f"Spell it out: {'-'.join(word)}. {found} That makes {len(at)}."
    return {"letter": letter, "word": word}, (
        steps, f"The letter {letter} appears {len(at)} time{'' if len(at) == 1 else 's'} in {word}.")


def _decimals(r: random.Random) -> tuple[dict, tuple[str, str]]:
    whole = r.randint(0, 20)
    wholes = (whole, whole if r.random() < 0.6 else r.randint(0, 20))
    x, y = [f"{w}.{str(r.randint(1, 99)).rstrip('0')}" for w in wholes]
    while x == y:
        y = f"{wholes[1]}.{str(r.randint(1, 99)).rstrip('0')}"
    big = max(x, y, key=float)
    if wholes[0] != wholes[1]:
        steps = f"Compare the whole parts first: {wholes[0]} and {wholes[1]}. So {big} is larger."
    else:
        width = max(len(x), len(y)) - len(str(whole)) - 1
        dx, dy = (v.split(".")[1].ljust(width, "0") for v in (x, y))
        steps = (f"Both have the whole part {whole}. With the same number of decimals: 0.{dx} and 0.{dy}. "
                 f"{max(dx, dy)} > {min(dx, dy)}, so {big} is larger.")
    return {"x": x, "y": y}, (steps, f"{big} is larger.")


def _chain(r: random.Random) -> tuple[dict, tuple[str, str]]:
    (big, middle, small), (f1, f2) = r.choice(((("hours", "minutes", "seconds"), (60, 60)),
                                               (("days", "hours", "minutes"), (24, 60)),
                                               (("weeks", "days", "hours"), (7, 24))))
    n = r.randint(2, 12)
    steps = (f"{n} {big} = {n} * {f1} = {n * f1} {middle}. "
             f"{n * f1} {middle} = {n * f1} * {f2} = {n * f1 * f2} {small}.")
    return {"n": n, "big": big, "small": small}, (steps, f"{n} {big} is {n * f1 * f2} {small}.")


def _sort(r: random.Random) -> tuple[dict, tuple[str, str]]:
    numbers = r.sample(range(1, 100), r.randint(3, 6))
    ordered = sorted(numbers)
    steps = " ".join([f"The smallest is {ordered[0]}."] + [f"Next is {n}." for n in ordered[1:-1]]
                     + [f"The largest is {ordered[-1]}."])
    return {"numbers": ", ".join(map(str, numbers))}, (steps, ", ".join(map(str, ordered)))


THINKING = {
    "steps": Family(("What is {expr}?", "Compute {expr}.", "Evaluate {expr} step by step."),
                    ("Can you work out {expr}?",), _steps),
    "story": Family(("{name} has {a} {things}. {name} gets {b} more and gives away {c}. "
                     "How many {things} does {name} have now?",
                     "{name} had {a} {things}, got {b} more, then gave {c} to a friend. How many are left?"),
                    ("Starting with {a} {things}, {name} receives {b} and loses {c}. What is the total now?",),
                    _story),
    "letters": Family(("How many times does the letter {letter} appear in {word}?",
                       "Count the letter {letter} in {word}."),
                      ("In the word {word}, how often does {letter} occur?",), _letters),
    "decimals": Family(("Which is larger, {x} or {y}?", "Compare {x} and {y}. Which is bigger?"),
                       ("Between {x} and {y}, which is the larger number?",), _decimals),
    "chain": Family(("How many {small} are there in {n} {big}?",
                     "Convert {n} {big} to {small}, showing the steps."),
                    ("Express {n} {big} in {small}.",), _chain),
    "sort": Family(("Sort these numbers from smallest to largest: {numbers}.",
                    "Put {numbers} in increasing order."),
                   ("Arrange {numbers} in ascending order.",), _sort),
}


def thinking(rng: random.Random, split: str) -> Chat:
    question, (reasoning, answer) = _ask(rng, THINKING, split)
    reply = {"role": "assistant", "reasoning_content": reasoning, "content": answer}
    return Chat(system_turn(rng, 0.2) + (user_turn(question),), reply, thinking=True)
