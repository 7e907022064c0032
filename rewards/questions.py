"""Atomic yes/no questions for a prompt (GenEval 2's Soft-TIFA, Kamath et al. 2025, arXiv 2512.16853): one per
object, count, colour and relation the prompt asks for, each of which a correct image answers "yes".

Two sources, both rule-based (no language model):
- a GenEval metadata record (`include`: class, count, colour, position) gives its questions exactly;
- otherwise the prompt text is parsed, and only GenEval's templates are understood: an optional "a photo of",
  then noun phrases joined by "and", each "<a|an|one..ten|digits> [colour] <noun>", optionally followed by a
  relation ("left of", "right of", "above", "below", "to the left of", "to the right of") and another noun
  phrase. "a photo of two red cups and a dog left of a cat" parses; free text ("a cat sleeping on a sofa") does
  not, and is an error that asks for hand-written questions (the prompt file's `questions` list), never a guess.

`python -m rewards questions PROMPTS_IN OUT` writes a prompt file whose every record carries its `questions`
(rewards/prompts.py reads them), so a run asks what was reviewed once rather than parsing at every step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from rewards.prompts import is_geneval_record, load_prompts

COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray", "grey")
NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                "eight": 8, "nine": 9, "ten": 10}
# Spoken relation -> GenEval's relation word (rewards/geneval_rules.py RELATIONS); longest phrases first.
RELATION_PHRASES = {"to the left of": "left of", "to the right of": "right of", "left of": "left of",
                    "right of": "right of", "above": "above", "below": "below"}
# How a question says each GenEval relation.
RELATION_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
PREFIXES = ("a photo of ", "a photograph of ", "an image of ", "a picture of ")
# Words that never occur inside a GenEval noun: a phrase holding one is free text, not a template.
NOT_A_NOUN = {"a", "an", "the", "and", "of", "on", "in", "with", "at", "near", "under", "behind", "next", "to",
              "left", "right", "above", "below", "is", "are"} | set(NUMBER_WORDS)
IRREGULAR_PLURALS = {"person": "people", "mouse": "mice", "sheep": "sheep", "knife": "knives", "skis": "skis",
                     "scissors": "scissors", "bus": "buses", "child": "children", "man": "men", "woman": "women",
                     "fish": "fish", "deer": "deer", "broccoli": "broccoli"}
IRREGULAR_SINGULARS = {plural: word for word, plural in IRREGULAR_PLURALS.items()}
_WORDS = ["zero", *list(NUMBER_WORDS)[2:]]


class UnparsedPrompt(ValueError):
    """A prompt outside the GenEval templates the rule-based decomposer reads."""


# ----------------------------------------------------------------------------- words


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: its last word inflected."""
    *head, last = noun.split(" ")
    if last in IRREGULAR_PLURALS:
        last = IRREGULAR_PLURALS[last]
    elif last.endswith(("s", "x", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in ("a", "e", "i", "o", "u"):
        last = last[:-1] + "ies"
    else:
        last += "s"
    return " ".join([*head, last])


def singular(noun: str) -> str:
    """The inverse of `plural` on the nouns it makes."""
    *head, last = noun.split(" ")
    if last in IRREGULAR_SINGULARS:
        last = IRREGULAR_SINGULARS[last]
    elif last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("sses", "xes", "ches", "shes")):
        last = last[:-2]
    elif last.endswith("s") and not last.endswith("ss"):
        last = last[:-1]
    return " ".join([*head, last])


def article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def number_word(count: int) -> str:
    return _WORDS[count] if count < len(_WORDS) else str(count)


# ----------------------------------------------------------------------------- questions


def questions_for_include(include: Sequence[Mapping]) -> list[str]:
    """The atomic questions of GenEval `include` clauses: each object is present; a count above one is exact;
    each colour; each relation. Duplicates dropped, order kept."""
    questions = []
    for item in include:
        noun, count = item["class"], item["count"]
        questions.append(f"Is there {article(noun)} {noun}?")
        if count > 1:
            questions.append(f"Are there exactly {number_word(count)} {plural(noun)}?")
        if item.get("color"):
            subject = f"Is the {noun}" if count == 1 else f"Are the {plural(noun)}"
            questions.append(f"{subject} {item['color']}?")
    for item in include:
        if item.get("position"):
            relation, anchor = item["position"]
            subject = f"Is the {item['class']}" if item["count"] == 1 else f"Are the {plural(item['class'])}"
            target = include[anchor]["class"] if include[anchor]["count"] == 1 else plural(include[anchor]["class"])
            questions.append(f"{subject} {RELATION_WORDS[relation]} the {target}?")
    return list(dict.fromkeys(questions))


def _noun_phrase(phrase: str) -> dict:
    """{class, count, color?} of "<determiner> [colour] <noun words>"."""
    words = phrase.split(" ")
    wrong = f"{phrase!r} is not '<a|an|number> [colour] <object>'"
    if len(words) < 2 or not (words[0] in NUMBER_WORDS or words[0].isdigit()):
        raise UnparsedPrompt(wrong)
    count = int(words[0]) if words[0].isdigit() else NUMBER_WORDS[words[0]]
    color = words[1] if words[1] in COLORS and len(words) > 2 else None
    noun = words[2:] if color else words[1:]
    if count < 1 or any(w in NOT_A_NOUN for w in noun):
        raise UnparsedPrompt(wrong)
    name = " ".join(noun)
    return {"class": singular(name) if count > 1 else name, "count": count, **({"color": color} if color else {})}


def parse_prompt(prompt: str) -> list[dict]:
    """GenEval `include` clauses read from a templated prompt (module docstring); UnparsedPrompt otherwise.
    A relation "A left of B" becomes B's clause, then A's with position ["left of", index of B] (GenEval's order)."""
    text = re.sub(r"\s+", " ", prompt.strip().lower()).rstrip(".")
    for prefix in PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    relation = "|".join(re.escape(p) for p in RELATION_PHRASES)  # longest first: the dict's order
    include: list[dict] = []
    try:
        for part in text.split(" and "):
            pieces = re.split(rf" ({relation}) ", part)
            if len(pieces) == 1:
                include.append(_noun_phrase(part))
            elif len(pieces) == 3:
                subject, phrase, anchor = pieces
                include.append(_noun_phrase(anchor))
                include.append({**_noun_phrase(subject), "position": [RELATION_PHRASES[phrase], len(include) - 1]})
            else:
                raise UnparsedPrompt(f"{part!r} chains more than one relation")
    except UnparsedPrompt as err:
        raise UnparsedPrompt(f"prompt {prompt!r}: {err}") from None
    return include


def questions_for(record: Mapping) -> list[str]:
    """A record's questions: its own `questions`, else those of its GenEval metadata, else of its parsed prompt
    (UnparsedPrompt when the prompt is free text)."""
    if record.get("questions"):
        return list(record["questions"])
    if is_geneval_record(record):
        return questions_for_include(record["include"])
    return questions_for_include(parse_prompt(record["prompt"]))


# ----------------------------------------------------------------------------- the command


def _record_lines(path: Path) -> list[int]:
    """The line of each record load_prompts returns (both skip blank lines)."""
    with path.open(encoding="utf-8") as file:
        return [n for n, line in enumerate(file, start=1) if line.strip()]


def write_questions(source: str | Path, out: str | Path) -> int:
    """Write `source`'s records to `out` (.jsonl), each with its `questions` (kept where it had them); returns
    how many records. Every prompt the decomposer cannot read is named by file:line in one ValueError, and
    nothing is written."""
    source, out = Path(source), Path(out)
    if out.suffix.lower() != ".jsonl":
        raise ValueError(f"{out}: the output must be a .jsonl prompt file (one JSON record per line)")
    records, lines = load_prompts(source), _record_lines(source)
    rows, problems = [], []
    for record, line in zip(records, lines, strict=True):
        try:
            rows.append({**record, "questions": questions_for(record)})
        except UnparsedPrompt as err:
            problems.append(f"{source}:{line}: {err}")
    if problems:
        more = f"\n... and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise ValueError("the rule-based decomposer reads GenEval-template prompts only; write these records' "
                         "`questions` by hand:\n" + "\n".join(problems[:5]) + more)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)
