"""Load and validate prompt files: GenEval metadata, plain prompt records, or plain text.

Formats, chosen by file extension and, in JSONL, by the record's shape:
- `.txt`: one prompt per line (surrounding whitespace stripped, blank lines skipped); each becomes
  {"prompt": line}.
- `.jsonl`, GenEval metadata (a record with "include" or "exclude"): {"tag", "include": [{"class",
  "count", "color"?, "position"?: [relation, target_index]}], "exclude"?: [{"class", "count"}],
  "prompt"}. The GenEval scorers read these records, not the prompt text.
- `.jsonl`, plain records: {"prompt", "tag"?} (OCR, PickScore, CLIPScore prompt sets).
Either JSONL kind may carry "questions": a non-empty list of yes/no questions that a correct image answers
"yes" (the `soft_tifa` scorer's atoms; `python -m rewards questions` writes them, rewards/questions.py).
One file holds one kind of record. A bad record would only surface mid-run as a wrong reward, so
every problem is a ValueError naming file:line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Hashable, Mapping, Sequence
from pathlib import Path

from rewards.geneval_rules import GENEVAL_TAGS, RELATIONS

_RECORD_KEYS = {"tag", "include", "exclude", "prompt", "questions"}
_INCLUDE_KEYS = {"class", "count", "color", "position"}
_EXCLUDE_KEYS = {"class", "count"}
_PLAIN_KEYS = {"prompt", "tag", "questions"}
PROMPT_SUFFIXES = (".jsonl", ".txt")


def _check_keys(item: object, allowed: set[str], required: set[str], field: str) -> list[str]:
    if not isinstance(item, dict):
        return [f"{field}: expected an object, got {type(item).__name__}"]
    problems = [f"{field}.{key}: unknown key" for key in sorted(set(item) - allowed)]
    problems += [f"{field}.{key}: missing" for key in sorted(required - set(item))]
    return problems


def _check_class(item: dict, field: str, classes: Collection[str] | None) -> list[str]:
    name = item["class"]
    if not isinstance(name, str) or not name:
        return [f"{field}.class: expected a non-empty string, got {name!r}"]
    if classes is not None and name not in classes:
        return [f"{field}.class: unknown class {name!r}"]
    return []


def _check_count(item: dict, field: str) -> list[str]:
    count = item["count"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return [f"{field}.count: expected an integer >= 1, got {count!r}"]
    return []


def _check_include(item: object, index: int, classes: Collection[str] | None,
                   colors: Collection[str] | None) -> list[str]:
    field = f"include[{index}]"
    problems = _check_keys(item, _INCLUDE_KEYS, {"class", "count"}, field)
    if problems:
        return problems
    problems = _check_class(item, field, classes) + _check_count(item, field)
    if "color" in item and (not isinstance(item["color"], str)
                            or (colors is not None and item["color"] not in colors)):
        problems.append(f"{field}.color: unknown colour {item['color']!r}")
    if "position" in item:
        position = item["position"]
        # GenEval resolves the target among the clauses already matched, so it must come earlier.
        if (not isinstance(position, list) or len(position) != 2 or position[0] not in RELATIONS
                or isinstance(position[1], bool) or not isinstance(position[1], int)
                or not 0 <= position[1] < index):
            problems.append(f"{field}.position: expected [relation in {list(RELATIONS)}, index of an earlier "
                            f"include clause], got {position!r}")
    return problems


def _check_exclude(item: object, index: int, classes: Collection[str] | None) -> list[str]:
    field = f"exclude[{index}]"
    problems = _check_keys(item, _EXCLUDE_KEYS, _EXCLUDE_KEYS, field)
    return problems or _check_class(item, field, classes) + _check_count(item, field)


def _check_questions(record: dict) -> list[str]:
    """The optional `questions`: a non-empty list of non-empty strings (an empty list would make a reward of no
    atoms, which is no reward)."""
    if "questions" not in record:
        return []
    questions = record["questions"]
    if not isinstance(questions, list) or not questions:
        return [f"questions: expected a non-empty list of question strings, got {questions!r}"]
    return [f"questions[{i}]: expected a non-empty string, got {q!r}" for i, q in enumerate(questions)
            if not isinstance(q, str) or not q.strip()]


def validate_record(record: object, classes: Collection[str] | None = None,
                    colors: Collection[str] | None = None) -> list[str]:
    """Problems with one record, each 'field: what is wrong' ([] when valid)."""
    problems = _check_keys(record, _RECORD_KEYS, {"tag", "include", "prompt"}, "record")
    if problems:
        return problems
    if record["tag"] not in GENEVAL_TAGS:
        problems.append(f"tag: expected one of {list(GENEVAL_TAGS)}, got {record['tag']!r}")
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        problems.append(f"prompt: expected a non-empty string, got {record['prompt']!r}")
    include, exclude = record["include"], record.get("exclude", [])
    if not isinstance(include, list) or not include:
        problems.append("include: expected a non-empty list")
    else:
        for index, item in enumerate(include):
            problems += _check_include(item, index, classes, colors)
    if not isinstance(exclude, list):
        problems.append("exclude: expected a list")
    else:
        for index, item in enumerate(exclude):
            problems += _check_exclude(item, index, classes)
    return problems + _check_questions(record)


def is_geneval_record(record: object) -> bool:
    """A record in GenEval's metadata schema (it names objects to find), as opposed to a plain prompt."""
    return isinstance(record, dict) and ("include" in record or "exclude" in record)


