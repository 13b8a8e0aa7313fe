"""The tool world of the nano model's training data: values, parameters, tools and their phrasings.

Tools are built compositionally, verb x noun x parameter set (`book_flight(origin, date)`,
`search_flights(destination, cabin, nonstop)`), and the held-out split is cut by tool name (a
stable hash) and by phrasing template, so held-out requests use schemas and sentences the
training data never shows, written with the same words and values. `conversations.py` puts
these parts together into requests, calls, results and answers.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, Callable, NamedTuple

from deepseek.chat.dsml import json_text

Sampler = Callable[[random.Random], Any]

CITIES = ("Paris", "Lisbon", "Tokyo", "Berlin", "Madrid", "Rome", "Oslo", "Cairo", "Lima", "Seoul",
          "Toronto", "Chicago", "Sydney", "Dublin", "Prague", "Vienna", "Nairobi", "Mumbai", "Denver",
          "Austin", "Boston", "Athens", "Warsaw", "Helsinki", "Bogota", "Hanoi", "Manila", "Zurich",
          "Istanbul", "New York", "San Francisco", "Buenos Aires", "Cape Town", "Hong Kong",
          "Mexico City", "Kuala Lumpur", "Rio de Janeiro", "Los Angeles")
FIRST_NAMES = ("Maria", "John", "Aiko", "Omar", "Lena", "Carlos", "Priya", "Tom", "Sofia", "Ahmed",
               "Emma", "Liam", "Chen", "Nina", "Ravi", "Olga", "Marco", "Fatima", "Yuki", "Peter",
               "Ana", "David", "Grace", "Ivan", "Zoe", "Kofi", "Sara", "Luis", "Mei", "Hugo")
LAST_NAMES = ("Smith", "Silva", "Tanaka", "Haddad", "Novak", "Garcia", "Patel", "Brown", "Rossi",
              "Khan", "Muller", "Kim", "Lopez", "Ivanova", "Chen", "Okafor", "Dubois", "Jensen", "Costa")
TOPICS = ("quarterly report", "lunch on Friday", "project update", "team offsite", "budget review",
          "weekly sync", "release notes", "server outage", "welcome aboard", "contract renewal",
          "design review", "travel plans", "hiring plan", "launch checklist")
MESSAGES = ("good morning", "see you tomorrow", "thank you very much", "the meeting moved to noon",
            "where is the train station", "call me when you land", "happy birthday",
            "the package has arrived", "please bring the slides", "dinner is at eight")
CURRENCIES = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD")
LANGUAGES = ("French", "Spanish", "German", "Japanese", "Italian", "Portuguese", "Korean")
SYMBOLS = ("AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "IBM", "ORCL", "SAP", "META")
ARTISTS = ("Adele", "Miles Davis", "Daft Punk", "Bach", "Norah Jones", "Coldplay", "Bob Marley")
INGREDIENTS = ("chicken", "tofu", "lentils", "salmon", "mushrooms", "spinach", "rice", "chickpeas")
TIMEZONES = ("Europe/Berlin", "Asia/Tokyo", "America/New_York", "Europe/Lisbon", "Australia/Sydney",
             "America/Chicago", "Asia/Kolkata", "Africa/Cairo")
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a helpful assistant with access to tools.",
                  "Use the tools when they help.", "You are an assistant for a travel and office app.",
                  "Be concise.")


def pick(pool: tuple) -> Sampler:
    return lambda r: r.choice(pool)


def integer(lo: int, hi: int) -> Sampler:
    return lambda r: r.randint(lo, hi)


def money(lo: float, hi: float) -> Sampler:
    return lambda r: round(r.uniform(lo, hi), 2)


def code(prefix: str, digits: int) -> Sampler:
    return lambda r: prefix + "".join(r.choices(string.digits, k=digits))


def date(r: random.Random) -> str:
    return f"{r.randint(2024, 2026)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"


def clock(r: random.Random) -> str:
    return f"{r.randint(6, 22):02d}:{r.choice((0, 15, 30, 45)):02d}"


def person(r: random.Random) -> str:
    return f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"


def email(r: random.Random) -> str:
    domain = r.choice(("example.com", "mail.org", "acme.io", "corp.net"))
    return f"{r.choice(FIRST_NAMES).lower()}.{r.choice(LAST_NAMES).lower()}@{domain}"


def path(r: random.Random) -> str:
    folder = r.choice(("docs", "projects", "data", "notes", "reports"))
    name = r.choice(("report", "summary", "budget", "todo", "config", "results", "draft"))
    extension = r.choice(("txt", "csv", "json", "md", "log"))
    return f"/home/{r.choice(FIRST_NAMES).lower()}/{folder}/{name}.{extension}"


def text(value: Any) -> str:
    """A value as the user writes it: strings as they are, the rest as in DSML (JSON)."""
    return value if isinstance(value, str) else json_text(value)


@dataclass(frozen=True)
class Param:
    key: str
    type: str  # JSON-schema type; enums are strings with `enum`
    description: str
    sample: Sampler
    phrases: tuple[str, ...]  # "{}" is the value; a boolean has (phrase if true, phrase if false)
    enum: tuple[str, ...] | None = None

    def schema(self) -> dict:
        out = {"type": self.type, "description": self.description}
        return out | ({"enum": list(self.enum)} if self.enum else {})

    def phrase(self, value: Any, rng: random.Random) -> str:
        if self.type == "boolean":
            return self.phrases[0 if value else 1]
        return rng.choice(self.phrases).format(text(value))

    def field(self, value: Any) -> str:
        shown = ("yes" if value else "no") if self.type == "boolean" else text(value)
        return f"{self.key.replace('_', ' ')}: {shown}"


def _p(key: str, kind: str, description: str, sample: Sampler, *phrases: str) -> Param:
    return Param(key, kind, description, sample, phrases)


def _enum(key: str, description: str, values: tuple[str, ...], *phrases: str) -> Param:
    return Param(key, "string", description, pick(values), phrases, values)


def _flag(key: str, description: str, yes: str, no: str) -> Param:
    return Param(key, "boolean", description, lambda r: r.random() < 0.5, (yes, no))


PARAMS = {p.key: p for p in (
    _p("city", "string", "City name", pick(CITIES), "in {}", "for {}"),
    _p("origin", "string", "Departure city", pick(CITIES), "from {}"),
    _p("destination", "string", "Arrival city", pick(CITIES), "to {}"),
    _p("date", "string", "Date as YYYY-MM-DD", date, "on {}", "for {}"),
    _p("time", "string", "Time as HH:MM", clock, "at {}"),
    _p("passengers", "integer", "Number of passengers", integer(2, 6), "for {} passengers"),
    _p("guests", "integer", "Number of guests", integer(2, 8), "for {} guests", "with {} guests"),
    _p("nights", "integer", "Number of nights", integer(2, 14), "for {} nights"),
    _p("days", "integer", "Number of days", integer(2, 10), "for {} days"),
    _p("quantity", "integer", "How many units", integer(1, 20), "quantity {}", "{} units"),
    _p("limit", "integer", "Maximum number of results", integer(3, 50), "limit {}", "at most {} results"),
    _p("duration_minutes", "integer", "Length in minutes", pick((15, 30, 45, 60, 90)), "for {} minutes"),
    _p("max_minutes", "integer", "Longest preparation time in minutes", integer(10, 90),
       "ready in {} minutes or less"),
    _p("max_price", "number", "Highest acceptable price", money(40, 900), "under {}", "max price {}"),
    _p("amount", "number", "Amount of money", money(5, 5000), "amount {}", "of {}"),
    _enum("units", "Temperature units", ("celsius", "fahrenheit"), "in {}", "{} units"),
    _enum("cabin", "Cabin class", ("economy", "premium", "business", "first"), "in {} class"),
    _enum("currency", "Currency code", CURRENCIES, "in {}"),
    _enum("from_currency", "Currency to convert from", CURRENCIES, "from {}"),
    _enum("to_currency", "Currency to convert to", CURRENCIES, "to {}", "into {}"),
    _enum("priority", "Priority level", ("low", "medium", "high", "urgent"), "{} priority", "priority {}"),
    _enum("carrier", "Shipping carrier", ("UPS", "FedEx", "DHL", "USPS"), "via {}", "shipped with {}"),
    _enum("cuisine", "Type of cuisine", ("italian", "japanese", "mexican", "indian", "thai"),
          "{} cuisine", "serving {} food"),
    _enum("mode", "Travel mode", ("driving", "walking", "transit", "cycling"), "travel mode {}",
          "{} directions"),
    _enum("genre", "Music genre", ("jazz", "rock", "pop", "classical", "reggae"), "{} genre"),
    _enum("target_language", "Language to translate into", LANGUAGES, "into {}"),
    _enum("exchange", "Stock exchange", ("NYSE", "NASDAQ", "LSE", "TSE"), "on the {} exchange"),
    _enum("format", "Output file format", ("pdf", "csv", "xlsx", "html"), "as {}", "in {} format"),
    _enum("encoding", "Text encoding", ("utf-8", "ascii", "latin-1"), "with {} encoding"),
    _flag("nonstop", "Only nonstop flights", "nonstop only", "with stops allowed"),
    _flag("paid", "Whether it is paid", "marked as paid", "marked as unpaid"),
    _flag("urgent", "Mark as urgent", "marked urgent", "not urgent"),
    _flag("express", "Use express shipping", "with express shipping", "with standard shipping"),
    _flag("vegetarian", "Vegetarian recipes only", "vegetarian only", "with meat allowed"),
    _flag("active", "Whether the account is active", "set to active", "set to inactive"),
    _flag("recursive", "Include subfolders", "including subfolders", "without subfolders"),
    _p("invoice_id", "string", "Invoice number", code("INV-", 5), "{}", "number {}"),
    _p("ticket_id", "string", "Ticket number", code("TCK-", 4), "{}", "number {}"),
    _p("order_id", "string", "Order number", code("ORD-", 6), "{}", "number {}"),
    _p("booking_id", "string", "Booking reference", code("BK-", 5), "{}", "with reference {}"),
    _p("event_id", "string", "Calendar event id", code("EVT-", 4), "{}", "with id {}"),
    _p("reminder_id", "string", "Reminder id", code("REM-", 4), "{}", "with id {}"),
    _p("product_id", "string", "Product SKU", code("SKU-", 5), "for product {}", "item {}"),
    _p("tracking_number", "string", "Tracking number", code("1Z", 10), "{}", "with tracking number {}"),
    _p("email", "string", "Email address", email, "for {}", "with email {}"),
    _p("customer_email", "string", "Customer email address", email, "for {}", "billed to {}"),
    _p("recipient", "string", "Recipient email address", email, "to {}"),
    _p("attendee", "string", "Attendee email address", email, "with {}", "inviting {}"),
    _p("subject", "string", "Subject line", pick(TOPICS), 'with subject "{}"', 'about "{}"'),
    _p("title", "string", "Title", pick(TOPICS), 'titled "{}"', 'called "{}"'),
    _p("message", "string", "Message text", pick(MESSAGES), 'saying "{}"'),
    _p("text", "string", "Text to translate", pick(MESSAGES), '"{}"'),
    _p("path", "string", "File path", path, "at {}", "{}"),
    _p("symbol", "string", "Ticker symbol", pick(SYMBOLS), "for {}", "ticker {}"),
    _p("artist", "string", "Artist name", pick(ARTISTS), "by {}"),
    _p("ingredient", "string", "Main ingredient", pick(INGREDIENTS), "with {}", "using {}"),
    _p("username", "string", "Account username", lambda r: f"{r.choice(FIRST_NAMES).lower()}{r.randint(1, 99)}",
       "for user {}", "username {}"),
    _p("name", "string", "Full name", person, "for {}", "named {}"),
    _p("timezone", "string", "IANA time zone", pick(TIMEZONES), "in {}", "for {}"),
)}

# What a tool returns, by key; the answer copies these values.
FACTS: dict[str, Sampler] = {
    "temperature": integer(-10, 38), "humidity": integer(20, 95), "high": integer(5, 38),
    "low": integer(-10, 20), "condition": pick(("sunny", "cloudy", "rainy", "windy", "snowy", "foggy")),
    "flight_number": lambda r: r.choice(("LH", "AF", "BA", "UA", "IB", "KL")) + str(r.randint(100, 9999)),
    "price": money(20, 1500), "total": money(10, 3000), "departure_time": clock,
    "hotel_name": pick(("Grand Plaza", "Harbor Inn", "City Lodge", "Park View", "Riverside Hotel")),
    "restaurant_name": pick(("La Piazza", "Sakura", "El Toro", "Spice Route", "Green Bowl")),
    "rating": lambda r: round(r.uniform(2.5, 5.0), 1),
    "address": lambda r: f"{r.randint(1, 250)} {r.choice(('Main Street', 'Oak Avenue', 'Harbor Road'))}",
    "car_model": pick(("Toyota Corolla", "VW Golf", "Ford Focus", "Tesla Model 3", "Fiat 500")),
    "status": pick(("open", "pending", "confirmed", "shipped", "delivered", "closed")),
    "due_date": date, "last_update": date, "eta": date, "created_date": date, "assignee": person,
    "message_id": code("MSG-", 6), "size_kb": integer(1, 900), "line_count": integer(1, 5000),
    "room": pick(("Room A", "Room B", "Orion", "Atlas", "Blue Room")), "result": money(1, 9000),
    "rate": lambda r: round(r.uniform(0.5, 1.8), 4), "change_percent": lambda r: round(r.uniform(-5, 5), 2),
    "recipe_name": pick(("lemon pasta", "green curry", "veggie tacos", "tomato soup", "fried rice")),
    "calories": integer(150, 900), "location": pick(CITIES), "local_time": clock,
    "track": pick(("Blue Sky", "Night Drive", "Golden Hour", "Slow River", "Paper Moon")),
    "distance_km": lambda r: round(r.uniform(0.5, 120), 1), "minutes": integer(5, 240),
    "utc_offset": pick(("+01:00", "-05:00", "+09:00", "+05:30", "+00:00")),
    "translation": pick(("bonjour", "hasta luego", "vielen Dank", "arigato", "buongiorno", "obrigado")),
    "url": lambda r: f"https://files.example.com/{r.randint(1000, 9999)}.pdf", "pages": integer(1, 40),
    "contact_id": code("CON-", 5),
}


@dataclass(frozen=True)
class Noun:
    key: str  # as in tool names
    text: str  # as in sentences
    plural: str
    verbs: tuple[str, ...]
    fields: tuple[str, ...]  # parameter keys, in schema order
    ident: str | None = None  # the parameter that names one existing item
    facts: tuple[str, ...] = ()

    @property
    def keys(self) -> str:  # the plural in tool names: search_flights, list_tickets
        return self.key + self.plural[len(self.text):]


NOUNS = (
    Noun("weather", "weather", "weather", ("get", "check"), ("city", "date", "units"),
         facts=("temperature", "condition", "humidity")),
    Noun("forecast", "weather forecast", "weather forecasts", ("get",), ("city", "days", "units"),
         facts=("high", "low", "condition")),
    Noun("flight", "flight", "flights", ("book", "search", "cancel", "get"),
         ("origin", "destination", "date", "passengers", "cabin", "nonstop"), "booking_id",
         ("flight_number", "price", "departure_time")),
    Noun("hotel", "hotel room", "hotel rooms", ("book", "search", "cancel"),
         ("city", "date", "nights", "guests", "max_price"), "booking_id", ("hotel_name", "price", "rating")),
    Noun("restaurant", "restaurant", "restaurants", ("search",), ("city", "cuisine", "limit"),
         facts=("restaurant_name", "rating", "address")),
    Noun("table", "table", "tables", ("reserve", "cancel"), ("city", "date", "time", "guests"),
         "booking_id", ("restaurant_name", "address")),
    Noun("car", "rental car", "rental cars", ("book", "cancel"), ("city", "date", "days"), "booking_id",
         ("car_model", "price")),
    Noun("invoice", "invoice", "invoices", ("create", "get", "send", "list", "cancel"),
         ("customer_email", "amount", "currency", "paid"), "invoice_id", ("total", "status", "due_date")),
    Noun("ticket", "support ticket", "support tickets", ("create", "update", "close", "get"),
         ("title", "priority", "email"), "ticket_id", ("status", "assignee", "last_update")),
    Noun("order", "order", "orders", ("place", "cancel", "track", "get"),
         ("product_id", "quantity", "express"), "order_id", ("status", "eta", "total")),
    Noun("email", "email", "emails", ("send", "search"), ("recipient", "subject", "message", "urgent"),
         facts=("message_id", "status")),
    Noun("file", "file", "files", ("read", "delete", "list"), ("path", "encoding", "recursive"),
         facts=("size_kb", "line_count")),
    Noun("meeting", "meeting", "meetings", ("schedule", "cancel", "list"),
         ("title", "date", "time", "duration_minutes", "attendee"), "event_id", ("room", "created_date")),
    Noun("reminder", "reminder", "reminders", ("set", "delete", "list"), ("message", "date", "time"),
         "reminder_id", ("created_date",)),
    Noun("currency", "currency", "currencies", ("convert",), ("amount", "from_currency", "to_currency"),
         facts=("result", "rate")),
    Noun("stock_price", "stock price", "stock prices", ("get", "check"), ("symbol", "exchange", "date"),
         facts=("price", "change_percent")),
    Noun("recipe", "recipe", "recipes", ("search", "get"),
         ("ingredient", "cuisine", "vegetarian", "max_minutes"), facts=("recipe_name", "calories")),
    Noun("song", "song", "songs", ("play", "search"), ("artist", "genre", "limit"), facts=("track",)),
    Noun("user", "user account", "user accounts", ("create", "update", "delete", "get"),
         ("name", "email", "active"), "username", ("status", "created_date")),
    Noun("package", "package", "packages", ("track",), ("carrier",), "tracking_number",
         ("status", "location", "eta")),
    Noun("directions", "directions", "directions", ("get",), ("origin", "destination", "mode"),
         facts=("distance_km", "minutes")),
    Noun("text", "text", "texts", ("translate",), ("text", "target_language"), facts=("translation",)),
    Noun("time", "current time", "current times", ("get",), ("timezone",),
         facts=("local_time", "utc_offset")),
    Noun("report", "report", "reports", ("generate", "export"), ("title", "format", "date"),
         facts=("url", "pages")),
    Noun("contact", "contact", "contacts", ("create", "search", "delete"), ("name", "email", "city"),
         facts=("contact_id",)),
)

class Verb(NamedTuple):
    article: str  # before the noun: "a", "the", "", or "pl" for the bare plural ("search for flights")
    words: tuple[str, ...]  # what the user may write for it; the first is in the description
    does: str  # "query", "make", or "ident" (acts on one existing item, named by the noun's ident)
    status: str  # what the tool reports having done ("booked"); none for queries


VERBS = {
    "get": Verb("the", ("get", "look up"), "query", ""), "check": Verb("the", ("check",), "query", ""),
    "read": Verb("the", ("read", "open"), "query", ""), "search": Verb("pl", ("search for",), "query", ""),
    "list": Verb("pl", ("list", "show"), "query", ""), "play": Verb("a", ("play",), "query", ""),
    "book": Verb("a", ("book",), "make", "booked"), "reserve": Verb("a", ("reserve",), "make", "reserved"),
    "create": Verb("a", ("create", "add"), "make", "created"),
    "place": Verb("a", ("place",), "make", "placed"), "send": Verb("a", ("send",), "make", "sent"),
    "schedule": Verb("a", ("schedule", "set up"), "make", "scheduled"),
    "set": Verb("a", ("set",), "make", "set"), "generate": Verb("a", ("generate",), "make", "generated"),
    "export": Verb("a", ("export",), "make", "exported"),
    "convert": Verb("", ("convert",), "make", "converted"),
    "translate": Verb("", ("translate",), "make", "translated"),
    "cancel": Verb("the", ("cancel",), "ident", "cancelled"),
    "delete": Verb("the", ("delete", "remove"), "ident", "deleted"),
    "update": Verb("the", ("update", "change"), "ident", "updated"),
    "close": Verb("the", ("close",), "ident", "closed"),
    "track": Verb("the", ("track",), "ident", "in transit"),
}


@dataclass(frozen=True)
class Tool:
    verb: str
    noun: Noun
    params: tuple[Param, ...]
    required: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.verb}_{self.noun.keys if VERBS[self.verb].article == 'pl' else self.noun.key}"

    def thing(self) -> str:
        """The noun with its article: "a flight", "the invoice", "flights"."""
        article = VERBS[self.verb].article
        if article == "pl":
            return self.noun.plural
        if article == "a":
            return ("an " if self.noun.text[0] in "aeiou" else "a ") + self.noun.text
        return f"{article} {self.noun.text}".lstrip()

    def action(self, rng: random.Random) -> str:
        """What the user asks for, in words from the tool's name and description: "book a flight"."""
        words = VERBS[self.verb].words
        return f"{rng.choice(words) if rng.random() < 0.3 else words[0]} {self.thing()}"

    def schema(self) -> dict:
        words = VERBS[self.verb].words
        also = f" (or {words[1]})" if len(words) > 1 else ""
        properties = {p.key: p.schema() for p in self.params}
        return {"type": "function", "function": {
            "name": self.name, "description": f"{words[0].capitalize()}{also} {self.thing()}.",
            "parameters": {"type": "object", "properties": properties, "required": list(self.required)}}}


