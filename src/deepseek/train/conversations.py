"""Tool-call, tool-answer and JSON conversations: the request, and the reply the model must learn.

A generator takes a seeded `random.Random` and a split and returns a `Chat`. Every user turn is
one of its split's templates filled with values from `synthetic.py`; the held-out templates
(like the held-out tool schemas) never occur in training.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass, field
from typing import Callable

from deepseek.chat.dsml import json_text

from . import synthetic as world
from .synthetic import CITIES, SYSTEM_PROMPTS, date, money, person, text


@dataclass(frozen=True)
class Chat:
    messages: tuple[dict, ...]
    reply: dict  # the assistant message to learn: content, reasoning_content or tool_calls
    tools: tuple[dict, ...] | None = None
    expected: dict = field(default_factory=dict)
    thinking: bool = False


def system_turn(rng: random.Random, chance: float,
                prompts: tuple[str, ...] = SYSTEM_PROMPTS) -> tuple[dict, ...]:
    """A system message, with probability `chance` (else none)."""
    return ({"role": "system", "content": rng.choice(prompts)},) if rng.random() < chance else ()


def user_turn(content: str) -> dict:
    return {"role": "user", "content": content}


def listed(items: list) -> str:
    """Items joined the English way: "a", "a and b", "a, b and c"."""
    items = [str(item) for item in items]
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


# --- tools -------------------------------------------------------------------------------------

# User phrasings of a tool request. {details}: "from Paris to Rome on 2025-03-14";
# {fields}: "origin: Paris, destination: Rome". Held-out ones never appear in training.
TOOL_FRAMES = {
    "train": (
        "Please {action} {details}.", "Can you {action} {details}?", "Could you {action} {details}?",
        "I need to {action} {details}.", "I want to {action} {details}.", "I'd like to {action} {details}.",
        "Help me {action} {details}.", "Please help me {action} {details}.",
        "Go ahead and {action} {details}.", "Hey, {action} {details}.", "Quick one: {action} {details}.",
        "Task: {action} {details}.", "Let's {action} {details}.", "Time to {action} {details}.",
        "Can you please {action} {details}?", "I'm trying to {action} {details}.",
        "Kindly {action} {details}.", "Use a tool to {action} {details}.", "{Action} {details}, please.",
        "{Action} {details} right away.", "We should {action} {details}.",
        "My boss asked me to {action} {details}. Can you do it?",
        "Please {action} with these details: {fields}.", "{Action}. Details: {fields}.",
        "Request: {action} ({fields}).", "Can you {action}? Use {fields}.",
    ),
    "heldout": (
        "Would it be possible to {action} {details}?", "Do me a favor and {action} {details}.",
        "I was hoping you could {action} {details}.", "Any chance you can {action} {details}?",
        "Urgent: {action} {details}!", "Hi there! Could you quickly {action} {details}?",
        "{Action} {details} for me, thanks.", "Is there a way to {action} {details}?",
        "I'd appreciate it if you could {action}. Here is the info - {fields}.",
        "{Action} using {fields}, thanks.",
    ),
}

# How an answer from a tool result reads: {summary} "the flight is booked" / "I found 7 flights".
ANSWER_FRAMES = {
    "train": ("Done: {summary}. {Facts}.", "{Summary}. {Facts}.", "OK, {summary}; {facts}.",
              "Here you go: {summary}. {Facts}.", "Great news, {summary}. {Facts}.",
              "The tool says {summary}. {Facts}."),
    "heldout": ("All set, {summary}. {Facts}.", "According to the result, {summary}, and {facts}.",
                "Result: {summary}. {Facts}."),
}


def _request(rng: random.Random, tool: world.Tool, args: dict, split: str) -> str:
    """The user's request for a call of `tool` with `args`, each value written out literally."""
    frame = rng.choice(TOOL_FRAMES[split])
    params = [p for p in tool.params if p.key in args]
    if rng.random() < 0.5:
        rng.shuffle(params)
    details = rng.choice((" ", ", ")).join(p.phrase(args[p.key], rng) for p in params)
    fields = rng.choice((", ", "; ")).join(p.field(args[p.key]) for p in params)
    action = tool.action(rng)
    return frame.format(action=action, Action=_capitalised(action), details=details, fields=fields)


