"""Synthetic résumé lines with word-level entity labels, for the demo model.

Deterministic for a seed. Names, companies and skills are drawn from lists; a held-out split
(another seed) draws other combinations, which is enough to show that a model learned the
task and that its ONNX variants keep what it learned.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST = (
    "Jane", "John", "Carlos", "Priya", "Wei", "Fatima", "Olga", "Kwame", "Aiko", "Liam",
    "Sofia", "Mateo", "Amara", "Noah", "Elena", "Ravi", "Hannah", "Youssef", "Mei", "Lucas",
)  # fmt: skip
LAST = (
    "Doe", "Smith", "Ramirez", "Natarajan", "Chen", "Khan", "Ivanova", "Mensah", "Tanaka",
    "Murphy", "Rossi", "Garcia", "Okafor", "Muller", "Petrov", "Singh", "Novak", "Silva",
)  # fmt: skip
ORGS = (
    "Contoso Ltd", "Fabrikam Inc", "Northwind Traders", "Tailspin Toys", "Adventure Works",
    "Wide World Importers", "Litware", "Proseware", "Woodgrove Bank", "Alpine Ski House",
    "Blue Yonder Airlines", "Coho Winery", "Fourth Coffee", "Lamna Healthcare",
)  # fmt: skip
SKILLS = (
    "Python", "PyTorch", "Java", "Kubernetes", "SQL", "Apache Spark", "ONNX Runtime",
    "TensorFlow", "Docker", "React", "Go", "Rust", "Scala", "Airflow", "Terraform",
    "machine learning", "data engineering", "C++", "Kafka", "PostgreSQL",
)  # fmt: skip
MONTHS = ("January", "March", "April", "June", "September", "November")
TITLES = ("data engineer", "software developer", "ML engineer", "analyst", "architect")
DOMAINS = ("example.com", "example.org", "mail.example.net")

# Each template is a list of words and slots; a slot is {KIND}.
TEMPLATES = (
    "{NAME} , senior {TITLE} at {ORG} .",
    "Email : {EMAIL} | Phone : {PHONE}",
    "Skills : {SKILL} , {SKILL} , {SKILL} .",
    "{DATE} - {DATE} : {TITLE} at {ORG} .",
    "Contact {NAME} at {EMAIL} or {PHONE} .",
    "Worked with {ORG} from {DATE} to {DATE} using {SKILL} and {SKILL} .",
    "{NAME} has built pipelines in {SKILL} for {ORG} since {DATE} .",
    "References available from {NAME} ( {EMAIL} ) .",
    "{NAME} | {EMAIL} | {PHONE}",
    "Experienced {TITLE} skilled in {SKILL} and {SKILL} , formerly at {ORG} ( {DATE} ) .",
    "Joined {ORG} in {DATE} ; reports to {NAME} .",
    "{SKILL} , {SKILL} and {SKILL} at {ORG} .",
    "Phone {PHONE} , email {EMAIL} .",
)


@dataclass(frozen=True)
class Example:
    words: tuple[str, ...]
    labels: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


def _entity(kind: str, rng: random.Random) -> list[str]:
    if kind == "NAME":
        return [rng.choice(FIRST), rng.choice(LAST)]
    if kind == "EMAIL":
        return [f"{rng.choice(FIRST).lower()}.{rng.choice(LAST).lower()}@{rng.choice(DOMAINS)}"]
    if kind == "PHONE":
        return [
            f"+{rng.randint(1, 49)}",
            f"({rng.randint(100, 999)})",
            f"555-{rng.randint(0, 9999):04d}",
        ]
    if kind == "SKILL":
        return rng.choice(SKILLS).split()
    if kind == "ORG":
        return rng.choice(ORGS).split()
    if kind == "DATE":
        year = str(rng.randint(2005, 2025))
        return [rng.choice(MONTHS), year] if rng.random() < 0.6 else [year]
    raise ValueError(kind)


def _fill(template: str, rng: random.Random) -> Example:
    words: list[str] = []
    labels: list[str] = []
    for token in template.split():
        if token.startswith("{") and token.endswith("}"):
            kind = token[1:-1]
            if kind == "TITLE":
                title = rng.choice(TITLES).split()
                words += title
                labels += ["O"] * len(title)
                continue
            parts = _entity(kind, rng)
            words += parts
            labels += [f"B-{kind}"] + [f"I-{kind}"] * (len(parts) - 1)
        else:
            words.append(token)
            labels.append("O")
    return Example(tuple(words), tuple(labels))


def generate(count: int, *, seed: int) -> list[Example]:
    """`count` examples; different seeds give different (held-out) combinations."""
    rng = random.Random(seed)
    return [_fill(rng.choice(TEMPLATES), rng) for _ in range(count)]