# Made-up nouns for training tools whose names cannot be recalled, only copied from the request.
SYLLABLES = ("ba", "dor", "fen", "gli", "ka", "lum", "mo", "nix", "pra", "quo", "ris", "sel", "tav",
             "ul", "vo", "wim", "yar", "zet", "bro", "cal")
# Parameters an invented tool may take besides its id: any whose phrasing reads after any noun.
_INVENTED_FIELDS = ("city", "date", "time", "quantity", "limit", "amount", "currency", "priority",
                    "email", "title", "message", "format", "urgent", "name", "timezone", "days")


def invented_word(rng: random.Random) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def invented_tool(rng: random.Random) -> Tool:
    """A tool over a made-up noun ("zetka": `cancel_zetka`), with an id of a made-up prefix when its
    verb acts on one item. Training on these, a model cannot recall a tool's name or an id's prefix
    from earlier examples: it learns to copy them from the request and the tools block."""
    word = invented_word(rng)
    verb = rng.choice(sorted(VERBS))
    keys = sorted(rng.sample(_INVENTED_FIELDS, rng.randint(1, 3)), key=_INVENTED_FIELDS.index)
    params = [PARAMS[key] for key in keys]
    ident = None
    if VERBS[verb].does == "ident":
        prefix = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(2, 4))) + "-"
        ident = f"{word}_id"
        params.insert(0, Param(ident, "string", f"{word.capitalize()} id", code(prefix, rng.randint(3, 6)),
                               ("{}", "with id {}", "number {}")))
    noun = Noun(word, word, word + "s", (verb,), tuple(p.key for p in params), ident,
                tuple(rng.sample(sorted(FACTS), 2)))
    required = [params[0].key] + [p.key for p in params[1:] if rng.random() < 0.5]
    return Tool(verb, noun, tuple(params), tuple(required))