def validate_plain_record(record: object) -> list[str]:
    """Problems with one plain prompt record {"prompt", "tag"?, "questions"?}, each 'field: what is wrong'."""
    problems = _check_keys(record, _PLAIN_KEYS, {"prompt"}, "record")
    if problems:
        if isinstance(record, dict) and set(record) - _PLAIN_KEYS:
            problems.append("record: a plain prompt record holds `prompt` and optional `tag` and `questions` "
                            "(GenEval metadata records need `include`)")
        return problems
    if not isinstance(record["prompt"], str) or not record["prompt"].strip():
        problems.append(f"prompt: expected a non-empty string, got {record['prompt']!r}")
    if "tag" in record and (not isinstance(record["tag"], str) or not record["tag"]):
        problems.append(f"tag: expected a non-empty string, got {record['tag']!r}")
    return problems + _check_questions(record)


def _read_text(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as file:
        return [{"prompt": line.strip()} for line in file if line.strip()]


def _read_jsonl(path: Path, classes: Collection[str] | None, colors: Collection[str] | None) -> list[dict]:
    records, kind = [], None  # kind: (is GenEval, first line) of the file's first record
    with path.open(encoding="utf-8") as file:
        for lineno, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{lineno}: invalid JSON: {error.msg} (column {error.colno})") from None
            # A non-object is checked as the file's kind, so its error says "expected an object".
            geneval = is_geneval_record(record) if isinstance(record, dict) else bool(kind and kind[0])
            if kind is None:
                kind = (geneval, lineno)
            elif geneval != kind[0]:
                first, this = ("GenEval metadata", "plain") if kind[0] else ("plain", "GenEval metadata")
                raise ValueError(f"{path}:{lineno}: record: a {this} record in a file of {first} records "
                                 f"(line {kind[1]}); one file holds one kind")
            problems = validate_record(record, classes, colors) if geneval else validate_plain_record(record)
            if problems:
                raise ValueError(f"{path}:{lineno}: " + "; ".join(problems))
            records.append({**record, "exclude": record.get("exclude", [])} if geneval else record)
    return records


def load_prompts(path: str | Path, classes: Collection[str] | None = None,
                 colors: Collection[str] | None = None) -> list[dict]:
    """Records of a prompt file (see the module docstring), each a dict with at least `prompt`.

    GenEval records get an `exclude` list (GenEval leaves it out where empty). `classes` / `colors`,
    when given, are the vocabulary the scorer can read: a GenEval record naming anything else could
    never be satisfied. Blank lines are skipped."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        raise ValueError(f"{path}: unknown prompt file type {path.suffix!r}; expected one of {list(PROMPT_SUFFIXES)} "
                         "(.jsonl: one JSON record per line; .txt: one prompt per line)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file does not exist")
    records = _read_text(path) if suffix == ".txt" else _read_jsonl(path, classes, colors)
    if not records:
        raise ValueError(f"{path}: no prompt records (the file is empty)")
    return records


def prompt_tags(records: Sequence[dict], path: str, weights: Mapping[str, int] | None = None) -> list[str]:
    """Each record's `tag`, for data.prompt_order='tag_balanced'; names the first record without one, and
    any tag of `weights` (data.tag_weights) that no record has (a typo would otherwise weigh nothing)."""
    for line, record in enumerate(records, start=1):
        if not isinstance(record.get("tag"), str):
            raise ValueError(f"{path}: record {line} has no 'tag', which data.prompt_order='tag_balanced' needs "
                             f"(prompt {record.get('prompt')!r})")
    tags = [r["tag"] for r in records]
    unknown = sorted(set(weights or {}) - set(tags))
    if unknown:
        raise ValueError(f"data.tag_weights names tags {unknown} that no record of {path} has; its tags: "
                         f"{sorted(set(tags))}")
    return tags


# GenEval's relation words (geneval_rules.py) as (axis, whether the named object comes first along it):
# "B left of A" puts B first left to right, "B above A" puts B first top to bottom.
_RELATION_LAYOUT = {"left of": ("horizontal", True), "right of": ("horizontal", False),
                    "above": ("vertical", True), "below": ("vertical", False)}


def _layout(record: dict) -> tuple[str, str, str] | None:
    """(axis, first class, second class) along the axis of a two-object relation record, else None:
    "a circle left of a square" and "a square right of a circle" are both ('horizontal', circle, square)."""
    include = record.get("include") or []
    if len(include) != 2 or not include[1].get("position"):
        return None
    relation, anchor = include[1]["position"][0], include[1]["position"][1]
    if relation not in _RELATION_LAYOUT or anchor != 0:
        return None
    axis, named_first = _RELATION_LAYOUT[relation]
    a, b = include[0]["class"], include[1]["class"]
    return (axis, b, a) if named_first else (axis, a, b)


def layout_mirrors(records: Sequence[dict]) -> list[list[int]]:
    """For each record, the records that ask for the same two objects in the opposite layout ("a circle
    left of a square" -> "a square left of a circle", "a circle right of a square"); [] for records that
    name no relation or whose mirror the file lacks (data.mirror_position_prompts)."""
    return _mirrors([_layout(r) for r in records], lambda key: (key[0], key[2], key[1]))


def _mirrors(keys: Sequence[Hashable | None], mirror_of: Callable[[Hashable], Hashable]) -> list[list[int]]:
    """For each record's key (None: the record has no mirror kind), the indices of the records whose key is
    `mirror_of` it."""
    by_key: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            by_key.setdefault(key, []).append(i)
    return [[] if key is None else by_key.get(mirror_of(key), []) for key in keys]


def _binding(record: dict) -> frozenset[tuple[str, str]] | None:
    """The (class, colour) pairs of a two-object colour-binding record ("a red circle and a blue square"),
    in either wording; None for records of one object, of one class twice, with a relation or uncoloured."""
    include = record.get("include") or []
    if len(include) != 2 or any(o.get("position") or not o.get("color") or o.get("count", 1) != 1 for o in include):
        return None
    (a, b) = include
    if a["class"] == b["class"]:
        return None
    return frozenset({(a["class"], a["color"]), (b["class"], b["color"])})


def binding_mirrors(records: Sequence[dict]) -> list[list[int]]:
    """For each record, the records that ask for the same two objects with their colours exchanged ("a red
    circle and a blue square" -> "a blue circle and a red square"); [] for records that bind no colours or
    whose mirror the file lacks (data.mirror_binding_prompts)."""
    def exchanged(key: frozenset[tuple[str, str]]) -> frozenset[tuple[str, str]]:
        (a, colour_a), (b, colour_b) = sorted(key)
        return frozenset({(a, colour_b), (b, colour_a)})

    return _mirrors([_binding(r) for r in records], exchanged)
