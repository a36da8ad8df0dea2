"""The complementarity probe on the real pair: `python -m launch.probe --config=configs/probe.py`
(add `--config.quick=True` for the two-family smoke run the slow test executes).

SmolLM2-135M-Instruct (its chat template) and Gemma-3-270M (base: the plain "question\\nAnswer:"
format) answer validation problems alone and with uniform weights. Answer formats: "sentence"
('Finish with "The answer is X."', the study's) and "bare" (the answer alone, scored on its first
line). Three stages (rlae_jax/experiments/probe.py): every family in the screen settings; the most
promising families in the sweep settings (other shot counts and the other format, same problems);
the best setting's promising families on fresh validation problems, from which the selection rule
picks the study's training mixture. Sized for 2 shared CPU cores: short answers, few problems.
"""

import ml_collections

FAMILIES = (  # configs small enough for 100M-class members, answers of a few tokens
    "rg/basic_arithmetic:easy",
    "rg/chain_sum:easy",
    "rg/products:easy",
    "rg/gcd:easy",
    "rg/leg_counting:easy",
    "rg/letter_counting:easy",
    "rg/spell_backward:easy",
    "rg/syllogism",
    "rg/family_relationships",
    "rg/aiw",
    'rg/number_sequence:{"max_complexity": 1, "max_terms": 5, "max_value": 20, "min_value": 0}',
    'rg/lcm:{"max_value": 40, "train_size": 300}',  # small problem spaces: fewer training problems
    'rg/count_bits:{"max_n": 4095, "train_size": 1000}',
    'rg/simple_equations:{"max_terms": 2, "max_value": 20, "operators": ["+", "-"], '
    '"operators_weights": [0.5, 0.5]}',
    "rg/calendar_arithmetic",
    'rg/color_cube_rotation:{"max_rotations": 1}',
    'rg/prime_factorization:{"max_value": 500, "train_size": 300}',
    'rg/base_conversion:{"max_base": 10, "max_value": 64}',
    'rg/ransom_note:{"max_magazine_length": 10, "max_note_length": 4}',
    'rg/word_sequence_reversal:{"max_words": 4}',
    'rg/fraction_simplification:{"max_factor": 9, "max_value": 30, "styles": ["plain"]}',
    'rg/decimal_chain_sum:{"max_decimal_places": 1, "max_digits": 2, "max_terms": 2}',
    # the widened search: one-digit operands, one animal, three-letter words (the members are at
    # the constant-answer baseline on most configs above)
    'rg/basic_arithmetic:{"allow_negation": false, "allow_parentheses": false, "max_digits": 1, '
    '"max_terms": 2, "min_digits": 1, "min_terms": 2, "operators": ["+"], "train_size": 40}',
    'rg/products:{"max_digits": 1, "max_terms": 2, "min_digits": 1, "min_terms": 2, '
    '"train_size": 40}',
    'rg/chain_sum:{"max_digits": 1, "max_terms": 2, "min_digits": 1, "min_terms": 2, '
    '"train_size": 40}',
    'rg/leg_counting:{"max_animals": 1, "max_instances": 2, "min_animals": 1, "train_size": 20}',
    'rg/spell_backward:{"max_word_len": 3, "min_word_len": 3, "train_size": 200}',
)


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.quick = False  # the smoke settings of finalize
    config.output_dir = "outputs/probe"
    config.members = ("smollm2-135m-instruct", "gemma-3-270m")
    config.families = FAMILIES
    # (answer format, worked examples): the screen runs every family, the sweep the promising ones
    config.screen_settings = (("bare", 1),)
    config.sweep_settings = (("sentence", 1), ("bare", 3), ("bare", 0))
    config.sweep_families = 4
    # training problems per family where its spec does not say (the study draws episodes there)
    config.train_size = 2000
    config.screen_problems = 16  # validation problems per cell in the screen and the sweep
    config.confirm_problems = 32  # fresh validation problems per family for the best setting
    config.confirm_families = 4
    config.batch_size = 16
    config.max_new_tokens = 12
    config.span_length = 4
    # fixed weights tried beside uniform in the confirmation (each costs a decode of every answer)
    config.fixed_grid = ()
    # the selection rule: a member leads a family when it beats the other member and the
    # constant-answer baseline by `margin`; the mixture's oracle − best fixed weights ≥ min_gap
    config.margin = 0.05
    config.min_gap = 0.08
    config.max_mixture = 4  # families in a mixture at most
    return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The quick run: two families, one screen and one sweep setting, a few problems per stage."""
    if config.quick:
        config.families = ("rg/products:easy", "rg/syllogism")
        config.sweep_settings = (("bare", 0),)  # zero shots: the path with no training split
        config.train_size = 200
        config.screen_problems = 8
        config.confirm_problems = 8
        config.batch_size = 8
        config.output_dir = config.output_dir + "-quick"
    return config
