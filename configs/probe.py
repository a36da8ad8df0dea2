"""The complementarity probe on the real pair: `python -m launch.probe --config=configs/probe.py`
(add `--config.quick=True` for the two-family smoke run the slow test executes).

SmolLM2-135M-Instruct (its chat template) and Gemma-3-270M (base: the plain "question\\nAnswer:"
format) answer validation problems of every family below, alone and with uniform weights, in two
answer formats ("sentence": 'Finish with "The answer is X."'; "bare": the answer alone, scored on
its first line) after 0, 1 or 3 worked examples; then the best setting's promising families get
fresh validation problems and the selection rule picks the study's training mixture
(rlae_jax/experiments/probe.py). Sized for 2 CPU cores: short answers, few problems per cell.
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
    'rg/isomorphic_strings:{"max_string_length": 5}',
    'rg/word_sequence_reversal:{"max_words": 4}',
    'rg/fraction_simplification:{"max_factor": 9, "max_value": 30, "styles": ["plain"]}',
    "rg/circuit_logic",
    'rg/course_schedule:{"max_num_courses": 5}',
    'rg/decimal_chain_sum:{"max_decimal_places": 1, "max_digits": 2, "max_terms": 2}',
)


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.quick = False  # the smoke settings of finalize
    config.output_dir = "outputs/probe"
    config.members = ("smollm2-135m-instruct", "gemma-3-270m")
    config.families = FAMILIES
    config.formats = ("sentence", "bare")
    config.shots = (0, 1, 3)
    # training problems per family where its spec does not say (the study draws episodes there)
    config.train_size = 2000
    config.screen_problems = 24  # validation problems per cell in the wide screen
    config.confirm_problems = 96  # fresh validation problems per family for the best setting
    config.confirm_families = 8
    config.batch_size = 24
    config.max_new_tokens = 12
    config.span_length = 4
    config.fixed_grid = (0.25, 0.75)  # fixed weights tried beside uniform in the confirmation
    # the selection rule: a member leads a family when it beats the other member and the
    # constant-answer baseline by `margin`; the mixture's oracle − best fixed weights ≥ min_gap
    config.margin = 0.05
    config.min_gap = 0.08
    config.max_mixture = 4  # families in a mixture at most
    return config


def finalize(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The quick run: two families, one setting, a few problems per stage."""
    if config.quick:
        config.families = ("rg/products:easy", "rg/syllogism")
        config.formats = ("bare",)
        config.shots = (1,)
        config.train_size = 200
        config.screen_problems = 8
        config.confirm_problems = 8
        config.batch_size = 8
        config.output_dir = config.output_dir + "-quick"
    return config
