"""Union vocabulary, member↔union tables and the fingerprint-keyed cache.

Union order (deterministic, independent of member order): id 0 is the shared EOS, then the
other special tokens sorted by content string, then every distinct byte string sorted by
(length, bytes).

Re-spelling rule for union token bytes b in member i: the single id with exactly those bytes
(the tokenizer's own choice among duplicates: added token, then model piece, then `<0xNN>`);
else member i's own tokenizer output when it decodes to exactly b; else the shortest sequence of
member tokens spelling b (longest first piece on ties; byte-fallback / byte-level single bytes
make this always possible for byte-complete vocabularies). Special union tokens a member lacks
get length 0 (they carry no bytes); the union EOS maps to every member's EOS.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
import warnings
from collections import defaultdict
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from rlae_jax.align.alignment import Alignment, UnionVocab
from rlae_jax.align.token_bytes import MemberVocab, member_vocab
from rlae_jax.models import installed

CACHE_FORMAT = "rlae_jax.align/1"
DEFAULT_CACHE_DIR = installed.cache_dir() / "alignments"
EOS_UNION_ID = 0


def build_alignment(
    tokenizers: Sequence,
    vocab_sizes: Sequence[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    max_expansion: int | None = None,
    strict: bool = False,
) -> Alignment:
    """Align N transformers tokenizers (fast / `tokenizers`-backed) into one union vocabulary.

    vocab_sizes[i]: member i's model embedding rows (default: its tokenizer size); extra rows
    are invalid ids (zero probability, never chosen); fewer rows than the tokenizer's highest
    id + 1 is a ValueError. max_expansion caps L (the [N, U, L] table costs N·U·L·4 bytes;
    e.g. GPT-2 needs 128 tokens for Llama 3's 128-space token): union tokens needing more are
    left out of ``union_complete``. A union token some member cannot spell at all (e.g. byte
    0xC0 — never valid UTF-8 — in NeoX, whose byte alphabet lacks it) is a ValueError when
    ``strict``, else left out of ``union_complete`` with a warning. Loads from / saves to
    ``cache_dir`` (default $RLAE_CACHE/alignments, else ~/.cache/rlae_jax/alignments) under a key
    hashing every member's token bytes, specials, EOS and vocab size (and max_expansion).
    """
    vocabs = [member_vocab(tokenizer) for tokenizer in tokenizers]
    sizes = _checked_sizes(vocabs, vocab_sizes)
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{max_expansion}".encode())
    for vocab, size in zip(vocabs, sizes):
        digest.update(vocab.fingerprint(size))
    fingerprint = digest.hexdigest()
    path = pathlib.Path(cache_dir or DEFAULT_CACHE_DIR) / f"{fingerprint}.npz"
    alignment = _cached(path) if use_cache else None
    if alignment is None:
        backends = [tokenizer.backend_tokenizer for tokenizer in tokenizers]
        alignment = _build(vocabs, backends, sizes, fingerprint, max_expansion)
        if use_cache:
            save_alignment(path, alignment)
    unspellable = {m: alignment.unspellable(m) for m in range(alignment.num_members)}
    unspellable = {m: tokens for m, tokens in unspellable.items() if tokens}
    if unspellable:
        summary = "; ".join(
            f"member {m}: {len(t)} tokens, e.g. {t[:4]}" for m, t in unspellable.items()
        )
        if strict:
            raise ValueError(
                f"members cannot spell these union tokens within max_expansion: {summary}"
            )
        warnings.warn(
            "union tokens left out of union_complete (a member cannot spell them within "
            f"max_expansion): {summary}"
        )
    return alignment


def _cached(path: pathlib.Path) -> Alignment | None:
    """The alignment cached at `path`; None when absent, or unreadable (reported: it is rebuilt)."""
    if not path.exists():
        return None
    try:
        return load_alignment(path)
    except Exception as error:  # truncated zip, bad JSON, an old format: rebuild, never trust it
        warnings.warn(
            f"cached alignment {path} does not load ({type(error).__name__}: {error}); "
            "building it again"
        )
        return None


def _checked_sizes(vocabs: Sequence[MemberVocab], vocab_sizes: Sequence[int] | None) -> list[int]:
    if not vocabs:
        raise ValueError("build_alignment needs at least one tokenizer")
    if vocab_sizes is None:
        return [vocab.size for vocab in vocabs]
    if len(vocab_sizes) != len(vocabs):
        raise ValueError(f"{len(vocab_sizes)} vocab_sizes for {len(vocabs)} tokenizers")
    for member, (vocab, size) in enumerate(zip(vocabs, vocab_sizes)):
        if size < vocab.size:
            raise ValueError(
                f"member {member}: model vocab size {size} is smaller than its tokenizer's "
                f"{vocab.size} token ids; the model cannot score every token"
            )
    return [int(size) for size in vocab_sizes]


def _build(
    vocabs: Sequence[MemberVocab],
    backends: Sequence[Tokenizer],
    sizes: Sequence[int],
    fingerprint: str,
    expansion_cap: int | None,
) -> Alignment:
    special_names = sorted(
        {name for v in vocabs for i, name in v.specials.items() if i != v.eos_id}
    )
    regular = sorted(
        {b for v in vocabs for b in v.token_bytes if b is not None}, key=lambda b: (len(b), b)
    )
    special_index = {name: 1 + j for j, name in enumerate(special_names)}
    first_regular = 1 + len(special_names)
    regular_index = {b: first_regular + j for j, b in enumerate(regular)}
    num_union = first_regular + len(regular)
    member_to_union = np.stack(
        [
            _member_to_union(vocab, special_index, regular_index, num_union, max(sizes))
            for vocab in vocabs
        ]
    )
    groups = [_ids_by_union(vocab, member_to_union[n], num_union) for n, vocab in enumerate(vocabs)]
    spellings = [
        _spellings(vocab, backend, group, regular, first_regular)
        for vocab, backend, group in zip(vocabs, backends, groups)
    ]
    union_to_member, union_to_member_len, union_complete = _spelling_tables(
        spellings, num_union, expansion_cap
    )
    names = {
        EOS_UNION_ID: vocabs[0].specials[vocabs[0].eos_id],
        **{i: name for name, i in special_index.items()},
    }
    host = UnionVocab(
        fingerprint,
        [b""] * first_regular + regular,
        names,
        member_to_union,
        union_to_member,
        union_to_member_len,
    )
    union_member_ids = _union_member_ids(groups, num_union, max(sizes))
    return _to_alignment(host, union_member_ids, union_complete, sizes, union_to_member.shape[-1])


def _member_to_union(
    vocab: MemberVocab,
    special_index: dict[str, int],
    regular_index: dict[bytes, int],
    num_union: int,
    vocab_max: int,
) -> np.ndarray:
    """int32 `[vocab_max]`: each member id's union id (`num_union` for ids with no union token)."""
    table = np.full(vocab_max, num_union, np.int32)
    table[: vocab.size] = [
        regular_index[b]
        if b is not None
        else EOS_UNION_ID
        if i == vocab.eos_id
        else special_index[vocab.specials[i]]
        if i in vocab.specials
        else num_union
        for i, b in enumerate(vocab.token_bytes)
    ]
    return table


def _spelling_tables(
    spellings: Sequence[list[list[int] | None]], num_union: int, expansion_cap: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`union_to_member [N, U, L]`, its lengths `[N, U]` and `union_complete [U]` from every
    member's spellings (`_spellings`); L = the longest spelling, at most `expansion_cap`. A union
    token some member cannot spell within L is incomplete."""
    needed = max(len(ids or ()) for rows in spellings for ids in rows)
    max_expansion = min(needed, expansion_cap or needed)
    union_to_member = np.zeros((len(spellings), num_union, max_expansion), np.int32)
    union_to_member_len = np.zeros((len(spellings), num_union), np.int32)
    union_complete = np.ones(num_union, bool)
    for n, rows in enumerate(spellings):
        for u, ids in enumerate(rows):
            if ids is None or len(ids) > max_expansion:
                union_complete[u] = False
                continue
            union_to_member[n, u, : len(ids)] = ids
            union_to_member_len[n, u] = len(ids)
    return union_to_member, union_to_member_len, union_complete


def _union_member_ids(
    groups: Sequence[dict[int, list[int]]], num_union: int, vocab_max: int
) -> np.ndarray:
    """int32 `[N, U, W]`: every member id with each union token's bytes (`_ids_by_union`),
    padded with `vocab_max`; W = the most duplicates of any token."""
    width = max(len(ids) for group in groups for ids in group.values())
    union_member_ids = np.full((len(groups), num_union, width), vocab_max, np.int32)
    for n, group in enumerate(groups):
        for u, ids in group.items():
            union_member_ids[n, u, : len(ids)] = ids
    return union_member_ids


def _to_alignment(
    host: UnionVocab,
    union_member_ids: np.ndarray,
    union_complete: np.ndarray,
    sizes: Sequence[int],
    max_expansion: int,
) -> Alignment:
    num_union = len(host.union_bytes)
    spellers = [
        (union_member_ids[n] < size).sum(-1) for n, size in enumerate(sizes)
    ]  # [U] per member
    widths = [max(int(count.max()), 1) for count in spellers]
    alone = union_complete & (sum(spellers) == 1)
    shared_union_ids = np.flatnonzero(union_complete & ~alone).astype(np.int32)
    member_union = np.minimum(host.member_to_union, num_union - 1)
    valid = host.member_to_union < num_union
    exclusive = valid & alone[member_union]
    return Alignment(
        member_to_union=jnp.asarray(host.member_to_union),
        member_valid=jnp.asarray(valid),
        union_to_member=jnp.asarray(host.union_to_member),
        union_to_member_len=jnp.asarray(host.union_to_member_len),
        union_member_ids=jnp.asarray(union_member_ids),
        union_complete=jnp.asarray(union_complete),
        exclusive=jnp.asarray(exclusive),
        shared_union_ids=jnp.asarray(shared_union_ids),
        shared_member_ids=jnp.asarray(union_member_ids[:, shared_union_ids]),
        incomplete_member_ids=jnp.asarray(union_member_ids[:, ~union_complete]),
        eos_union_id=EOS_UNION_ID,
        num_union=num_union,
        max_expansion=max_expansion,
        vocab_sizes=tuple(int(s) for s in sizes),
        duplicate_widths=tuple(widths),
        all_ids_valid=tuple(bool(valid[n, :size].all()) for n, size in enumerate(sizes)),
        vocab=host,
    )


def _ids_by_union(
    vocab: MemberVocab, member_to_union: np.ndarray, num_union: int
) -> dict[int, list[int]]:
    """union id → member ids with its bytes (or its special), preferred spelling first."""
    group: dict[int, list[int]] = defaultdict(list)
    for i in sorted(range(vocab.size), key=lambda i: (vocab.preference(i), i)):
        if member_to_union[i] < num_union:
            group[int(member_to_union[i])].append(i)
    return group


def _spellings(
    vocab: MemberVocab,
    backend: Tokenizer,
    group: dict[int, list[int]],
    regular: Sequence[bytes],
    first_regular: int,
) -> list[list[int] | None]:
    """For every union id, the member ids that spell it (module docstring); None: cannot spell."""
    rows: list[list[int] | None] = [[] for _ in range(first_regular)] + [None] * len(regular)
    for u, ids in group.items():
        rows[u] = ids[:1]
    preferred = vocab.preferred_ids()
    pending = [u for u in range(first_regular, len(rows)) if rows[u] is None]
    texts, text_rows = [], []
    for u in pending:
        try:
            texts.append(regular[u - first_regular].decode("utf-8"))
            text_rows.append(u)
        except UnicodeDecodeError:
            pass
    encoder = Tokenizer.from_str(backend.to_str())
    encoder.no_padding()
    encoder.no_truncation()
    for u, encoding in zip(text_rows, encoder.encode_batch(texts, add_special_tokens=False)):
        target = regular[u - first_regular]
        ids = [
            preferred.get(vocab.token_bytes[i], i) if vocab.token_bytes[i] is not None else i
            for i in encoding.ids
        ]
        if all(vocab.token_bytes[i] is not None for i in ids) and vocab.decode(ids) == target:
            rows[u] = ids
    longest_piece = max(len(b) for b in preferred)
    for u in pending:
        if rows[u] is None:
            target = regular[u - first_regular]
            rows[u] = _shortest_spelling(target, preferred, longest_piece)
    return rows


def _shortest_spelling(
    target: bytes, preferred: dict[bytes, int], longest_piece: int
) -> list[int] | None:
    """Fewest member tokens whose bytes concatenate to ``target`` (longest first piece on ties)."""
    length = len(target)
    unreachable = length + 1
    cost = [0] * (length + 1)
    step = [0] * (length + 1)
    for start in range(length - 1, -1, -1):
        cost[start] = unreachable
        for size in range(min(longest_piece, length - start), 0, -1):
            if cost[start + size] + 1 < cost[start] and target[start : start + size] in preferred:
                cost[start], step[start] = cost[start + size] + 1, size
    if cost[0] >= unreachable:
        return None
    ids, start = [], 0
    while start < length:
        ids.append(preferred[target[start : start + step[start]]])
        start += step[start]
    return ids


def save_alignment(path: str | os.PathLike, alignment: Alignment) -> None:
    """Write an alignment to ``path`` (.npz): into a temporary sibling file, then one rename, so
    ``path`` exists only complete."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    host = alignment.vocab
    lengths = np.array([len(b) for b in host.union_bytes], np.int64)
    meta = {
        "format": CACHE_FORMAT,
        "fingerprint": host.fingerprint,
        "vocab_sizes": list(alignment.vocab_sizes),
        "max_expansion": alignment.max_expansion,
        "special_names": {str(u): name for u, name in host.special_names.items()},
    }
    handle, partial = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(
                file,
                meta=np.array(json.dumps(meta)),
                union_bytes=np.frombuffer(b"".join(host.union_bytes), np.uint8),
                union_bytes_offsets=np.concatenate([[0], np.cumsum(lengths)]),
                member_to_union=host.member_to_union,
                union_to_member=host.union_to_member,
                union_to_member_len=host.union_to_member_len,
                union_member_ids=np.asarray(alignment.union_member_ids),
                union_complete=np.asarray(alignment.union_complete),
            )
        os.replace(partial, path)
    finally:
        pathlib.Path(partial).unlink(missing_ok=True)


def load_alignment(path: str | os.PathLike) -> Alignment:
    """Read an alignment written by :func:`save_alignment`."""
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        if meta["format"] != CACHE_FORMAT:
            raise ValueError(
                f"{path}: alignment format {meta['format']!r}, expected {CACHE_FORMAT!r}"
            )
        blob, offsets = data["union_bytes"].tobytes(), data["union_bytes_offsets"]
        union_bytes = [blob[offsets[u] : offsets[u + 1]] for u in range(len(offsets) - 1)]
        host = UnionVocab(
            meta["fingerprint"],
            union_bytes,
            {int(u): name for u, name in meta["special_names"].items()},
            data["member_to_union"],
            data["union_to_member"],
            data["union_to_member_len"],
        )
        return _to_alignment(
            host,
            data["union_member_ids"],
            data["union_complete"],
            meta["vocab_sizes"],
            meta["max_expansion"],
        )
