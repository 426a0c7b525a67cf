"""The retrieval environment: questions about an invented world, answered by searching a fact table.

The facts (`data/builtin/facts.jsonl`: 120 facts about 40 made-up countries, rivers, people, cities,
mountains and ships) are our own invention, so no model knows them: the only way to the answer is the
`search` tool. The questions (`data/builtin/retrieval.jsonl`, two per fact) are split by entity: the
test entities never appear in a training question or answer, so a test score measures searching, not
memorising. Both files are written by `write_builtin` (`python -m alignkit.envs.retrieval`) from the
table below.

`search` ranks facts by how many words they share with the query (lowercase word sets, a few function
words left out, ties broken by fact id) and returns the best three, one a line: deterministic and simple
enough that a policy can learn what a good query is.
"""

from __future__ import annotations

import functools
import json
import re
import string
from pathlib import Path

from alignkit.data.builtin import builtin_path
from alignkit.envs.base import ToolEnvironment

TOP_K = 3
MAX_QUERY = 1000

SEARCH = {
    "name": "search",
    "description": "Search the fact library; returns the three facts that best match the query, one a line.",
    "parameters": {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "words to look for, e.g. the question"}},
        "required": ["query"],
    },
}

STOPWORDS = frozenset("a an the of in on at to into by as for and or is was are were be what which who whom "
                      "where when how does did do s".split())
WORD = re.compile(r"[a-z0-9]+")
ARTICLES = re.compile(r"\b(a|an|the)\b")
PUNCTUATION = str.maketrans("", "", string.punctuation)

# kind -> (fact, [two questions], answer) for each of the kind's three values v0, v1, v2
KINDS = {
    "country": [
        ("{v0} is the capital of {e}.", ["What is the capital of {e}?", "Which city is the capital of {e}?"], "{v0}"),
        ("The currency of {e} is the {v1}.", ["What is the currency of {e}?", "Which currency do people in {e} use?"],
         "{v1}"),
        ("The national animal of {e} is the {v2}.", ["What is the national animal of {e}?",
                                                     "Which animal is the national symbol of {e}?"], "{v2}"),
    ],
    "river": [
        ("The river {e} flows into Lake {v0}.", ["Into which lake does the river {e} flow?",
                                                 "Which lake does the river {e} flow into?"], "Lake {v0}"),
        ("The river {e} rises in the {v1} Mountains.", ["In which mountains does the river {e} rise?",
                                                        "Where does the river {e} rise?"], "{v1} Mountains"),
        ("The {v2} is a fish found only in the river {e}.", ["Which fish is found only in the river {e}?",
                                                             "What fish lives only in the river {e}?"], "{v2}"),
    ],
    "person": [
        ("{e} was born in the town of {v0}.", ["In which town was {e} born?", "Where was {e} born?"], "{v0}"),
        ("{e} invented the {v1}.", ["What did {e} invent?", "Which device was invented by {e}?"], "{v1}"),
        ("{e} worked as a {v2}.", ["What was {e}'s job?", "What did {e} work as?"], "{v2}"),
    ],
    "city": [
        ("{e} was founded in the year {v0}.", ["In which year was {e} founded?",
                                               "When was the city of {e} founded?"], "{v0}"),
        ("The best-known dish of {e} is {v1}.", ["What is the best-known dish of {e}?",
                                                 "Which dish is {e} known for?"], "{v1}"),
        ("The mayor of {e} is {v2}.", ["Who is the mayor of {e}?", "Who leads the city of {e} as mayor?"], "{v2}"),
    ],
    "mountain": [
        ("The first person to climb Mount {e} was {v0}.", ["Who was the first person to climb Mount {e}?",
                                                           "Who first climbed Mount {e}?"], "{v0}"),
        ("Mount {e} lies in the {v1} Range.", ["In which range does Mount {e} lie?",
                                               "Which mountain range is Mount {e} part of?"], "{v1} Range"),
        ("The {v2} is a flower that grows only on Mount {e}.", ["Which flower grows only on Mount {e}?",
                                                                "What flower is found only on Mount {e}?"], "{v2}"),
    ],
    "ship": [
        ("The ship {e} was built in the port of {v0}.", ["In which port was the ship {e} built?",
                                                         "Where was the ship {e} built?"], "{v0}"),
        ("The captain of the ship {e} was {v1}.", ["Who was the captain of the ship {e}?",
                                                   "Who captained the ship {e}?"], "{v1}"),
        ("The ship {e} sank in the year {v2}.", ["In which year did the ship {e} sink?",
                                                 "When did the ship {e} sink?"], "{v2}"),
    ],
}