def split_of(name: str) -> str:
    """Whether tool `name` is held out: about one name in five, by a hash stable across runs."""
    return "heldout" if name in _heldout_names() else "train"


@lru_cache(maxsize=None)
def _heldout_names() -> frozenset[str]:
    pairs = {Tool(verb, noun, (), ()).name: (verb, noun.key) for noun in NOUNS for verb in noun.verbs}
    hashed = {name for name in pairs if hashlib.sha256(name.encode()).digest()[0] % 4 == 0}
    trained = [pair for name, pair in pairs.items() if name not in hashed]
    # Held out only where both words are trained elsewhere: new schemas, not new vocabulary.
    return frozenset(name for name in hashed if any(v == pairs[name][0] for v, _ in trained)
                     and any(n == pairs[name][1] for _, n in trained))


@lru_cache(maxsize=None)
def tools(split: str) -> tuple[Tool, ...]:
    """Every tool schema of `split`: up to two parameter sets per verb x noun name."""
    out = []
    for noun in NOUNS:
        for verb in noun.verbs:
            rng = random.Random(f"{verb}/{noun.key}")
            for _ in range(2):
                tool = _tool(rng, verb, noun)
                if split_of(tool.name) == split and tool not in out:
                    out.append(tool)
    return tuple(out)


def _tool(rng: random.Random, verb: str, noun: Noun) -> Tool:
    fields = list(noun.fields)
    if noun.ident and (VERBS[verb].does == "ident" or verb == "get"):
        low = 1 if verb == "update" else 0
        extra = rng.sample(fields, rng.randint(low, min(2, len(fields))))
        keys = [noun.ident] + sorted(extra, key=fields.index)
    else:
        keys = sorted(rng.sample(fields, rng.randint(1, min(4, len(fields)))), key=fields.index)
    required = [keys[0]] + [key for key in keys[1:] if rng.random() < 0.5]
    return Tool(verb, noun, tuple(PARAMS[key] for key in keys), tuple(required))