def _answer(rng: random.Random, tool: world.Tool, found: dict, split: str) -> str:
    """A short answer that copies the values of a tool result."""
    status = world.VERBS[tool.verb].status  # actions report a status, searches a count
    if status:
        summary = f"the {tool.noun.text} is {found['status']}"
    elif "count" in found:
        summary = f"I found {found['count']} {tool.noun.plural}"
    else:
        summary = f"here is the {tool.noun.text}"
    told = {"count", "status"} if status else {"count"}
    facts = listed([f"the {key.replace('_', ' ')} is {text(value)}" for key, value in found.items()
                    if key not in told])
    return rng.choice(ANSWER_FRAMES[split]).format(summary=summary, Summary=_capitalised(summary),
                                                   facts=facts, Facts=_capitalised(facts))


def _capitalised(words: str) -> str:
    return words[0].upper() + words[1:]


def made_up(rng: random.Random, split: str, invented: float) -> bool:
    """Whether this training example uses made-up names, with probability `invented` (held-out
    examples never do; at 0 no random number is drawn, so the other examples stay as they were)."""
    return split == "train" and invented > 0 and rng.random() < invented


def _offer(rng: random.Random, split: str, invented: float) -> tuple[world.Tool, tuple[dict, ...]]:
    """A target tool and the 1-3 tools of the request; distractors often share its verb or noun.
    `invented`: the chance that the target is made up (`synthetic.invented_tool`)."""
    pool = world.tools(split)
    target = world.invented_tool(rng) if made_up(rng, split, invented) else rng.choice(pool)
    chosen = [target]
    for _ in range(rng.randint(0, 2)):
        names = {tool.name for tool in chosen}
        others = [t for t in pool if t.name not in names]
        related = [t for t in others if t.verb == target.verb or t.noun == target.noun]
        chosen.append(rng.choice(related if related and rng.random() < 0.6 else others))
    rng.shuffle(chosen)
    return target, tuple(tool.schema() for tool in chosen)


def _call(rng: random.Random, name: str, arguments: dict) -> dict:
    call_id = "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=24))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json_text(arguments)}}


def tool_call(rng: random.Random, split: str, invented: float = 0.0) -> Chat:
    target, offered = _offer(rng, split, invented)
    args = world.arguments(rng, target, made_up(rng, split, invented))
    user = user_turn(_request(rng, target, args, split))
    reply = {"role": "assistant", "content": None, "tool_calls": [_call(rng, target.name, args)]}
    return Chat(system_turn(rng, 0.3) + (user,), reply, offered, {"name": target.name, "arguments": args})