ENTITIES = [  # (kind, entity, v0, v1, v2): all names invented
    ("country", "Zorbia", "Quellin", "drell", "glimmerfox"),
    ("country", "Valdremia", "Dravemont", "sorin", "marsh hoppel"),
    ("country", "Ostrevan", "Istrabel", "kavet", "tusked varn"),
    ("country", "Kelmoria", "Korvane", "pelmark", "blue kestrith"),
    ("country", "Thandrel", "Selbrith", "tovin", "snow plimmet"),
    ("country", "Pellucia", "Amberfall", "zarel", "ridgeback ullat"),
    ("country", "Marvassia", "Venquist", "ombrin", "golden fennick"),
    ("country", "Quorland", "Tolmerey", "lurat", "spotted orrow"),
    ("river", "Osmer", "Tarrin", "Kelder", "quillfin"),
    ("river", "Vessin", "Emberlee", "Brannoch", "dappled orm"),
    ("river", "Durnel", "Quosh", "Yselt", "redgill tolp"),
    ("river", "Aubreth", "Hallorn", "Gorrimund", "glass perchet"),
    ("river", "Tiskel", "Vantry", "Caddrith", "silver vimble"),
    ("river", "Moravel", "Briswater", "Feldspire", "mottled skerrin"),
    ("person", "Orla Venstrake", "Pellow", "tide clock", "lighthouse keeper"),
    ("person", "Mirren Ashcombe", "Haskenby", "echo lantern", "glassblower"),
    ("person", "Dace Ullvander", "Brindlemere", "rain harp", "beekeeper"),
    ("person", "Perrin Quodwell", "Ostry", "mirror compass", "cartographer"),
    ("person", "Lysa Thornvale", "Quarrow", "wind organ", "clockmaker"),
    ("person", "Edric Malvoy", "Vintle", "copper quill", "ferryman"),
    ("person", "Sabeth Corrowin", "Sedgeholm", "star ladder", "bookbinder"),
    ("person", "Annick Drevel", "Tarnwick", "weather loom", "stonemason"),
    ("city", "Oskendale", "1342", "brannel stew", "Hollis Grane"),
    ("city", "Virrowgate", "1187", "fenberry tart", "Maud Ellerby"),
    ("city", "Pemberlin", "1509", "salted morrow", "Corin Tash"),
    ("city", "Saltreach", "1276", "glazed tulk", "Wenna Pryle"),
    ("city", "Dunvarrow", "1421", "ashcake", "Tamsin Rook"),
    ("city", "Kestermouth", "1093", "pickled sorrel loaf", "Bram Ottersby"),
    ("mountain", "Skarrow", "Greta Hanwick", "Tesk", "frostbell"),
    ("mountain", "Elbreth", "Jory Pellam", "Orrin", "cinderlily"),
    ("mountain", "Vorn", "Idris Calloway", "Brevic", "moon thistle"),
    ("mountain", "Ithrel", "Nessa Vardy", "Ulmen", "ash orchid"),
    ("mountain", "Caldris", "Fenn Arbury", "Kossel", "pale lanternwort"),
    ("mountain", "Pennock", "Hester Moyle", "Drisk", "snowcrown"),
    ("ship", "Calloran", "Porthavel", "Ysolde Marr", "1612"),
    ("ship", "Istveld", "Skellin", "Garrick Dole", "1734"),
    ("ship", "Merrowind", "Grisport", "Alys Tarrant", "1689"),
    ("ship", "Orvane", "Lowenmark", "Piers Hollin", "1801"),
    ("ship", "Talisk", "Cobbhaven", "Rowena Strake", "1655"),
    ("ship", "Wendrake", "Ardlow", "Mattias Crane", "1777"),
]