def _words(lo: int, hi: int, capital: bool = False) -> Sampler:
    return lambda r: " ".join(w.capitalize() if capital else w for w in (invented_word(r) for _ in range(r.randint(lo, hi))))


def _made_up_code(r: random.Random) -> str:
    prefix = "".join(r.choices(string.ascii_uppercase, k=r.randint(1, 4)))
    return prefix + r.choice(("-", "")) + "".join(r.choices(string.digits, k=r.randint(3, 8)))


# Values with nothing to recall: a model trained on them can only copy them from the request. With
# pooled values alone, the model wrote each key's usual value ("2026", "BK-", "Maria")
# instead of the one in the request.
MADE_UP: dict[str, Sampler] = {
    "string": _words(1, 2),
    "integer": integer(1, 999),
    "number": money(1, 99_999),
    "date": lambda r: f"{r.randint(1900, 2099)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
    "time": lambda r: f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}",
    **dict.fromkeys(("city", "origin", "destination", "artist"), _words(1, 2, capital=True)),
    "name": _words(2, 2, capital=True),
    "title": _words(1, 3), "subject": _words(1, 3), "message": _words(2, 4), "text": _words(2, 4),
    "symbol": lambda r: "".join(r.choices(string.ascii_uppercase, k=r.randint(2, 5))),
    "username": lambda r: f"{invented_word(r)}{r.randint(1, 999)}",
    "timezone": lambda r: f"{invented_word(r).capitalize()}/{invented_word(r).capitalize()}",
    "path": lambda r: f"/{invented_word(r)}/{invented_word(r)}/{invented_word(r)}.{r.choice(('txt', 'csv', 'json', 'md', 'log', 'py'))}",
}
_EMAIL_KEYS = ("email", "customer_email", "recipient", "attendee")