def tool_answer(rng: random.Random, split: str, invented: float = 0.0) -> Chat:
    target, offered = _offer(rng, split, invented)
    args = world.arguments(rng, target, made_up(rng, split, invented))
    call = _call(rng, target.name, args)
    found = world.result(rng, target, args)
    messages = system_turn(rng, 0.3) + (
        user_turn(_request(rng, target, args, split)),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": json_text(found)})
    reply = {"role": "assistant", "content": _answer(rng, target, found, split)}
    return Chat(messages, reply, offered)


# --- JSON --------------------------------------------------------------------------------------

def _shopping(r: random.Random) -> dict:
    items = r.sample(("apples", "bread", "milk", "eggs", "rice", "cheese", "tomatoes", "coffee", "pasta"),
                     r.randint(2, 5))
    return {"items": items, "count": len(items)}  # the count is derived, not copied


# (make a record, sentences that state all of its fields)
RECORDS: tuple[tuple[Callable[[random.Random], dict], tuple[str, ...]], ...] = (
    (lambda r: {"name": person(r), "age": r.randint(18, 90), "city": r.choice(CITIES),
                "job": r.choice(("teacher", "nurse", "engineer", "chef", "pilot", "designer", "baker"))},
     ("{name} is a {age}-year-old {job} who lives in {city}.",
      "Meet {name}: {job}, {age} years old, based in {city}.")),
    (lambda r: {"product": r.choice(("desk lamp", "backpack", "coffee mug", "keyboard", "umbrella")),
                "price": money(2, 900)(r), "color": r.choice(("red", "blue", "green", "black", "white")),
                "stock": r.randint(0, 500)},
     ("The {color} {product} costs {price} dollars and {stock} are in stock.",
      "{product} ({color}): price {price}, {stock} units available.")),
    (lambda r: {"title": r.choice(("The Silent Harbor", "Paper Moons", "A Map of Stars", "Winter Letters")),
                "author": person(r), "year": r.randint(1900, 2024), "pages": r.randint(80, 900)},
     ('"{title}" by {author} came out in {year} and has {pages} pages.',
      '{author} wrote "{title}" in {year}; it is {pages} pages long.')),
    (lambda r: {"event": r.choice(("tech conference", "book fair", "jazz festival", "science fair")),
                "date": date(r), "city": r.choice(CITIES), "attendees": r.randint(20, 5000)},
     ("The {event} in {city} is on {date} and expects {attendees} attendees.",
      "{attendees} people will attend the {event} on {date} in {city}.")),
    (lambda r: {"pet": r.choice(("Rex", "Luna", "Milo", "Bella", "Coco")), "owner": person(r),
                "species": r.choice(("dog", "cat", "parrot", "rabbit", "turtle")), "age": r.randint(1, 15)},
     ("{owner} has a {age}-year-old {species} called {pet}.",
      "{pet} is a {species}, {age} years old, owned by {owner}.")),
    (lambda r: {"order_id": world.code("ORD-", 6)(r), "item": r.choice(("chairs", "lamps", "mugs", "pens")),
                "quantity": r.randint(1, 12), "total": money(5, 900)(r)},
     ("Order {order_id} has {quantity} {item} for a total of {total}.",
      "{quantity} {item} were ordered under {order_id}; the total is {total}.")),
    (_shopping, ("Shopping list: {items}.", "Please buy {items}.")),
    (lambda r: {"city": r.choice(CITIES), "temperature": r.randint(-10, 38), "humidity": r.randint(20, 95),
                "condition": r.choice(("sunny", "cloudy", "rainy", "windy"))},
     ("In {city} it is {temperature} degrees and {condition}, humidity {humidity} percent.",
      "{city}: {condition}, {temperature} degrees, {humidity}% humidity.")),
)

JSON_FRAMES = {
    "train": (
        "Return JSON with keys {keys}: {content}",
        "Extract {keys} from this text and reply in JSON.\n{content}",
        "{content}\nGive me a JSON object with the keys {keys}.",
        "Read the text and output json with the fields {keys}.\nText: {content}",
        "Convert to JSON (keys: {keys}): {content}", "Fill a JSON object with {keys} using this: {content}",
        "JSON only, keys {keys}. {content}",
        "Here is some text: {content} Respond with a json object that has {keys}.",
    ),
    "heldout": (
        "As JSON, using the keys {keys}, describe this: {content}",
        "Please produce a json object containing {keys} for the following.\n{content}",
        "{content}\n\nJSON keys wanted: {keys}",
    ),
}


def _invented_record(rng: random.Random) -> tuple[dict, str]:
    """A record under made-up field names ("zetka", "mo_ris") and the sentence that states it, so its
    keys can only be copied from the request (the real records' keys are few and get recalled)."""
    samplers = (person, date, world.pick(CITIES), world.pick(world.TOPICS), world.integer(1, 999),
                money(1, 900), world.email, world.clock)
    record, size = {}, rng.randint(2, 4)
    while len(record) < size:
        word = world.invented_word(rng)
        record.setdefault(word if rng.random() < 0.7 else word + "_" + world.invented_word(rng),
                          rng.choice(samplers)(rng))
    joiner, says = rng.choice((", ", "; ")), rng.choice(("{} is {}", "{}: {}", "{} = {}", "the {} is {}"))
    return record, joiner.join(says.format(key, text(value)) for key, value in record.items()) + "."


def _asked_keys(rng: random.Random, record: dict) -> list[str]:
    """Two or more of the record's keys, half the time in the record's order."""
    fields = list(record)
    keys = rng.sample(fields, rng.randint(2, len(fields)))
    if rng.random() < 0.5:
        keys.sort(key=fields.index)
    return keys


def json_object(rng: random.Random, split: str, invented: float = 0.0) -> Chat:
    """`invented`: the chance that the record's keys are made up (`_invented_record`)."""
    if made_up(rng, split, invented):
        record, content = _invented_record(rng)
        keys = _asked_keys(rng, record)
    else:
        make, sentences = rng.choice(RECORDS)
        record = make(rng)
        keys = _asked_keys(rng, record)
        shown = {key: ", ".join(value) if isinstance(value, list) else text(value)
                 for key, value in record.items()}
        content = rng.choice(sentences).format(**shown)
    user = user_turn(rng.choice(JSON_FRAMES[split]).format(keys=", ".join(keys), content=content))
    system = system_turn(rng, 0.3, ("You reply with JSON only.", "Output valid JSON.",
                                    "You are a helpful assistant."))
    reply = {"role": "assistant", "content": json_text({key: record[key] for key in keys})}
    return Chat(system + (user,), reply, expected={"keys": keys})
