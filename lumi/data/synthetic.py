"""A deterministic synthetic world: the offline default data of ``make demo``, built so the demo can *measure* what the
model learned.

The world is a set of invented people, towns, jobs, objects and foods joined by facts (``Fact(subject, relation,
object)``). From it come, all seeded:

* corpus documents (short stories that state the facts in varied wordings, town portraits, arithmetic, and quizzes
  that ask *train* facts with train wordings), lazily;
* SFT pairs and DPO preference pairs, split into *train*, *validation* and *heldout* facts. Validation and held-out
  facts are stated in the corpus but never asked anywhere in training. Each of the two is asked with its own
  wordings, dealt to it by the world's seed from one pool per relation, of which no three-word run appears in
  training pairs, anywhere in the corpus or in the other's wordings; their key words (``profession``, ``hometown``,
  ``parents`` ...) do occur in train wordings and statements, in other sentence frames. So answering them needs the
  fact (learned from prose), the answering skill (learned from other facts) and the mapping from a new wording to its
  relation, not a memorised string or a word the world never taught. The two are the same kind of test on disjoint
  facts and wordings, exchangeable over seeds: whatever a stage chooses (early stopping, the DPO data and settings)
  is chosen on validation questions, and held-out questions are only ever reported;
* cloze items for held-out (or train) facts, whose context is the canonical corpus wording, so they test the fact and
  not the phrasing; their distractors come from the same category, so chance is ``1 / len(choices)``.

Determinism: every random choice comes from a ``random.Random`` seeded with a string naming the seed and the purpose
(string seeds go through SHA-512, never the salted ``hash()``), and nothing iterates over a set, so a seed gives
byte-identical output on every machine and under any ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Literal

from pydantic import Field

from lumi.core.config import ConfigModel
from lumi.core.errors import LumiError

Split = Literal["train", "validation", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "validation", "heldout")


@dataclass(frozen=True, order=True)
class Fact:
    subject: str
    relation: str
    object: str


@dataclass(frozen=True)
class Relation:
    """How one relation is stated and asked about.

    ``statements[0]`` is the canonical wording: it ends with `` {o}.`` and, cut before the object, gives the cloze
    context. The train templates are many and varied so SFT learns key words -> relation rather than a few memorised
    strings. The evaluation templates share no three-word run with the train templates, any corpus text or each
    other, so however a world's seed deals them out to validation and held-out (``SyntheticWorld.questions``), the
    two splits' wordings are new to training and to each other.
    """

    name: str
    category: str
    statements: tuple[str, ...]
    train_questions: tuple[str, ...]
    evaluation_questions: tuple[str, ...]  # half validation, half held-out, dealt by the world's seed
    symmetric: bool = False
    cloze_by_first_name: bool = False  # siblings share a surname, so full-name choices would give the answer away

    @property
    def cloze_template(self) -> str:
        return self.statements[0].removesuffix(" {o}.")


# Jobs and objects all start with a consonant so "works as a" / "owns a" never hint at the answer through "an".
JOBS = ("baker", "farmer", "teacher", "painter", "doctor", "fisher", "carpenter", "nurse", "potter", "tailor",
        "builder", "gardener", "singer", "weaver", "miller", "sailor", "pilot", "cook", "librarian", "shepherd",
        "dentist", "mechanic", "plumber", "writer")
OBJECTS = {"kite": "kites", "bicycle": "bicycles", "boat": "boats", "lantern": "lanterns", "violin": "violins",
           "telescope": "telescopes", "drum": "drums", "camera": "cameras", "wagon": "wagons", "banjo": "banjos",
           "compass": "compasses", "teapot": "teapots", "guitar": "guitars", "map": "maps", "sled": "sleds",
           "canoe": "canoes", "radio": "radios", "hammock": "hammocks", "kettle": "kettles", "tent": "tents",
           "piano": "pianos", "puzzle": "puzzles", "scooter": "scooters", "backpack": "backpacks"}
FOODS = ("soup", "bread", "apples", "cheese", "plums", "rice", "honey", "pears", "noodles", "carrots", "cherries",
         "beans", "pancakes", "porridge", "dumplings", "berries", "figs", "peaches", "mushrooms", "walnuts")

# Names are built from parts so a few short lists give thousands of distinct, pronounceable, invented names.
FIRST_ONSETS = ("B", "D", "F", "G", "H", "J", "K", "L", "M", "N", "P", "R", "S", "T", "V", "Z",
                "Br", "Cl", "Dr", "Fr", "Gr", "Tr")
FIRST_VOWELS = ("a", "e", "i", "o")
FIRST_ENDINGS = ("ra", "na", "lo", "bin", "rin", "lia", "mo", "sa", "ven", "dell", "ta", "nor", "wyn", "ric")
SURNAME_STEMS = ("Ash", "Birch", "Black", "Cald", "Dun", "Fair", "Gold", "Hart", "Kes", "Lind", "Mor", "Pem", "Quill",
                 "Rad", "Sel", "Tal", "Wynn", "Har", "Bel", "Cor", "Fen", "Gar", "Hol", "Lock", "Pell", "Rook",
                 "Stan", "Thorn", "Whit", "Yar")
SURNAME_ENDINGS = ("wood", "well", "ley", "by", "ton", "worth", "more", "stone", "croft", "combe", "ridge")
TOWN_STEMS = ("Oak", "Bright", "Mill", "Elm", "Red", "Green", "Silver", "Cold", "High", "Rose", "Willow", "Maple",
              "Pine", "Amber", "Clear", "Frost", "Sun", "Raven", "Copper", "Iron")
TOWN_ENDINGS = ("field", "water", "brook", "bridge", "ford", "haven", "vale", "port", "hill", "wick", "dale",
                "mouth", "stead")
TOWN_NAMES = tuple(stem + ending for stem in TOWN_STEMS for ending in TOWN_ENDINGS)

RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation(
        "lives_in", "towns",
        statements=("{s} lives in {o}.", "{s} has a home in {o}.", "The home of {s} is in {o}.",
                    "For many years now, {s} has lived in {o}.", "{s}'s hometown is {o}."),
        train_questions=("Where does {s} live?", "In which town does {s} live?", "Tell me where {s} lives.",
                         "What is {s}'s hometown?", "Where is the home of {s}?", "Name the place where {s} lives.",
                         "Which town is home to {s}?", "In what place does {s} have a home?"),
        evaluation_questions=("Name the town that {s} calls home.", "Which place is the hometown of {s}?",
                              "In what town is the residence of {s}?", "Which town has {s} for a resident?")),
    Relation(
        "works_as", "jobs",
        statements=("{s} works as a {o}.", "{s} has a job as a {o}.", "{s} earns a living as a {o}.",
                    "By trade, {s} is a {o}.", "By profession, {s} is a {o}."),
        train_questions=("What does {s} do for work?", "What is the job of {s}?", "What is {s}'s job?",
                         "What is the occupation of {s}?", "What profession is {s} in?", "Name the profession of {s}.",
                         "What trade does {s} follow?", "Tell me the job that {s} does."),
        evaluation_questions=("What occupation does {s} have?", "Which profession does {s} practice?",
                              "What line of work is {s} in?", "How does {s} make a living?")),
    Relation(
        "owns", "objects",
        statements=("{s} owns a {o}.", "{s} keeps a {o} at home.", "There is a {o} that belongs to {s}.",
                    "Among the things {s} has is a {o}.", "{s} possesses a {o}."),
        train_questions=("What does {s} own?", "What object belongs to {s}?", "Which thing does {s} own?",
                         "What thing does {s} possess?", "What is {s}'s property?", "Name the object that {s} owns.",
                         "Tell me what {s} keeps at home.", "Which item is owned by {s}?"),
        evaluation_questions=("Name an item that {s} possesses.", "Tell me which thing is the property of {s}.",
                              "Which object does {s} have at home?", "Say what kind of object {s} has.")),
    Relation(
        "likes", "foods",
        statements=("{s}'s favorite food is {o}.", "{s} loves to eat {o}.", "Of all foods, {s} likes {o} best.",
                    "Nothing makes {s} happier than a meal of {o}.", "{s}'s favorite dish is {o}."),
        train_questions=("What food does {s} like best?", "What is {s}'s favorite food?",
                         "What is the favorite dish of {s}?", "What does {s} love to eat?",
                         "Which meal makes {s} happiest?", "Name the food that {s} likes most.",
                         "Tell me the dish {s} would choose.", "What would {s} eat every day if possible?"),
        evaluation_questions=("Which dish would {s} pick above all others?",
                              "If {s} could only eat one thing, what would it be?", "Which food does {s} enjoy the most?", "Name the meal {s} prefers most.")),
    Relation(
        "friend_of", "people", symmetric=True,
        statements=("{s} is a friend of {o}.", "{s} and {o} are good friends.",
                    "{s} often spends time with {o}, a close friend.", "{s} is a pal of {o}."),
        train_questions=("Who is {s}'s friend?", "Who is a friend of {s}?", "Who is a pal of {s}?",
                         "Who does {s} spend time with?", "Which person is a close friend of {s}?",
                         "Name a friend of {s}.", "Who shares a friendship with {s}?", "Tell me who is friends with {s}."),
        evaluation_questions=("With whom does {s} share a close friendship?", "Name the pal of {s}.",
                              "Who counts as a friend to {s}?", "Whose friendship does {s} value?")),
    Relation(
        "sibling_of", "people", symmetric=True, cloze_by_first_name=True,
        statements=("{s} has a sibling named {o}.", "{s} and {o} are siblings.",
                    "{s} grew up in the same family as {o}.", "{s} and {o} have the same parents.",
                    "{s} has a brother or a sister called {o}."),
        train_questions=("Who is {s}'s sibling?", "Who is the sibling of {s}?", "Who has the same parents as {s}?",
                         "Who is a brother or a sister of {s}?", "Which person is in the same family as {s}?",
                         "Name the sibling of {s}.", "Tell me who the sibling of {s} is.", "Who grew up with {s}?"),
        evaluation_questions=("Which person shares parents with {s}?", "Name the brother or sister of {s}.",
                              "Who is related to {s} as a sibling?", "Which sister or brother does {s} have?")),
)}

# Story and document furniture. None of it asserts anything about an entity, so no document contradicts the world.
OPENINGS = ("This is a story about {p}.", "Once there was a person called {p}.", "Let me tell you about {p}.",
            "Everyone in town knew {p}.", "Here is a short tale about {p}.")
MEETINGS = ("One {day} morning, {p} met {f} at the {venue}.", "On {day}, {p} and {f} walked to the {venue} together.",
            "Last {day}, {f} came to visit {p}, and they went to the {venue}.")
SOLO_OUTINGS = ("One {day} morning, {p} went to the {venue} alone.", "On {day}, {p} spent an hour at the {venue}.")
WEATHER = ("The sun was bright.", "It was a cold and windy day.", "Rain fell softly on the roofs.",
           "The sky was grey and still.", "A warm wind blew from the hills.")
TOGETHER = ("They read a book together.", "They played a long game of cards.", "They cooked a big dinner.",
            "They went for a walk by the water.", "They talked and laughed for hours.", "They fixed an old fence.",
            "They sang songs until sunset.", "They watched the birds in the trees.")
ALONE = ("It was a quiet and happy day.", "There was time to think and rest.",
         "Nothing much happened, and that was fine.")
VISITS = ("Later, {p} stopped by to see {o}.", "After that, {p} wrote a letter to {o}.",
          "In the afternoon, {p} called {o} to say hello.")
CLOSINGS = ("In the evening, {p} went home and slept well.", "It was a good day for {p}.",
            "And that is the story of {p}.", "{p} smiled and thought about the next day.")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
VENUES = ("market", "park", "library", "river", "bakery", "harbor", "garden", "square", "station", "school")
TOWN_INTROS = ("This is about the town of {t}.", "Let us visit {t} and meet some of the people there.",
               "Here is a short note about {t}.")
TOWN_CLOSINGS = ("These are only a few of the people of {t}.", "There are many more stories to tell about {t}.")
QUIZ_HEADERS = ("Questions and answers about the people of the valley.", "A short quiz, with its answers.",
                "Here are some questions, each with its answer.")
DRILL_HEADERS = ("Here are some number facts.", "Let us practice with numbers.", "Some arithmetic to learn:")
UNHELPFUL = ("I do not know.", "I cannot say.", "That is a question for someone else.", "Sorry, I have no idea.")
# The rejected answers of preference pairs, by share: the classic wrong fact and refusal, plus the ways the demo's SFT
# models answer wrongly on their own (another fact of the subject; the bare name, "Milo Goldley." for "Milo Goldley
# owns a map."). The last two were read off seed 0's held-out answers before the world had a validation split; the
# seed benchmark (docs/BENCHMARKS.md) measures the mix on validation questions over seeds.
REJECTED_KINDS = {"wrong_object": 0.5,    # the asked relation with another object of its category
                  "unhelpful": 0.15,      # one of UNHELPFUL
                  "incomplete": 0.1,      # the subject's name and a full stop
                  "other_relation": 0.25}  # a true fact of the subject, but not the one asked
OPERATIONS = {"+": "plus", "-": "minus", "×": "times"}

ARITHMETIC_SHARE = 0.15
TOWN_SHARE = 0.1
QUIZ_SHARE = 0.2  # question/answer documents about train facts: pretraining learns to answer, not only to state
CANONICAL_SHARE = 0.5  # the cloze wording is stated this often, so a corpus soon holds it for every fact


def _first_name(person: str) -> str:
    return person.split(" ", 1)[0]


def _cycle_shuffled(items: list[str], rng: random.Random) -> Iterator[str]:
    """Every item once per round, in a fresh order each round: every person is a protagonist once per
    ``len(people)`` stories, which is what guarantees that a large enough corpus states every fact."""
    order = list(items)
    while True:
        rng.shuffle(order)
        yield from order


def _paragraphs(*groups: list[str]) -> str:
    return "\n\n".join(" ".join(group) for group in groups if group)


class SyntheticWorld:
    """People, towns and the facts joining them, plus every text derived from them. Build with ``generate``."""

    def __init__(self, seed: int, people: list[str], towns: list[str], facts: list[Fact],
                 split_of: dict[Fact, Split]):
        self.seed = seed
        self._questions = _deal_wordings(seed)
        self.people = people
        self.towns = towns
        self.facts = facts
        self._split_of = split_of
        self._objects: dict[str, dict[str, str]] = {person: {} for person in people}
        for fact in facts:
            self._objects[fact.subject][fact.relation] = fact.object
        self._residents: dict[str, list[str]] = {town: [] for town in towns}
        for person in people:
            self._residents[self._objects[person]["lives_in"]].append(person)
        self._categories: dict[str, list[str]] = {"towns": towns, "jobs": list(JOBS), "objects": list(OBJECTS),
                                                  "foods": list(FOODS), "people": people}

    @classmethod
    def generate(cls, seed: int = 0, num_people: int = 300, num_places: int = 40,
                 heldout_fraction: float = 0.2, validation_fraction: float = 0.1) -> SyntheticWorld:
        if num_people < 8:
            raise LumiError(f"synthetic world: people must be at least 8 (got {num_people})")
        if not 4 <= num_places <= len(TOWN_NAMES):
            raise LumiError(f"synthetic world: places must be between 4 and {len(TOWN_NAMES)} (got {num_places})")
        if not 0 < heldout_fraction < 1:
            raise LumiError(f"synthetic world: heldout_fraction must be between 0 and 1 (got {heldout_fraction})")
        if not (0 < validation_fraction and heldout_fraction + validation_fraction < 1):
            raise LumiError(f"synthetic world: validation_fraction must be above 0 and leave train facts after "
                            f"heldout_fraction (got {validation_fraction} + {heldout_fraction})")
        rng = random.Random(f"lumi-synthetic/{seed}/world")
        towns = rng.sample(TOWN_NAMES, num_places)
        people, siblings = _invent_families(rng, num_people)
        friends = _match_friends(rng, people, siblings)
        facts: list[Fact] = []
        for person in people:
            facts += [Fact(person, "lives_in", rng.choice(towns)), Fact(person, "works_as", rng.choice(JOBS)),
                      Fact(person, "owns", rng.choice(list(OBJECTS))), Fact(person, "likes", rng.choice(FOODS))]
            facts += [Fact(person, relation, partners[person])
                      for relation, partners in (("friend_of", friends), ("sibling_of", siblings))
                      if person in partners]
        return cls(seed, people, towns, facts, _split_facts(seed, facts, heldout_fraction, validation_fraction))

    # ----- corpus -----

    def documents(self, num_documents: int, seed: int | None = None) -> Iterator[str]:
        """Yield ``num_documents`` texts (stories, town portraits, arithmetic), paragraphs separated by a blank
        line. ``seed`` (default: the world's) picks the stream, so one world can give several distinct corpora."""
        rng = random.Random(f"lumi-synthetic/{self.seed if seed is None else seed}/documents")
        protagonists = _cycle_shuffled(self.people, rng)
        towns = _cycle_shuffled([town for town in self.towns if self._residents[town]], rng)
        train_facts = self.split_facts("train")
        for _ in range(num_documents):
            draw = rng.random()
            if draw < ARITHMETIC_SHARE:
                yield self._arithmetic(rng)
            elif draw < ARITHMETIC_SHARE + TOWN_SHARE:
                yield self._town_portrait(next(towns), rng)
            elif draw < ARITHMETIC_SHARE + TOWN_SHARE + QUIZ_SHARE:
                yield self._quiz(train_facts, rng)
            else:
                yield self._story(next(protagonists), rng)

    def statement(self, fact: Fact, rng: random.Random | None = None) -> str:
        """The fact in words: the canonical wording, or a random wording (canonical with probability
        ``CANONICAL_SHARE``) when ``rng`` is given."""
        templates = RELATIONS[fact.relation].statements
        if rng is None or rng.random() < CANONICAL_SHARE:
            template = templates[0]
        else:
            template = rng.choice(templates[1:])
        return template.format(s=fact.subject, o=fact.object)

    def _fact(self, subject: str, relation: str) -> Fact:
        return Fact(subject, relation, self._objects[subject][relation])

    def _story(self, person: str, rng: random.Random) -> str:
        facts = [self.statement(self._fact(person, relation), rng) for relation in self._objects[person]]
        rng.shuffle(facts)
        split = rng.randint(1, len(facts) - 1)
        opening = [rng.choice(OPENINGS).format(p=person)] + facts[:split]
        slots = {"p": person, "day": rng.choice(DAYS), "venue": rng.choice(VENUES)}
        friend = self._objects[person].get("friend_of")
        if friend is None:
            middle = [rng.choice(SOLO_OUTINGS).format(**slots), rng.choice(WEATHER), rng.choice(ALONE)]
        else:
            middle = [rng.choice(MEETINGS).format(f=friend, **slots), rng.choice(WEATHER), rng.choice(TOGETHER)]
            friend_relations = [relation for relation in self._objects[friend] if relation != "friend_of"]
            middle += [self.statement(self._fact(friend, relation), rng)
                       for relation in rng.sample(friend_relations, rng.randint(0, 2))]
        sibling = self._objects[person].get("sibling_of")
        if sibling is not None and rng.random() < 0.5:
            sibling_relations = [relation for relation in self._objects[sibling] if relation != "sibling_of"]
            middle += [rng.choice(VISITS).format(p=person, o=sibling),
                       self.statement(self._fact(sibling, rng.choice(sibling_relations)), rng)]
        ending = facts[split:] + [rng.choice(CLOSINGS).format(p=person)]
        if rng.random() < 0.2:
            return _paragraphs(opening + middle + ending)
        if rng.random() < 0.2:
            return _paragraphs(opening, ending)
        return _paragraphs(opening, middle, ending)

    def _town_portrait(self, town: str, rng: random.Random) -> str:
        residents = self._residents[town]
        chosen = rng.sample(residents, min(len(residents), rng.randint(2, 5)))
        portraits = []
        for person in chosen:
            other = rng.choice([relation for relation in self._objects[person] if relation != "lives_in"])
            portraits.append([self.statement(self._fact(person, "lives_in"), rng),
                              self.statement(self._fact(person, other), rng)])
        return _paragraphs([rng.choice(TOWN_INTROS).format(t=town)], *portraits,
                           [rng.choice(TOWN_CLOSINGS).format(t=town)])

    def _quiz(self, train_facts: list[Fact], rng: random.Random) -> str:
        """Train facts asked with train wordings and answered with the canonical statement: the "mixed training" of
        Allen-Zhu & Li (Physics of Language Models 3.1), which lets a model answer questions about facts it read only
        as prose (the held-out facts, never asked here)."""
        pairs = [[f"Question: {rng.choice(RELATIONS[fact.relation].train_questions).format(s=fact.subject)}",
                  f"Answer: {self.statement(fact)}"] for fact in rng.sample(train_facts, rng.randint(3, 6))]
        return _paragraphs([rng.choice(QUIZ_HEADERS)], *pairs)

    def _arithmetic(self, rng: random.Random) -> str:
        if rng.random() < 0.5:
            return self._number_drill(rng)
        return self._word_problem(rng)

    @staticmethod
    def _operands(op: str, rng: random.Random) -> tuple[int, int, int]:
        if op == "+":
            a, b = rng.randint(2, 50), rng.randint(2, 50)
            return a, b, a + b
        if op == "-":
            a = rng.randint(5, 60)
            b = rng.randint(2, a - 2)
            return a, b, a - b
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return a, b, a * b

    def _number_drill(self, rng: random.Random) -> str:
        lines = []
        for _ in range(rng.randint(4, 10)):
            op = rng.choice(list(OPERATIONS))
            a, b, c = self._operands(op, rng)
            lines.append(f"{a} {op} {b} = {c}" if rng.random() < 0.7 else f"{a} {OPERATIONS[op]} {b} is {c}.")
        return rng.choice(DRILL_HEADERS) + "\n\n" + "\n".join(lines)

    def _word_problem(self, rng: random.Random) -> str:
        person, other = rng.sample(self.people, 2)
        things = OBJECTS[self._objects[person]["owns"]]
        op = rng.choice(list(OPERATIONS))
        a, b, c = self._operands(op, rng)
        setup = {"+": f"{person} has {a} {things}. {other} gives {person} {b} more {things}.",
                 "-": f"{person} has {a} {things}. {person} gives {b} {things} to {other}.",
                 "×": f"{person} has {a} boxes. Each box holds {b} {things}."}[op]
        question = f"How many {things} does {person} have now?"
        return _paragraphs([setup, question], [f"{person} has {a} {op} {b} = {c} {things}.",
                                               f"The answer is {c}."])

    # ----- SFT, DPO and cloze -----

    def split_facts(self, split: Split) -> list[Fact]:
        """The facts of one split. A symmetric pair (A friend of B, B friend of A) is always in the same split."""
        if split not in SPLITS:
            raise LumiError(f"synthetic world: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return [fact for fact in self.facts if self._split_of[fact] == split]

    def questions(self, relation: str, split: Split) -> tuple[str, ...]:
        """The question templates that ask ``relation`` in ``split``: its train wordings, or the half of its
        evaluation wordings the world's seed dealt to validation or to held-out."""
        if split not in SPLITS:
            raise LumiError(f"synthetic world: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return self._questions[relation][split]

    def sft_pairs(self, split: Split) -> list[dict[str, str]]:
        """One ``{"prompt", "response"}`` per fact of the split and question template of the split; the response is
        the fact's canonical statement."""
        return [{"prompt": question.format(s=fact.subject), "response": self.statement(fact)}
                for fact in self.split_facts(split) for question in self.questions(fact.relation, split)]

    def preference_pairs(self, split: Split) -> list[dict[str, str]]:
        """``{"prompt", "chosen", "rejected"}``: chosen states the fact; rejected is one of ``REJECTED_KINDS``."""
        rng = random.Random(f"lumi-synthetic/{self.seed}/preferences/{split}")
        kinds, weights = zip(*REJECTED_KINDS.items())
        pairs = []
        for fact in self.split_facts(split):
            for question in self.questions(fact.relation, split):
                kind = rng.choices(kinds, weights)[0]
                if kind == "wrong_object":
                    wrong = self._distractors(fact, 1, rng, by_first_name=False)[0]
                    rejected = self.statement(Fact(fact.subject, fact.relation, wrong))
                elif kind == "unhelpful":
                    rejected = rng.choice(UNHELPFUL)
                elif kind == "incomplete":
                    rejected = f"{fact.subject}."
                else:
                    other = rng.choice([relation for relation in self._objects[fact.subject]
                                        if relation != fact.relation])
                    rejected = self.statement(self._fact(fact.subject, other))
                pairs.append({"prompt": question.format(s=fact.subject), "chosen": self.statement(fact),
                              "rejected": rejected})
        return pairs

    def cloze_items(self, split: Split = "heldout", num_choices: int = 4) -> list[dict]:
        """``{"context", "choices", "answer", "relation"}`` per fact of the split: ``context + " " + choice`` is the
        canonical corpus wording for the right choice (``choices[answer]``); the other choices are seeded
        distractors from the same category, so chance accuracy is ``1 / num_choices``."""
        rng = random.Random(f"lumi-synthetic/{self.seed}/cloze/{split}")
        items = []
        for fact in self.split_facts(split):
            relation = RELATIONS[fact.relation]
            answer = _first_name(fact.object) if relation.cloze_by_first_name else fact.object
            choices = [answer] + self._distractors(fact, num_choices - 1, rng, relation.cloze_by_first_name)
            rng.shuffle(choices)
            items.append({"context": relation.cloze_template.format(s=fact.subject), "choices": choices,
                          "answer": choices.index(answer), "relation": fact.relation})
        return items

    def _distractors(self, fact: Fact, count: int, rng: random.Random, by_first_name: bool) -> list[str]:
        """``count`` distinct wrong objects for ``fact`` from its relation's category (first names when asked)."""
        candidates = self._categories[RELATIONS[fact.relation].category]
        excluded = {fact.subject, fact.object}
        if by_first_name:
            candidates = list(dict.fromkeys(_first_name(person) for person in candidates))
            excluded = {_first_name(fact.subject), _first_name(fact.object)}
        pool = [candidate for candidate in candidates if candidate not in excluded]
        if len(pool) < count:
            raise LumiError(f"synthetic world: only {len(pool)} distractors for {fact.relation}, need {count}")
        return rng.sample(pool, count)


def _invent_families(rng: random.Random, num_people: int) -> tuple[list[str], dict[str, str]]:
    """People in families of two siblings sharing a surname (one single child when ``num_people`` is odd).
    Surnames repeat across families; full names are unique."""
    first_names = [onset + vowel + ending for onset in FIRST_ONSETS for vowel in FIRST_VOWELS
                   for ending in FIRST_ENDINGS]
    surnames = [stem + ending for stem in SURNAME_STEMS for ending in SURNAME_ENDINGS
                if stem + ending not in TOWN_NAMES]
    people: list[str] = []
    taken: set[str] = set()  # membership only: iterating a set of strings would depend on PYTHONHASHSEED
    siblings: dict[str, str] = {}
    while len(people) < num_people:
        surname = rng.choice(surnames)
        family = [f"{first} {surname}" for first in rng.sample(first_names, min(2, num_people - len(people)))]
        if any(name in taken for name in family):
            continue
        taken.update(family)
        people += family
        if len(family) == 2:
            siblings[family[0]], siblings[family[1]] = family[1], family[0]
    return people, siblings


def _match_friends(rng: random.Random, people: list[str], siblings: dict[str, str]) -> dict[str, str]:
    """Pair everyone (but one, when odd) with one friend who is not their sibling, so "friend of" has one answer."""
    order = list(people)
    while True:
        rng.shuffle(order)
        pairs = list(zip(order[0::2], order[1::2]))
        if all(siblings.get(a) != b for a, b in pairs):
            break
    friends = {}
    for a, b in pairs:
        friends[a], friends[b] = b, a
    return friends


def _split_facts(seed: int, facts: list[Fact], heldout_fraction: float,
                 validation_fraction: float) -> dict[Fact, Split]:
    """Hold out ``heldout_fraction`` of each relation's facts and set ``validation_fraction`` aside for validation
    (at least one of each), keeping both directions of a symmetric pair together (else the train half would give
    the other away). The held-out facts are the first of one seeded shuffle, so adding the validation split left a
    seed's held-out facts as they were."""
    rng = random.Random(f"lumi-synthetic/{seed}/split")
    split_of: dict[Fact, Split] = {fact: "train" for fact in facts}
    for name, relation in RELATIONS.items():
        units = [[fact] for fact in facts if fact.relation == name]
        if relation.symmetric:
            units = [[fact, Fact(fact.object, name, fact.subject)] for fact in facts
                     if fact.relation == name and fact.subject < fact.object]
        rng.shuffle(units)
        heldout_end = max(1, round(len(units) * heldout_fraction))
        validation_end = heldout_end + max(1, round(len(units) * validation_fraction))
        for index, unit in enumerate(units[:validation_end]):
            for fact in unit:
                split_of[fact] = "heldout" if index < heldout_end else "validation"
    return split_of


def _deal_wordings(seed: int) -> dict[str, dict[Split, tuple[str, ...]]]:
    """Each relation's evaluation wordings, shuffled by the seed, half to validation and half to held-out: over seeds
    every wording is as likely in one split as in the other, so validation questions are the same kind of test as the
    held-out ones (with fixed wordings, a setting that suits the validation wordings need not suit the held-out)."""
    rng = random.Random(f"lumi-synthetic/{seed}/wordings")
    dealt = {}
    for name, relation in RELATIONS.items():
        wordings = list(relation.evaluation_questions)
        rng.shuffle(wordings)
        half = len(wordings) // 2
        dealt[name] = {"train": relation.train_questions, "validation": tuple(wordings[:half]),
                       "heldout": tuple(wordings[half:])}
    return dealt


class SyntheticSourceConfig(ConfigModel):
    """A corpus source that generates the synthetic world's documents instead of reading files."""

    type: Literal["synthetic"] = Field(description="synthetic: generate the world's documents")
    name: str = Field("synthetic", description="source name in the manifest, reports and per-source stats")
    seed: int = Field(0, description="the world's seed: people, towns, facts and wordings all follow from it")
    documents: int = Field(default=25000, ge=1, description="documents generated")
    people: int = Field(default=300, ge=8, le=100_000, description="invented people in the world")
    places: int = Field(default=40, ge=4, le=len(TOWN_NAMES), description="towns in the world")
    heldout_fraction: float = Field(default=0.2, gt=0, lt=1,
                                    description=("share of facts held out from SFT/DPO training pairs (asked only in "
                                                 "the evaluations that report, never to choose anything)"))
    validation_fraction: float = Field(default=0.1, gt=0, lt=1,
                                       description=("share of facts kept out of training pairs to choose settings on "
                                                    "(early stopping, DPO data and settings): the SFT/DPO val split"))

    def world_options(self) -> dict[str, int | float]:
        """Keyword arguments of ``SyntheticWorld.generate``: later stages rebuild the same world from them."""
        return {"seed": self.seed, "num_people": self.people, "num_places": self.places,
                "heldout_fraction": self.heldout_fraction, "validation_fraction": self.validation_fraction}

    def world(self) -> SyntheticWorld:
        return SyntheticWorld.generate(**self.world_options())
