"""Which training prompts an iteration samples (data.prompt_order), beside the prompts (rewards/prompts.py).

`PromptOrder(data, records, per_iteration, seed).indices(iteration)` is the one call the driver makes; it
hides which order the config asks for:
  - 'epochs': seeded permutations of the whole file (`prompts_for_iteration`);
  - 'tag_balanced': tags take turns, each walking its own permutations (`tag_balanced_prompts_for_iteration`),
    weighted by data.tag_weights;
  - with data.mirror_position_prompts / data.mirror_binding_prompts: a prompt with a mirror is trained
    beside one of them in the same iteration (`MirroredPromptOrder`).
Every order is a pure function of (seed, iteration) and the file, so a resumed run samples what the
uninterrupted one would have, and a lost group is sampled again from the same prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import torch

from models.seeding import derive_seed
from rewards.prompts import binding_mirrors, layout_mirrors, prompt_tags


class DataSection(Protocol):
    """The keys of the config's data section (cluster.config.DataConfig) an order reads."""

    train_prompts: str
    prompt_order: str
    tag_weights: dict[str, int]
    mirror_position_prompts: bool
    mirror_binding_prompts: bool


def prompts_for_iteration(num_prompts: int, per_iteration: int, seed: int, iteration: int) -> list[int]:
    """Prompt indices of an iteration: epochs of seeded permutations, a pure function of (seed, iteration)."""
    out = []
    for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration):
        epoch, offset = divmod(pos, num_prompts)
        perm = torch.randperm(num_prompts, generator=torch.Generator().manual_seed(derive_seed(seed, "data", epoch)))
        out.append(int(perm[offset]))
    return out


def tag_turns(names: Sequence[str], weights: Mapping[str, int]) -> list[str]:
    """One round of tag turns: every tag once, then again for each tag whose weight (default 1) allows,
    so weights {a: 2} over tags [a, b, c] give [a, b, c, a]; a tag's turns stay spread over the round."""
    rounds = max((weights.get(n, 1) for n in names), default=1)
    return [n for k in range(rounds) for n in names if weights.get(n, 1) > k]


def tag_balanced_prompts_for_iteration(tags: Sequence[str], per_iteration: int, seed: int, iteration: int,
                                       weights: Mapping[str, int] | None = None) -> list[int]:
    """Prompt indices of an iteration when tags take turns: slot p of the run goes to the tag at p mod R
    of `tag_turns` (tags in sorted order, R turns per round; with no weights every tag once), and each tag
    walks seeded permutations of its own prompts. A pure function of (tags, weights, seed, iteration), so
    a resumed run samples what the uninterrupted one would have."""
    pick = _tag_balanced_picker(tags, seed, weights)
    return [pick(pos) for pos in range(iteration * per_iteration, (iteration + 1) * per_iteration)]


def _tag_balanced_picker(tags: Sequence[str], seed: int, weights: Mapping[str, int] | None) -> Callable[[int], int]:
    """The prompt index of turn `pos` of the run (see tag_balanced_prompts_for_iteration)."""
    by_tag: dict[str, list[int]] = defaultdict(list)
    for i, tag in enumerate(tags):
        by_tag[tag].append(i)
    weights = weights or {}
    turns = tag_turns(sorted(by_tag), weights)
    # the k-th turn of a tag within a round, so its prompts are walked in order across rounds
    nth = [turns[:slot].count(name) for slot, name in enumerate(turns)]

    def pick(pos: int) -> int:
        round_, slot = divmod(pos, len(turns))
        name = turns[slot]
        members = by_tag[name]
        epoch, offset = divmod(round_ * weights.get(name, 1) + nth[slot], len(members))
        gen = torch.Generator().manual_seed(derive_seed(seed, "data", name, epoch))
        return members[int(torch.randperm(len(members), generator=gen)[offset])]

    return pick


def prompt_mirrors(records: Sequence[dict], data: DataSection) -> list[list[int]]:
    """Each training record's mirrors under data.mirror_position_prompts (the opposite layout) and
    data.mirror_binding_prompts (the colours exchanged); a record is one kind or neither, so the lists join."""
    kinds = [("mirror_position_prompts", layout_mirrors,
              "two objects with a relation, and the opposite layout in the file too"),
             ("mirror_binding_prompts", binding_mirrors,
              "two coloured objects, and the same two with the colours exchanged in the file too")]
    mirrors: list[list[int]] = [[] for _ in records]
    for name, find, what in kinds:
        if getattr(data, name):
            found = find(records)
            if not any(found):
                raise ValueError(f"data.{name} is set but no record of {data.train_prompts} has a mirror ({what})")
            mirrors = [a + b for a, b in zip(mirrors, found, strict=True)]
    return mirrors


