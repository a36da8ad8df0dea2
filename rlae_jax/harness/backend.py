"""`lm-eval` model "rlae_jax": one member, a static ensemble (any strategy of
`rlae_jax.engine.generate`) or a trained RLAE agent, evaluated by EleutherAI's LM Evaluation
Harness.

    lm_eval --model rlae_jax --model_args members=A|B,strategy=fixed,weights=0.3|0.7,max_batch=8 ...
    python -m launch.lm_eval --model_args members=A|B,checkpoint=RUN_DIR --tasks ... --limit ...

Members are separated by `|` (the harness splits model_args on commas). `generate_until` runs the
batched compiled engine (a single member too, so its text is the engine's, byte for byte);
`loglikelihood` / `loglikelihood_rolling` are exact for one member (tokenised as HFLM does) and, for
an ensemble, the token-level mixture the engine generates with, teacher-forced over the continuation
spelled in union tokens (`ensemble_ll="token"`, `rlae_jax.harness.mixture`), so multiple-choice and
generation tasks measure the same model; `ensemble_ll="sequence"` mixes the members' string
probabilities instead (`rlae_jax.harness.scoring`).
Chat templates: `apply_chat_template` returns the messages in a marked JSON string that each member
renders in its own format (its tokenizer's template, or the plain format of base models) when a
request arrives, so every member sees its own format.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs, postprocess_generated_text

from rlae_jax.ensemble import Ensemble
from rlae_jax.harness.ensemble import SCORE, HarnessEnsemble, load_ensemble
from rlae_jax.harness.scoring import (
    encode,
    encode_pair,
    member_loglikelihoods,
    mixture_loglikelihood,
    prefix_token_id,
    rolling_windows,
)

CHAT_MARK = "<|rlae_jax.chat|>"
ENSEMBLE_LL = ("token", "sequence")
GENERATION_KEYS = {"until", "max_gen_toks", "do_sample", "temperature", "top_p"}
DEFAULT_MAX_GEN_TOKS = 256


def split_list(value) -> list | None:
    """'a|b' → ['a', 'b']; lists pass through; None stays None."""
    if value is None or isinstance(value, (list, tuple)):
        return value
    return [part for part in str(value).split("|") if part]


def generation_settings(gen_kwargs: dict) -> tuple[tuple[str, ...], int, float, float]:
    """A request's gen_kwargs → (stop strings, max_gen_toks, temperature (0: greedy), top_p),
    normalised as lm-eval does (`do_sample=False` means greedy whatever the temperature)."""
    unknown = (
        set(gen_kwargs)
        - GENERATION_KEYS
        - {"max_new_tokens", "max_tokens", "max_completion_tokens"}
    )
    if unknown:
        raise ValueError(
            f"unsupported generation arguments {sorted(unknown)}; rlae_jax takes "
            f"{sorted(GENERATION_KEYS)}"
        )
    kwargs = normalize_gen_kwargs(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
    temperature = float(kwargs.get("temperature", 0.0)) if kwargs["do_sample"] else 0.0
    return (
        tuple(kwargs["until"]),
        int(kwargs["max_gen_toks"]),
        temperature,
        float(kwargs.get("top_p", 1.0)),
    )


@register_model("rlae_jax")
class RlaeLM(LM):
    """The harness model. `members`: `|`-separated paths / preset names (or, from Python, Member
    objects or an `Ensemble`, whose prompt formats render chats); `strategy` (default uniform;
    "single" with `primary`; "fixed" with `weights`; "threshold", "topk", "packllm" with their
    knobs) or `checkpoint` (an RLAE run folder, trained on these members); `max_batch`: rows per
    compiled batch (default: the harness's `--batch_size` when over 1, else 8); `max_length`: cap
    on each member's context window for log-likelihoods; `ensemble_ll`: how an ensemble scores a
    continuation, "token" (the engine's token-level mixture, default) or "sequence" (a mixture of
    the members' string probabilities, which scores long texts in rolling windows); `dtype`;
    `seed` for sampling."""

    def __init__(
        self,
        members=None,
        strategy: str | None = None,
        weights=None,
        checkpoint: str | None = None,
        threshold: float = 0.5,
        primary: int = 0,
        top_k: int = 4,
        packllm_temperature: float = 1.0,
        span_length: int = 1,
        expansion_budget: int = 2,
        max_batch: int | None = None,
        max_length: int | None = None,
        ensemble_ll: str = "token",
        dtype: str = "float32",
        seed: int = 1234,
        batch_size: Any = None,
        **harness_options,
    ):
        super().__init__()
        unknown = set(harness_options) - {"max_batch_size", "device"}
        if unknown:
            raise ValueError(f"unknown rlae_jax model_args {sorted(unknown)}")
        if max_batch is None:
            max_batch = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 1 else 8
        if ensemble_ll not in ENSEMBLE_LL:
            raise ValueError(f"ensemble_ll={ensemble_ll!r}: give one of {', '.join(ENSEMBLE_LL)}")
        self.ensemble_ll = ensemble_ll
        weights = split_list(weights)
        if not isinstance(members, Ensemble):
            members = load_ensemble(split_list(members), dtype)
        self.harness = HarnessEnsemble.build(
            members,
            strategy,
            None if weights is None else [float(w) for w in weights],
            checkpoint,
            int(max_batch),
            int(span_length),
            int(expansion_budget),
            int(seed),
            threshold=float(threshold),
            primary=int(primary),
            top_k=int(top_k),
            packllm_temperature=float(packllm_temperature),
        )
        self.max_lengths = [
            min(m.config.max_position_embeddings, int(max_length or 1 << 62)) for m in self.members
        ]

    @property
    def ensemble(self) -> Ensemble:
        return self.harness.ensemble

    @property
    def members(self):
        return self.ensemble.members

    @property
    def compile_count(self) -> int:
        return self.harness.compile_count

    # ---- chat templates ------------------------------------------------------------------------

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The messages, marked, for each member to render in its own format (`render`)."""
        return CHAT_MARK + json.dumps(
            {"messages": chat_history, "add_generation_prompt": add_generation_prompt}
        )

    def render(self, index: int, text: str) -> str:
        """Member `index`'s text for a request context: a marked chat in that member's own format
        (`Member.chat_prompt`: its chat template, else the plain "question\nAnswer:" format of base
        models); a chat ending in an assistant turn to continue (`add_generation_prompt=False`) goes
        through the template as HFLM calls it; any other text as is. Its format is the Ensemble's
        (`Ensemble.formats`)."""
        if not text.startswith(CHAT_MARK):
            return text
        chat = json.loads(text[len(CHAT_MARK) :])
        member = self.members[index]
        if chat["add_generation_prompt"]:
            return member.chat_prompt(chat["messages"], self.ensemble.formats[index])
        if not getattr(member.tokenizer, "chat_template", None):
            raise ValueError(
                f"member {member.name!r} has no chat template to continue an assistant turn with"
            )
        return member.tokenizer.apply_chat_template(
            chat["messages"],
            tokenize=False,
            add_generation_prompt=False,
            continue_final_message=True,
        )

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        if not chat_template:
            return None
        return "\n".join(getattr(m.tokenizer, "chat_template", None) or "" for m in self.members)

    @property
    def tokenizer_name(self) -> str:
        return "|".join(m.name for m in self.members).replace("/", "__")

    # ---- generation ----------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Requests grouped by generation settings, sorted by prompt length and run `max_batch` at a
        time through the compiled engine; each text is cut at its first stop string (as HFLM does).
        Sampling draws batch k of a call with key (seed, k): the same requests give the same
        texts."""
        batch_index = 0
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(generation_settings(request.args[1]), []).append(index)
        results: list[str] = [""] * len(requests)
        for (until, max_gen_toks, temperature, top_p), indices in groups.items():
            token_lists = [
                [encode(m.tokenizer, self.render(n, requests[i].args[0])) for i in indices]
                for n, m in enumerate(self.members)
            ]
            order = sorted(
                range(len(indices)), key=lambda r: [len(lists[r]) for lists in token_lists]
            )
            for start in range(0, len(order), self.harness.max_batch):
                chunk = order[start : start + self.harness.max_batch]
                texts = self.harness.generate(
                    [[lists[r] for r in chunk] for lists in token_lists],
                    max_gen_toks,
                    temperature,
                    top_p,
                    batch_index,
                )
                batch_index += 1
                for r, text in zip(chunk, texts):
                    index = indices[r]
                    results[index] = postprocess_generated_text(text, list(until), None)
                    self.cache_hook.add_partial(
                        "generate_until", requests[index].args, results[index]
                    )
        return results

    # ---- log-likelihoods -----------------------------------------------------------------------

    @property
    def mixes_tokens(self) -> bool:
        """Whether log-likelihoods come from the token-level mixture (an ensemble, "token")."""
        return len(self.members) > 1 and self.ensemble_ll == "token"

    def member_scores(
        self, pairs_per_member: Sequence[Sequence[tuple[list[int], list[int]]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each member's log-probs and greedy flags `[R, N]` of its own (context, continuation)
        ids."""
        scored = [
            member_loglikelihoods(m, pairs, self.max_lengths[n], self.harness.max_batch, SCORE)
            for n, (m, pairs) in enumerate(zip(self.members, pairs_per_member))
        ]
        return np.stack([s[0] for s in scored], 1), np.stack([s[1] for s in scored], 1)

    def scores(
        self, pairs: Sequence[Sequence[tuple[list[int], list[int]]]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(log p, is_greedy) `[R]` of R requests, `pairs[n][r]` member n's (context ids,
        continuation ids): the token-level mixture (`mixes_tokens`), else a member's exact values
        or their sequence-level mixture with the weights the strategy gives each context's first
        span (`scoring.mixture_loglikelihood`)."""
        if self.mixes_tokens:
            return self.harness.token_loglikelihoods(pairs, self.max_lengths)
        log_probs, greedy = self.member_scores(pairs)
        weights = self.harness.first_span_weights([[context for context, _ in p] for p in pairs])
        return mixture_loglikelihood(log_probs, greedy, weights)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is_greedy) per request (`scores`)."""
        pairs = [
            [encode_pair(m.tokenizer, self.render(n, r.args[0]), r.args[1]) for r in requests]
            for n, m in enumerate(self.members)
        ]
        results = [(float(lp), bool(g)) for lp, g in zip(*self.scores(pairs))]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log p(text) per request. The token-level mixture scores each text after an empty context
        (each member's prefix token) in one pass, so a text must fit every member's `max_length`;
        otherwise each member scores every token once in rolling windows of its `max_length`
        (HFLM's windows) and an ensemble mixes the members' totals with the weights its strategy
        gives an empty context."""
        if self.mixes_tokens:
            pairs = [
                [encode_pair(m.tokenizer, "", r.args[0]) for r in requests] for m in self.members
            ]
            results = [float(lp) for lp in self.scores(pairs)[0]]
        else:
            results = self.rolling_windows_loglikelihood([r.args[0] for r in requests])
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
        return results

    def rolling_windows_loglikelihood(self, texts: Sequence[str]) -> list[float]:
        """log p(text) per text from every member's rolling windows, mixed at the sequence level."""
        totals = np.zeros((len(texts), len(self.members)))
        for n, member in enumerate(self.members):
            windows = [rolling_windows(member.tokenizer, t, self.max_lengths[n]) for t in texts]
            owners = np.repeat(np.arange(len(texts)), [len(w) for w in windows])
            log_probs, _ = member_loglikelihoods(
                member,
                [w for ws in windows for w in ws],
                self.max_lengths[n],
                self.harness.max_batch,
                SCORE,
            )
            np.add.at(totals[:, n], owners, log_probs)
        weights = self.harness.first_span_weights(
            [[[prefix_token_id(m.tokenizer)]] for m in self.members]
        )
        mixed, _ = mixture_loglikelihood(
            totals, np.ones_like(totals, bool), np.broadcast_to(weights, totals.shape)
        )
        return [float(lp) for lp in mixed]