def made_up_value(param: Param, r: random.Random) -> Any:
    """A value of `param`'s type and shape that no pool holds (enums and flags keep theirs)."""
    if param.enum or param.type == "boolean":
        return param.sample(r)
    if param.key in _EMAIL_KEYS:
        return f"{invented_word(r)}.{invented_word(r)}@{invented_word(r)}.{r.choice(('com', 'org', 'net', 'io'))}"
    if param.key.endswith(("_id", "_number")):
        return _made_up_code(r)
    return MADE_UP.get(param.key, MADE_UP[param.type])(r)


def arguments(rng: random.Random, tool: Tool, made_up: bool = False) -> dict:
    """Values for the required parameters and some optional ones, in schema order, all distinct.
    `made_up`: values from `made_up_value`, not the pools."""
    out, seen = {}, set()
    for param in tool.params:
        if param.key in tool.required or rng.random() < 0.5:
            draw = partial(made_up_value, param) if made_up else param.sample
            value = draw(rng)
            while param.type == "string" and value in seen and not param.enum:
                value = draw(rng)
            out[param.key] = value
            seen.add(value)
    return out


def result(rng: random.Random, tool: Tool, args: dict) -> dict:
    """What the tool returns: a status for actions, a count for searches, then the noun's facts."""
    verb = VERBS[tool.verb]
    out: dict[str, Any] = {}
    if verb.status:
        out["status"] = verb.status
    elif verb.article == "pl":
        out["count"] = rng.randint(2, 30)
    if tool.noun.ident and verb.does != "query":
        out[tool.noun.ident] = args.get(tool.noun.ident) or PARAMS[tool.noun.ident].sample(rng)
    for key in tool.noun.facts:
        out.setdefault(key, FACTS[key](rng))
    return out
