"""KV room: how many cache slots each member gets past the prompt, at the start of a decode and at
each growth, and the checks on the members that these static shapes rely on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from rlae_jax.engine.state import DecodeConfig, PromptBatch

if TYPE_CHECKING:  # rlae_jax.ensemble imports the engine
    from rlae_jax.ensemble import Ensemble


def check_members(ensemble: Ensemble) -> None:
    """Raise when the ensemble's alignment was not built for its members' vocabularies."""
    members, alignment = ensemble.members, ensemble.alignment
    if len(members) != alignment.num_members:
        raise ValueError(
            f"alignment has {alignment.num_members} members but {len(members)} members were given"
        )
    for index, member in enumerate(members):
        if member.config.vocab_size != alignment.vocab_sizes[index]:
            raise ValueError(
                f"member {index} ({member.name}) has a {member.config.vocab_size}-row embedding "
                f"but the alignment was built for {alignment.vocab_sizes[index]}: rebuild it "
                "with vocab_sizes from the members"
            )


def room_ladder(
    ensemble: Ensemble,
    prompts: PromptBatch,
    config: DecodeConfig,
    room_per_token: int | None = None,
) -> list[tuple[int, ...]]:
    """Cache lengths per member for each growth of a decode, smallest first: the prompt's slots plus
    `expansion_budget` slots per union token, doubled at each rung up to what the member can ever
    need (its longest re-spelling per union token, or its context window), or to `room_per_token`
    slots per union token when given (the in-graph `decode`)."""
    check_members(ensemble)  # static shapes: checked while tracing, free at run time
    spelling_lengths = ensemble.alignment.vocab.union_to_member_len.max(axis=1)
    firsts, caps = [], []
    for index, member in enumerate(ensemble.members):
        per_token = max(int(spelling_lengths[index]), 1)
        if room_per_token is not None:
            per_token = min(per_token, room_per_token)
        cap = min(config.max_new_tokens * per_token, member.config.max_position_embeddings)
        firsts.append(min(config.max_new_tokens * config.expansion_budget, cap))
        caps.append(cap)
    rungs = [tuple(firsts)]
    while rungs[-1] != tuple(caps):
        rungs.append(tuple(min(2 * room, cap) for room, cap in zip(rungs[-1], caps)))
    return [tuple(prompts.prompt_slots(n) + r for n, r in enumerate(rung)) for rung in rungs]


def compiled_rungs(ladder: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The cache lengths `decode` compiles a loop for: the ladder's first and last rung, or only the
    last where the first saves no member 64 slots and a third of its attention (each loop costs
    compile time)."""
    first, last = ladder[0], ladder[-1]
    if all(full - start < max(64, full / 3) for start, full in zip(first, last)):
        return [last]
    return [first, last]