TEST_ENTITIES = frozenset({"Marvassia", "Quorland", "Moravel", "Edric Malvoy", "Annick Drevel", "Kestermouth",
                           "Pennock", "Wendrake"})
"""Held out: a fifth of the entities, from every kind."""


def words(text: str) -> frozenset[str]:
    """The searchable words of a text: lowercase runs of letters and digits, function words left out."""
    return frozenset(WORD.findall(text.lower())) - STOPWORDS


def normalise_answer(text: str) -> str:
    """An answer compared the SQuAD way: lowercase, no punctuation or articles, single spaces."""
    text = ARTICLES.sub(" ", text.lower().translate(PUNCTUATION))
    return " ".join(text.split())


def build_facts_and_questions() -> tuple[list[dict], list[dict]]:
    """The fact rows ({"id", "entity", "fact"}) and question rows ({"prompt", "question", "answer",
    "fact_id", "entity", "split"}) of the table above."""
    facts, questions = [], []
    for kind, entity, *values in ENTITIES:
        slots = {"e": entity, **{f"v{i}": v for i, v in enumerate(values)}}
        for fact, asks, answer in KINDS[kind]:
            fact_id = f"f{len(facts) + 1:03d}"
            facts.append({"id": fact_id, "entity": entity, "fact": fact.format(**slots)})
            for ask in asks:
                text = ask.format(**slots)
                questions.append({"prompt": [{"role": "user", "content": text}], "question": text,
                                  "answer": answer.format(**slots), "fact_id": fact_id, "entity": entity,
                                  "split": "test" if entity in TEST_ENTITIES else "train"})
    return facts, questions


def write_builtin(directory: str | Path | None = None) -> list[Path]:
    """Write facts.jsonl and retrieval.jsonl (default: into the built-in data folder)."""
    facts, questions = build_facts_and_questions()
    paths = []
    for name, rows in (("facts.jsonl", facts), ("retrieval.jsonl", questions)):
        path = Path(directory) / name if directory is not None else builtin_path(name)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        paths.append(path)
    return paths


@functools.lru_cache(maxsize=1)
def builtin_facts() -> tuple[tuple[str, str, frozenset[str]], ...]:
    """The built-in facts as (id, text, words), read once."""
    with open(builtin_path("facts.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return tuple((row["id"], row["fact"], words(row["fact"])) for row in rows)


def search(query: str, facts=None, k: int = TOP_K) -> list[str]:
    """The texts of the `k` facts sharing the most words with `query` (ties: the smaller id first); facts
    sharing none are never returned."""
    query_words = words(query)
    scored = [(-len(query_words & fact_words), fact_id, text)
              for fact_id, text, fact_words in (facts if facts is not None else builtin_facts())]
    return [text for overlap, _, text in sorted(scored)[:k] if overlap < 0]


class RetrievalEnv(ToolEnvironment):
    """Questions about invented facts with a `search` tool; reward 1 for the right answer in <answer>.

    Rows: {"question", "answer", ...} (the rows of `data/builtin/retrieval.jsonl`).
    """

    tools = [SEARCH]
    system_prompt = "Answer the question about an invented world; only the search tool knows its facts."

    def call(self, name: str, arguments: dict) -> str:
        query = str(arguments["query"])
        if len(query) > MAX_QUERY:
            return f"error: the query is longer than {MAX_QUERY} characters"
        return "\n".join(search(query)) or "no facts found"

    def score(self, answer: str) -> float:
        """1.0 when the answer equals the row's answer once both are normalised, else 0.0."""
        return 1.0 if normalise_answer(answer) == normalise_answer(str(self.row["answer"])) else 0.0

    def demonstration(self, row: dict) -> list[dict]:
        """Opening, a search for the question itself, its result, the answer."""
        return self.one_call_solution(row, "search", {"query": row["question"]}, str(row["answer"]))


if __name__ == "__main__":
    for written in write_builtin():
        print(written)
