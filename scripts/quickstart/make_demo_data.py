"""Grow the demo world: an invented corpus of people, places and works, with two-hop questions.

    python -m scripts.quickstart.make_demo_data [--out data/demo] [--seed 0] [--test-size 48]

Writes `corpus.jsonl` (`{"id", "contents": "\\"Title\\"\\ntext"}`), `train.jsonl` and `test.jsonl`
(`{"id", "question", "golden_answers", "supporting_ids"}`). Every name is made up from syllables,
so a model cannot answer from memory: it has to retrieve. Two kinds of question, as in HotpotQA:
- bridge: the question names one entity (the title of its first supporting passage); that passage
  names a bridge entity (the title of the second), which holds the answer; the first never does.
  Found in two rounds: the second query is only known after reading the first passage.
- comparison: the question names two entities, each passage holds one of the facts compared (birth
  years, founding years, birthplaces). Both passages can be searched at once: one parallel round.
The same seed writes the same bytes.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "data" / "demo"

# World size: 89 passages; 192 bridge questions (4 per person, 2 per work, 1 per school) and
# 72 comparison questions (pairs of people and of schools).
N_COUNTRIES, N_CITIES, N_SCHOOLS, N_PEOPLE, N_WORKS = 5, 14, 8, 30, 32
N_BORN_FIRST, N_SAME_CITY, N_FOUNDED_FIRST = 30, 24, 18

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "tr", "th", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
CODAS = ["", "", "", "n", "r", "l", "s", "nd"]
CITY_SUFFIXES = ["ford", "mere", "holm", "wick", "dale"]
COUNTRY_SUFFIXES = ["ia", "land", "mark"]
SCHOOL_KINDS = ["Academy", "Conservatory", "College", "Institute"]
ADJECTIVES = ["Glass", "Silent", "Amber", "Hollow", "Northern", "Crimson", "Paper", "Iron", "Distant", "Quiet",
              "Salt", "Winter", "Golden", "Broken", "Hidden", "Painted"]
NOUNS = ["Orchard", "Lantern", "Harbour", "Staircase", "Garden", "Mirror", "Bridge", "Tide", "Letters", "Tower",
         "Meadow", "Clock", "Voyage", "Feather", "Window", "Harvest"]
# occupation -> (kind of work, verb phrase, word for the maker in questions)
CRAFTS = {
    "novelist": ("novel", "written by", "author"),
    "composer": ("symphony", "composed by", "composer"),
    "painter": ("painting", "by", "painter"),
}
CITY_TRADES = ["its glassworks", "its textile mills", "its fish market", "its shipyards", "its wine cellars",
               "its clock makers", "its paper mills", "its salt pans"]
PERSON_TRAITS = ["was known for working only at night", "kept a large collection of maps",
                 "rarely gave interviews", "travelled widely in later life", "taught for many years",
                 "wrote long letters to friends", "worked in a small studio by the water"]
WORK_NOTES = ["It was received warmly by critics.", "It became popular only decades later.",
              "It is often described as a quiet and careful work.", "It was revised twice before its final form.",
              "Its first audiences were small but devoted."]


@dataclass
class World:
    rng: random.Random
    used: list[str] = field(default_factory=list)
    passages: list[dict] = field(default_factory=list)

    def word(self, suffix: str = "", syllables: tuple[int, int] = (2, 2)) -> str:
        """A fresh capitalized word that neither contains nor is contained in any earlier one
        (so searching or matching one name never hits another)."""
        while True:
            n = self.rng.randint(*syllables)
            stem = "".join(self.rng.choice(ONSETS) + self.rng.choice(VOWELS) for _ in range(n - 1))
            stem += self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
            candidate = (stem + suffix).capitalize()
            low = candidate.lower()
            if all(low not in u and u not in low for u in self.used):
                self.used.append(low)
                return candidate

    def add_passage(self, title: str, text: str) -> str:
        pid = f"demo{len(self.passages)}"
        self.passages.append({"id": pid, "contents": f'"{title}"\n{text}'})
        return pid


def build_world(seed: int) -> tuple[list[dict], list[dict]]:
    """Return (passages, questions) of the world grown from `seed`; questions in a fixed order."""
    world = World(random.Random(seed))
    rng = world.rng
    questions: list[dict] = []

    def ask(question: str, answers: list[str], first: str, second: str, kind: str = "bridge") -> None:
        questions.append({"id": f"demo_q{len(questions)}", "question": question, "golden_answers": answers,
                          "supporting_ids": [first, second], "type": kind})

    countries = []
    for _ in range(N_COUNTRIES):
        name = world.word(rng.choice(COUNTRY_SUFFIXES))
        text = (f"{name} is a small country with a coastline of cliffs and long beaches. "
                f"Its people are known for their festivals of light held every autumn.")
        countries.append({"name": name, "pid": world.add_passage(name, text)})

    cities = []
    for i in range(N_CITIES):
        name = world.word(rng.choice(CITY_SUFFIXES))
        country = countries[i % N_COUNTRIES]
        river = world.word()
        founded = rng.randint(900, 1500)
        text = (f"{name} is a city in {country['name']}, built on both banks of the {river} river. "
                f"It was founded in {founded} and is famous for {rng.choice(CITY_TRADES)}.")
        cities.append({"name": name, "country": country["name"], "river": river, "pid": world.add_passage(name, text)})

    schools = []
    for _ in range(N_SCHOOLS):
        name = f"{world.word()} {rng.choice(SCHOOL_KINDS)}"
        city = rng.choice(cities)
        founder = f"{world.word()} {world.word()}"
        founded = rng.randint(1700, 1850)
        text = (f"The {name} is a school of the arts located in {city['name']}. "
                f"It was founded in {founded} by {founder} and admits about two hundred students a year.")
        school = {"name": name, "city": city, "founder": founder, "founded": founded,
                  "pid": world.add_passage(name, text)}
        schools.append(school)
        # The school passage names its city but not the country: two hops.
        ask(f"In which country is the {name} located?", [city["country"]], school["pid"], city["pid"])

    people = []
    occupations = list(CRAFTS)
    for i in range(N_PEOPLE):
        name = f"{world.word()} {world.word()}"
        occupation = occupations[i % len(occupations)]
        birthplace = rng.choice(cities)
        # Studying in another city than the birthplace keeps the school's city out of the person's passage.
        school = rng.choice([s for s in schools if s["city"] is not birthplace])
        born = rng.randint(1820, 1960)
        pronoun = rng.choice(["She", "He"])
        text = (f"{name} (born {born}) is a {occupation}. {pronoun} was born in {birthplace['name']} "
                f"and studied at the {school['name']}. {pronoun} {rng.choice(PERSON_TRAITS)}.")
        person = {"name": name, "occupation": occupation, "born": born, "birthplace": birthplace,
                  "pid": world.add_passage(name, text)}
        people.append(person)
        city, pid = birthplace, person["pid"]
        ask(f"In which country was {name} born?", [city["country"]], pid, city["pid"])
        ask(f"Which river flows through the city where {name} was born?",
            [city["river"], f"{city['river']} river"], pid, city["pid"])
        ask(f"In which city is the school that {name} attended?", [school["city"]["name"]], pid, school["pid"])
        ask(f"Who founded the school where {name} studied?", [school["founder"]], pid, school["pid"])

    titles = [f"The {a} {n}" for a in ADJECTIVES for n in NOUNS]
    for title in rng.sample(titles, N_WORKS):
        maker = rng.choice(people)
        kind, verb, maker_word = CRAFTS[maker["occupation"]]
        # A work appears well after its maker's birth, so its year never equals the birth year.
        year = maker["born"] + rng.randint(20, 60)
        text = f"{title} is a {kind} {verb} {maker['name']}, first presented in {year}. {rng.choice(WORK_NOTES)}"
        pid = world.add_passage(title, text)
        ask(f"In which city was the {maker_word} of {title} born?", [maker["birthplace"]["name"]], pid, maker["pid"])
        ask(f"In what year was the {maker_word} of {title} born?", [str(maker["born"])], pid, maker["pid"])
    ask_comparisons(rng, people, schools, ask)
    return world.passages, questions


def ask_comparisons(rng: random.Random, people: list[dict], schools: list[dict], ask) -> None:
    """Questions naming two entities whose passages each hold one side of the comparison."""
    pairs = [(a, b) for i, a in enumerate(people) for b in people[i + 1:]]
    distinct_years = [(a, b) for a, b in pairs if a["born"] != b["born"]]
    for a, b in rng.sample(distinct_years, N_BORN_FIRST):
        a, b = rng.sample([a, b], 2)  # which one is named first says nothing about the answer
        first = min((a, b), key=lambda p: p["born"])
        ask(f"Who was born first, {a['name']} or {b['name']}?", [first["name"]], a["pid"], b["pid"], "comparison")
    same = [(a, b) for a, b in pairs if a["birthplace"] is b["birthplace"]]
    different = [(a, b) for a, b in pairs if a["birthplace"] is not b["birthplace"]]
    half = N_SAME_CITY // 2
    for (a, b), answer in rng.sample([*zip(rng.sample(same, half), ["yes"] * half),
                                      *zip(rng.sample(different, half), ["no"] * half)], N_SAME_CITY):
        ask(f"Were {a['name']} and {b['name']} born in the same city?", [answer], a["pid"], b["pid"], "comparison")
    school_pairs = [(a, b) for i, a in enumerate(schools) for b in schools[i + 1:] if a["founded"] != b["founded"]]
    for a, b in rng.sample(school_pairs, N_FOUNDED_FIRST):
        a, b = rng.sample([a, b], 2)
        first = min((a, b), key=lambda s: s["founded"])
        ask(f"Which school was founded first, the {a['name']} or the {b['name']}?", [first["name"]],
            a["pid"], b["pid"], "comparison")


def split_questions(questions: list[dict], test_size: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded split into (train, test), stratified by question type (each type's share of the
    test set is its share of all questions); each part keeps the generation order."""
    if not 0 < test_size < len(questions):
        raise ValueError(f"--test-size must be between 1 and {len(questions) - 1}, got {test_size}")
    rng = random.Random(seed + 1)
    test_idx: set[int] = set()
    kinds = sorted({q["type"] for q in questions})
    for k, kind in enumerate(kinds):
        rows = [i for i, q in enumerate(questions) if q["type"] == kind]
        share = test_size - len(test_idx) if k == len(kinds) - 1 else round(test_size * len(rows) / len(questions))
        test_idx.update(rng.sample(rows, share))
    train = [q for i, q in enumerate(questions) if i not in test_idx]
    test = [q for i, q in enumerate(questions) if i in test_idx]
    return train, test


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def make_demo_data(out_dir: Path, seed: int = 0, test_size: int = 48) -> dict[str, int]:
    """Write corpus.jsonl, train.jsonl and test.jsonl under `out_dir`; return their row counts."""
    passages, questions = build_world(seed)
    train, test = split_questions(questions, test_size, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "corpus.jsonl", passages)
    write_jsonl(out_dir / "train.jsonl", train)
    write_jsonl(out_dir / "test.jsonl", test)
    return {"corpus": len(passages), "train": len(train), "test": len(test)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="seed of names, facts and the split")
    parser.add_argument("--test-size", type=int, default=48, help="held-out questions")
    args = parser.parse_args(argv)
    counts = make_demo_data(args.out, args.seed, args.test_size)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