def mirrored_prompts_for_iteration(tags: Sequence[str], mirrors: Sequence[Sequence[int]], per_iteration: int,
                                   seed: int, iteration: int, weights: Mapping[str, int] | None = None) -> list[int]:
    """tag_balanced_prompts_for_iteration where every turn that draws a prompt with mirrors
    (`prompt_mirrors`: the opposite layout, the colours exchanged) also draws one of them (seeded), into the
    same iteration: "a circle left of a square" is trained beside "a square left of a circle". A binary
    reward pays one fixed layout (or binding) per object pair on half of that pair's prompts whatever they
    say; trained side by side, the pushes toward either cancel and what is left depends on the words
    (docs/results.md).
    A pure function of its arguments (`MirroredPromptOrder` is the same order, remembered between calls)."""
    return MirroredPromptOrder(tags, mirrors, per_iteration, seed, weights)(iteration)


class MirroredPromptOrder:
    """`mirrored_prompts_for_iteration` for a run. Turns become units of one or two prompts; an iteration
    takes them in order, and a pair that does not fit in the slots left waits for the next iteration while
    later single prompts fill them. Where an iteration starts depends on every earlier one, so the order
    remembers where the last iteration it gave ended (the next costs one iteration's turns) and replays
    from the run's start for any other (a resumed run samples what the uninterrupted one did)."""

    def __init__(self, tags: Sequence[str], mirrors: Sequence[Sequence[int]], per_iteration: int, seed: int,
                 weights: Mapping[str, int] | None = None):
        if per_iteration < 2 or (per_iteration % 2 and all(mirrors)):
            raise ValueError(f"data.mirror_*_prompts: {per_iteration} prompts per iteration cannot hold the "
                             "prompt pairs (one prompt per iteration, or an odd number when every prompt has a mirror)")
        self.mirrors, self.per_iteration, self.seed = mirrors, per_iteration, seed
        self.pick = _tag_balanced_picker(tags, seed, weights)
        self._restart()

    def _restart(self) -> None:
        self.next_iteration, self.pos, self.waiting, self.last = 0, 0, [], []

    def _unit(self) -> list[int]:
        i, pos = self.pick(self.pos), self.pos
        self.pos += 1
        if not self.mirrors[i]:
            return [i]
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "mirror", pos))
        return [i, self.mirrors[i][int(torch.randint(len(self.mirrors[i]), (1,), generator=gen))]]

    def _fill(self) -> list[int]:
        out: list[int] = []
        while len(out) < self.per_iteration:
            room = self.per_iteration - len(out)
            ready = next((u for u in self.waiting if len(u) <= room), None)
            if ready is not None:
                self.waiting.remove(ready)
            else:
                ready = self._unit()
                if len(ready) > room:
                    self.waiting.append(ready)
                    continue
            out += ready
        return out

    def __call__(self, iteration: int) -> list[int]:
        if iteration == self.next_iteration - 1:  # asked again (a lost group is resampled)
            return list(self.last)
        if iteration < self.next_iteration:
            self._restart()
        while self.next_iteration <= iteration:
            self.last = self._fill()
            self.next_iteration += 1
        return list(self.last)


class PromptOrder:
    """A run's prompt order, chosen once from the config's data section: `indices(iteration)` are the
    training records (indices into `records`) an iteration samples, one per group, whichever of epochs,
    tag_balanced or mirrored the config asks for."""

    def __init__(self, data: DataSection, records: Sequence[dict], per_iteration: int, seed: int):
        self.num_prompts, self.per_iteration, self.seed = len(records), per_iteration, seed
        self.weights = data.tag_weights
        self.tags = (prompt_tags(records, data.train_prompts, data.tag_weights)
                     if data.prompt_order == "tag_balanced" else None)
        self.mirrored = None
        if data.mirror_position_prompts or data.mirror_binding_prompts:
            self.mirrored = MirroredPromptOrder(self.tags, prompt_mirrors(records, data), per_iteration, seed,
                                                data.tag_weights)

    @property
    def kind(self) -> str:
        """'epochs', 'tag_balanced' or 'mirrored'."""
        return "epochs" if self.tags is None else "mirrored" if self.mirrored is not None else "tag_balanced"

    def indices(self, iteration: int) -> list[int]:
        if self.tags is None:
            return prompts_for_iteration(self.num_prompts, self.per_iteration, self.seed, iteration)
        if self.mirrored is not None:
            return self.mirrored(iteration)
        return tag_balanced_prompts_for_iteration(self.tags, self.per_iteration, self.seed, iteration, self.weights)
